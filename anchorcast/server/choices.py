"""What an operator may pick from (the console's menus): profiles, voices, avatars, and a session's scenes.

``GET /v1/choices`` lists the profiles a new session may use, the voices a ``say`` may name (each installed voice
plugin, and common eSpeak NG languages), and the avatars a new session may show: the bundled portrait and the
images in the server's profile folder (the only folder besides the outputs a session may read). A session's cue
buttons come from its profile: the ``obs`` outputs' scenes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

if TYPE_CHECKING:
    from anchorcast.profile import Profile
    from anchorcast.server.studio import Studio

ESPEAK_LANGUAGES = {
    "en-gb": "English (UK)", "en-us": "English (US)", "cmn": "Mandarin Chinese", "yue": "Cantonese",
    "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian",
}  # fmt: skip
AVATAR_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def profile_scenes(profile: Profile) -> list[str]:
    """The OBS scenes a profile names (its ``obs`` outputs' scene and speech switches), in order, once each."""
    scenes: list[str] = []
    for stage in profile.outputs.values():
        if stage.use != "obs":
            continue
        named = [stage.settings.get("scene"), *(stage.settings.get("switch_on_speech") or {}).values()]
        scenes += [name for name in named if isinstance(name, str) and name and name not in scenes]
    return scenes


def add_choice_routes(app: FastAPI, studio: Studio, authorized: list[Any], default_profile: str) -> None:
    @app.get("/v1/choices", dependencies=authorized, tags=["server"])
    async def choices() -> dict[str, Any]:
        """Profiles, voices and avatars to choose from (what the console's menus show)."""
        host_voices = studio.voice_names()
        voices = [{"spec": "", "label": "the profile's own voice"}]
        voices += [{"spec": name, "label": name} for name in host_voices]
        if "espeak" in host_voices:
            voices += [{"spec": f"espeak:{code}", "label": f"espeak: {language}"}
                       for code, language in ESPEAK_LANGUAGES.items()]
        avatars: list[dict[str, Any]] = [{"name": "the profile's own (default: the bundled portrait)", "set": {}}]
        folder = studio.profiles_dir
        if folder is not None and folder.is_dir():
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in AVATAR_SUFFIXES
                            and not p.stem.endswith("-matte"))
            avatars += [{"name": image.name, "set": {"engine.avatar": str(image)}} for image in images]
        return {"profiles": studio.profile_names(), "default_profile": default_profile, "voices": voices,
                "avatars": avatars}
