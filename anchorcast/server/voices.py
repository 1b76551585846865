"""A session's voices: the profile's own, and any other a ``say`` names (``"espeak"``, ``"espeak:cmn"``).

Another voice is checked when the request comes (an unknown name is the client's mistake) and built and opened
the first time it speaks, on the scheduler's feeder thread; all are closed with the session.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchorcast.errors import AnchorcastError
from anchorcast.media import Speech, StreamFormat, TextSegment, VoiceFailed
from anchorcast.profile import Stage, _Problems, validate_table

if TYPE_CHECKING:
    from anchorcast.host import Host

log = logging.getLogger(__name__)


def voice_stage(host: Host, spec: str) -> Stage:
    """The stage a voice spec names: ``NAME`` or ``NAME:VOICE`` (the component's ``voice`` setting)."""
    name, _, variant = spec.partition(":")
    component = host.plugins.component("voice", name)
    if component is None:
        known = host.plugins.names("voice")
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise AnchorcastError(f"voice: unknown voice {name!r}{hint}; available: {', '.join(known)}")
    table: dict[str, Any] = {}
    if variant:
        if "voice" not in component.settings:
            raise AnchorcastError(f"voice: {name!r} has no voice setting, so {spec!r} names nothing")
        table["voice"] = variant
    problems = _Problems("voice")
    settings = validate_table(table, dict(component.settings), "voice", problems, Path.cwd())
    problems.raise_if_any()
    return Stage("voice", "voice", name, settings)


class VoiceRouter:
    """A :class:`~anchorcast.components.Voice` that reads each segment with the voice its utterance asked for."""

    def __init__(self, host: Host, default: Stage, voice_for: Callable[[TextSegment], str | None]) -> None:
        self._host = host
        self._default_stage = default
        self._voice_for = voice_for
        self._voices: dict[str, Any] = {}
        self._fmt: StreamFormat | None = None

    @property
    def component_name(self) -> str:
        """Events name the router by the session's own voice."""
        return self._default_stage.use

    def open(self, fmt: StreamFormat) -> None:
        self._fmt = fmt
        self._voices[""] = self._opened(self._default_stage)

    def synthesize(self, segment: TextSegment) -> Iterator[Speech]:
        spec = self._voice_for(segment) or ""
        voice = self._voices.get(spec)
        if voice is None:
            try:
                voice = self._voices[spec] = self._opened(voice_stage(self._host, spec))
            except AnchorcastError as error:  # a voice this utterance asked for will not open: the session's reads
                if not spec:
                    raise
                log.error("voice %s did not open (%s); the session's voice reads this utterance", spec, error)
                self._host.post_event(VoiceFailed(self._host.next_pts, spec, self._default_stage.use, str(error)))
                voice = self._voices[""]
        return voice.synthesize(segment)

    def close(self) -> None:
        voices, self._voices = list(self._voices.values()), {}
        for voice in voices:
            voice.close()

    def _opened(self, stage: Stage) -> Any:
        voice = self._host.build(stage)
        assert self._fmt is not None
        voice.open(self._fmt)
        return voice
