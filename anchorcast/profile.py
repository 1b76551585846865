"""Profiles: TOML files naming a component per stage with its settings, validated as a whole before any heavy
import.

```toml
[stream]        # width, height, fps, sample_rate
[scheduler]     # latency_budget_ms, overrun, fallback, pace, ...
[plugins]       # allow, block, strict
[source]        # use = "script", then the source's own settings
[voice]         # use = "piper", fallback = "espeak", ...  (optional: not needed for audio sources)
[engine]        # use = "viseme", ...
[outputs.NAME]  # one table per output; use = "file" (defaults to NAME), ...
```

Every problem found is reported at once, each naming the file, the key and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchorcast.components import ComponentKind, Setting, resolve_path
from anchorcast.errors import ProfileError
from anchorcast.media import StreamFormat
from anchorcast.pacing import SchedulerConfig

if TYPE_CHECKING:
    from anchorcast.plugin_manager import PluginManager

STREAM_SCHEMA: dict[str, Setting] = {
    "width": Setting(int, 1280, "frame width in pixels (even)", minimum=16, maximum=7680),
    "height": Setting(int, 720, "frame height in pixels (even)", minimum=16, maximum=4320),
    "fps": Setting(float, 25, "frames per second (29.97 means 30000/1001)", minimum=1, maximum=120),
    "sample_rate": Setting(int, 16000, "audio sample rate of the timeline and outputs", minimum=8000, maximum=96000),
}

SCHEDULER_SCHEMA: dict[str, Setting] = {
    "latency_budget_ms": Setting(float, 400.0, "audio in to frame out, live", minimum=0),
    "overrun": Setting(str, "repeat", "what replaces a late frame", choices=("repeat", "idle", "fallback")),
    "fallback": Setting(str, "", "engine that draws late frames when overrun = \"fallback\", and takes over for "
                        "the rest of the run if the engine fails (e.g. \"viseme\")"),
    "pace": Setting(
        str, "auto", "realtime: paced on the wall clock; fast: as fast as possible; auto: realtime when an "
        "output is live", choices=("auto", "realtime", "fast"),
    ),
    "blend_ms": Setting(float, 120.0, "blend into and out of speech", minimum=0),
    "max_batch": Setting(int, 0, "cap on engine batches (0: the engine's own)", minimum=0),
    "lead_in_ms": Setting(float, 400.0, "silence before the first words", minimum=0),
    "tail_ms": Setting(float, 400.0, "silence after the last words", minimum=0),
    "pause_ms": Setting(float, 250.0, "silence between sentences", minimum=0),
    "render_ahead_s": Setting(float, 2.0, "how far ahead of air time frames may be rendered", minimum=0.1),
    "audio_ahead_s": Setting(float, 120.0, "how far ahead of air time the voice may read", minimum=1),
}

PLUGINS_SCHEMA: dict[str, Setting] = {
    "allow": Setting(list, [], "third-party plugins allowed to load (empty: all)"),
    "block": Setting(list, [], "plugins never loaded"),
    "strict": Setting(bool, False, "a plugin that fails to load is an error"),
}

_STAGES: dict[str, ComponentKind] = {"source": "source", "voice": "voice", "engine": "engine"}
_TOP_LEVEL = ("stream", "scheduler", "plugins", "source", "voice", "engine", "outputs")


@dataclass
class Stage:
    """One configured component: the table it came from, the name it uses and its validated settings."""

    table: str
    kind: ComponentKind
    use: str
    settings: dict[str, Any]


@dataclass
class Profile:
    path: Path | None
    stream: StreamFormat
    scheduler: SchedulerConfig
    pace: str
    fallback: Stage | None
    source: Stage
    voice: Stage | None
    engine: Stage
    outputs: dict[str, Stage]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    voice_fallback: Stage | None = None  # [voice] fallback: reads on when the voice fails

    @property
    def stages(self) -> list[Stage]:
        found = [self.source, self.voice, self.voice_fallback, self.engine, self.fallback, *self.outputs.values()]
        return [stage for stage in found if stage is not None]


# --- finding and reading -----------------------------------------------------------------------------------


def bundled_profiles() -> dict[str, Path]:
    """Profiles shipped with anchorcast, by name."""
    folder = resources.files("anchorcast_profiles")
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in folder.iterdir()
        if entry.name.endswith(".toml")
    }


def find_profile(name_or_path: str | None) -> Path:
    """A path to an existing file, or the name of a bundled profile (``default`` when None)."""
    candidate = Path(name_or_path or "default").expanduser()
    if candidate.is_file():
        return candidate
    if candidate.exists():
        raise ProfileError(f"{candidate}: is not a file")
    bundled = bundled_profiles()
    if candidate.suffix == "" and str(candidate) in bundled:
        return bundled[str(candidate)]
    known = ", ".join(sorted(bundled)) or "none"
    raise ProfileError(f"{candidate}: no such profile file", hint=f"bundled profiles: {known}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as error:
        raise ProfileError(f"{path}: cannot read: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ProfileError(f"{path}: not valid TOML: {error}") from None
    except UnicodeDecodeError as error:
        raise ProfileError(f"{path}: not UTF-8 text (byte {error.start}): save the profile as UTF-8") from None


# --- command-line overrides --------------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` from ``--set``: the value is read as TOML (``30``, ``true``, ``[1, 2]``, ``"x"``) and
    taken as a plain string when it is not valid TOML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ProfileError(f"--set {text!r}: expected KEY=VALUE with a dotted KEY such as stream.fps=30")
    try:
        parsed = tomllib.loads(f"value = {value.strip()}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key, parsed


def apply_assignment(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    table = raw
    for depth, part in enumerate(parts[:-1]):
        nested = table.setdefault(part, {})
        if not isinstance(nested, dict):
            raise ProfileError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a table")
        table = nested
    table[parts[-1]] = value


# --- validation --------------------------------------------------------------------------------------------


class _Problems:
    """Collects every problem so the user sees them all at once."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{key}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            lines = "\n".join(f"  - {item}" for item in self.items)
            count = "a problem" if len(self.items) == 1 else f"{len(self.items)} problems"
            raise ProfileError(f"{self.origin}: {count}:\n{lines}")


def _type_name(expected: type | tuple[type, ...]) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a table"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _type_ok(value: Any, expected: type | tuple[type, ...]) -> bool:
    types = expected if isinstance(expected, tuple) else (expected,)
    for t in types:
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t not in (int, float) and isinstance(value, t):
            return True
    return False


def validate_table(
    table: dict[str, Any],
    schema: dict[str, Setting] | Any,
    prefix: str,
    problems: _Problems,
    base: Path,
    cli_keys: frozenset[str] = frozenset(),
    ignore: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Checks ``table`` against ``schema``; returns the settings with defaults filled and paths resolved."""
    result: dict[str, Any] = {}
    for key in table:
        if key in schema or key in ignore:
            continue
        allowed = ", ".join(sorted(schema)) or "no settings"
        close = difflib.get_close_matches(key, list(schema), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.add(f"{prefix}.{key}", f"unknown key{hint}; allowed: {allowed}")
    for key, setting in schema.items():
        dotted = f"{prefix}.{key}"
        if setting.secret_env:
            if key in table:
                problems.add(dotted, f"secrets never go in a profile: set the environment variable "
                             f"{setting.secret_env} instead")
                continue
            value = os.environ.get(setting.secret_env)
            if value is None and setting.required:
                problems.add(dotted, f"set the environment variable {setting.secret_env}")
            result[key] = value if value is not None else (None if setting.required else setting.default)
            continue
        if key not in table:
            if setting.required:
                problems.add(dotted, f"required ({setting.help or _type_name(setting.type)})")
            else:
                result[key] = setting.default
            continue
        value = table[key]
        if not _type_ok(value, setting.type):
            problems.add(dotted, f"must be {_type_name(setting.type)}, got {value!r}")
            continue
        if isinstance(value, float) and not math.isfinite(value):
            problems.add(dotted, f"must be finite, got {value!r}")
            continue
        if setting.choices is not None and value not in setting.choices:
            choices = ", ".join(repr(c) for c in setting.choices)
            problems.add(dotted, f"{value!r} is not one of {choices}")
            continue
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if setting.minimum is not None and value < setting.minimum:
                problems.add(dotted, f"must be at least {setting.minimum}, got {value}")
                continue
            if setting.maximum is not None and value > setting.maximum:
                problems.add(dotted, f"must be at most {setting.maximum}, got {value}")
                continue
        if setting.kind in ("file", "dir", "path") and isinstance(value, str):
            path = resolve_path(value, Path.cwd() if dotted in cli_keys else base)
            exists = {"file": path.is_file, "dir": path.is_dir, "path": path.exists}[setting.kind]()
            if not exists:
                what = {"file": "file", "dir": "folder", "path": "file or folder"}[setting.kind]
                problems.add(dotted, f"no such {what}: {path}")
                continue
            value = path
        result[key] = value
    return result


def load_profile(
    path: Path | None,
    manager: PluginManager,
    *,
    raw: dict[str, Any] | None = None,
    overrides: list[tuple[str, Any]] = (),  # type: ignore[assignment]
) -> Profile:
    """Reads and validates a profile. ``raw`` replaces reading ``path`` (which then only names the origin);
    ``overrides`` are dotted ``(key, value)`` pairs applied first (from ``--set`` and the run options)."""
    if raw is None:
        if path is None:
            raise ValueError("load_profile needs a path or a raw table")
        raw = read_toml(path)
    raw = _deep_copy(raw)
    for key, value in overrides:
        apply_assignment(raw, key, value)
    cli_keys = frozenset(key for key, _ in overrides)
    origin = str(path) if path else "<profile>"
    base = path.parent.resolve() if path else Path.cwd()
    problems = _Problems(origin)

    for key in raw:
        if key not in _TOP_LEVEL:
            close = difflib.get_close_matches(key, _TOP_LEVEL, n=1)
            hint = f" (did you mean [{close[0]}]?)" if close else ""
            problems.add(key, f"unknown table{hint}; allowed: {', '.join(_TOP_LEVEL)}")

    def table(name: str) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            problems.add(name, f"must be a table ([{name}]), got {value!r}")
            return {}
        return value

    stream = validate_table(table("stream"), STREAM_SCHEMA, "stream", problems, base, cli_keys)
    scheduler = validate_table(table("scheduler"), SCHEDULER_SCHEMA, "scheduler", problems, base, cli_keys)
    validate_table(table("plugins"), PLUGINS_SCHEMA, "plugins", problems, base, cli_keys)

    def stage(table_name: str, kind: ComponentKind, data: dict[str, Any], default_use: str | None) -> Stage | None:
        use = data.get("use", default_use)
        if use is None:
            problems.add(f"{table_name}.use", f"required: which {kind} to use ({_known(manager, kind)})")
            return None
        if not isinstance(use, str):
            problems.add(f"{table_name}.use", f"must be a string, got {use!r}")
            return None
        component = manager.component(kind, use)
        if component is None:
            close = difflib.get_close_matches(use, manager.names(kind), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.add(f"{table_name}.use", f"unknown {kind} {use!r}{hint}; available: {_known(manager, kind)}")
            return None
        settings = validate_table(
            data, dict(component.settings), table_name, problems, base, cli_keys, ignore=("use",)
        )
        return Stage(table_name, kind, use, settings)

    source = stage("source", "source", table("source"), None)
    voice = voice_fallback = None
    if "voice" in raw:
        voice_table = dict(table("voice"))
        backup = voice_table.pop("fallback", "")
        voice = stage("voice", "voice", voice_table, None)
        if not isinstance(backup, str):
            problems.add("voice.fallback", f'must be a voice\'s name, e.g. "espeak", got {backup!r}')
        elif backup:
            voice_fallback = stage("voice.fallback", "voice", {"use": backup}, None)
    engine = stage("engine", "engine", table("engine"), "viseme")
    outputs: dict[str, Stage] = {}
    output_tables = table("outputs")
    if not output_tables and isinstance(raw.get("outputs", {}), dict):
        problems.add("outputs", 'at least one output is required, e.g. [outputs.file] path = "anchorcast.mp4"')
    for label, data in output_tables.items():
        if not isinstance(data, dict):
            problems.add(f"outputs.{label}", f"must be a table ([outputs.{label}]), got {data!r}")
            continue
        found = stage(f"outputs.{label}", "output", data, label)
        if found:
            outputs[label] = found

    fallback: Stage | None = None
    name = scheduler.get("fallback") or ""
    if scheduler.get("overrun") == "fallback" and not name:
        problems.add("scheduler.fallback", 'overrun = "fallback" needs a fallback engine, e.g. "viseme"')
    elif name:  # it draws late frames (overrun = "fallback") and takes over if the engine fails
        fallback = stage("scheduler.fallback", "engine", {"use": name}, None)

    fmt: StreamFormat | None = None
    for key in ("width", "height"):
        if key in stream and stream[key] % 2:
            problems.add(f"stream.{key}", f"must be even (H.264 4:2:0), got {stream[key]}")
    if set(STREAM_SCHEMA) <= set(stream):
        fps = parse_fps(stream["fps"])
        fmt = StreamFormat(stream["width"], stream["height"], fps, stream["sample_rate"])
    problems.raise_if_any()
    assert fmt is not None and source is not None and engine is not None

    pace = scheduler.pop("pace")
    scheduler.pop("fallback")
    return Profile(
        path=path,
        stream=fmt,
        scheduler=SchedulerConfig(**scheduler),
        pace=pace,
        fallback=fallback,
        source=source,
        voice=voice,
        engine=engine,
        outputs=outputs,
        raw=raw,
        voice_fallback=voice_fallback,
    )


def parse_fps(value: float) -> Fraction:
    """Frames per second as an exact fraction; the NTSC family (23.976, 29.97, 59.94, ...) is k*1000/1001."""
    for base in (24, 30, 48, 60, 120):
        ntsc = Fraction(base * 1000, 1001)
        if abs(value - float(ntsc)) < 0.005:
            return ntsc
    return Fraction(value).limit_denominator(1000)


def plugin_settings(path: Path | None, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``[plugins]`` table, validated on its own: it decides which plugins load before the rest is checked."""
    if raw is None:
        raw = read_toml(path) if path else {}
    problems = _Problems(str(path) if path else "<profile>")
    data = raw.get("plugins", {})
    if not isinstance(data, dict):
        problems.add("plugins", f"must be a table ([plugins]), got {data!r}")
        data = {}
    settings = validate_table(data, PLUGINS_SCHEMA, "plugins", problems, Path.cwd())
    for key in ("allow", "block"):
        if not all(isinstance(item, str) for item in settings.get(key, [])):
            problems.add(f"plugins.{key}", "must be a list of plugin names (strings)")
    problems.raise_if_any()
    return settings


def _known(manager: PluginManager, kind: ComponentKind) -> str:
    return ", ".join(manager.names(kind)) or "none registered"


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value
