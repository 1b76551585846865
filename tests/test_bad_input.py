"""Bad input, tried systematically: profile values, script text and avatar images a user may give. Each case is a
clear :class:`AnchorcastError` naming what is wrong (a non-zero exit and one message at the command line), never
another exception, never a hang, and nothing written outside the output folder.

Hypothesis draws the values; the command-line cases run the real ``anchorcast run``."""

from __future__ import annotations

import math
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anchorcast.errors import AnchorcastError, ProfileError
from anchorcast.host import Host
from anchorcast.media import TextSegment
from anchorcast.plugin_manager import PluginPolicy
from anchorcast.profile import SCHEDULER_SCHEMA, STREAM_SCHEMA
from anchorcast_plugins.engines.viseme.engine import bundled_avatar
from anchorcast_plugins.sources.script import MAX_SCRIPT_CHARS, ScriptSource

ANCHORCAST = [sys.executable, "-m", "anchorcast"]
CONTROL = {chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)]}

# any TOML value: what a user can type for a key
toml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True)
    | st.text(max_size=40) | st.sampled_from(["", "25", "29.97", "30000/1001", "-1", "1e9", "nan", "auto"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)

# script text a newsroom or a chatbot may send: emoji, right-to-left, Chinese beside English, controls, NUL
script_text = st.one_of(
    st.text(max_size=400),
    st.lists(st.sampled_from([
        "Good evening.", "今天股市上涨了百分之三。", "The 上证指数 closed at 3,000 points.", "مرحبا بالعالم.",
        "שלום עולם.", "👋🏽🇨🇳🎉", "\x00", "\u202e", "\ufeff", "\x1b[31m", "\r\n", "# Heading", "[cue: Weather]",
        "e.g. Dr. Smith at 9 a.m.", "…", "。", " ", "x" * 300,
    ]), max_size=12).map("".join),
)


@pytest.fixture(scope="module")
def host() -> Host:
    return Host.create(PluginPolicy())


def base_profile(tmp_path: Path) -> dict[str, Any]:
    return {
        "stream": {"width": 320, "height": 180, "fps": 25, "sample_rate": 16000},
        "source": {"use": "script", "text": "Good evening."},
        "voice": {"use": "espeak"},
        "outputs": {"file": {"use": "file", "path": str(tmp_path / "out" / "x.mp4")}},
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(["stream", "scheduler"]), data=st.data())
def test_any_value_for_a_stream_or_scheduler_key_loads_or_names_that_key(
    host: Host, tmp_path: Path, table: str, data: st.DataObject
) -> None:
    schema = STREAM_SCHEMA if table == "stream" else SCHEDULER_SCHEMA
    key = data.draw(st.sampled_from(sorted(schema)))
    value = data.draw(toml_values)
    raw = base_profile(tmp_path)
    raw.setdefault(table, {})[key] = value
    try:
        profile = host.load_profile(None, raw=raw)
    except ProfileError as error:
        assert f"{table}.{key}" in str(error), str(error)
        return
    # accepted: the value is one the schema allows
    setting = schema[key]
    if table == "stream":
        accepted = {"width": profile.stream.width, "height": profile.stream.height,
                    "fps": float(profile.stream.fps), "sample_rate": profile.stream.sample_rate}[key]
        assert setting.minimum is None or accepted >= setting.minimum
        assert setting.maximum is None or accepted <= setting.maximum
        assert math.isfinite(accepted)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.sampled_from(["source", "voice", "engine", "outputs.file"]), key=st.text(max_size=12),
       value=toml_values)
def test_any_key_or_value_in_a_stage_table_loads_or_names_the_table(
    host: Host, tmp_path: Path, table: str, key: str, value: Any
) -> None:
    raw = base_profile(tmp_path)
    target = raw["outputs"]["file"] if table == "outputs.file" else raw.setdefault(table, {})
    target[key] = value
    try:
        host.load_profile(None, raw=raw)
    except ProfileError as error:
        assert table in str(error), str(error)


@settings(max_examples=200, deadline=None)
@given(text=script_text)
def test_any_script_text_becomes_speakable_segments_without_controls(text: str) -> None:
    segments = list(ScriptSource(text, "source.text").segments())
    for segment in segments:
        assert any(ch.isalnum() for ch in segment.text), segment
        assert not CONTROL & set(segment.text), repr(segment.text)
        assert segment.language in ("en", "zh")
    spoken = "".join(segment.text for segment in segments)
    for word in ("Good", "股市", "上证指数", "Smith"):  # nothing speakable is lost
        if word in text:
            assert word in spoken


@pytest.fixture(scope="module")
def espeak() -> Any:
    from anchorcast_plugins.voices.espeak_voice import EspeakVoice

    return EspeakVoice("en")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=script_text)
def test_the_voice_reads_any_segment_of_any_script(espeak: Any, text: str) -> None:
    for segment in list(ScriptSource(text, "source.text").segments())[:3]:
        speech = list(espeak.synthesize(TextSegment(segment.text, 0, segment.language)))
        audio = np.concatenate([s.audio for s in speech]) if speech else np.zeros(0, np.float32)
        assert np.isfinite(audio).all() and (np.abs(audio) <= 1.0).all()


def test_a_script_of_more_than_a_million_characters_is_refused_with_its_size() -> None:
    with pytest.raises(AnchorcastError) as caught:
        ScriptSource("Good evening. " * (MAX_SCRIPT_CHARS // 14 + 1), "bulletin.md")
    assert "bulletin.md" in str(caught.value) and "million characters" in str(caught.value)


# --- at the command line ---------------------------------------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A grey PNG of ``width`` x ``height`` zero pixels, compressed row by row (a 20000x20000 one is 390 KB)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer, rows = zlib.compressobj(9), []
    row = b"\0" * (width + 1)
    rows = [packer.compress(row) for _ in range(height)]
    idat = b"".join(rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bad_inputs(folder: Path) -> None:
    from PIL import Image

    portrait = bundled_avatar().read_bytes()
    (folder / "empty.png").write_bytes(png(0, 0))
    (folder / "bomb.png").write_bytes(png(20000, 20000))
    (folder / "cut.png").write_bytes(portrait[: len(portrait) // 2])
    (folder / "notes.png").write_text("not a picture\n")
    Image.open(bundled_avatar()).convert("RGB").convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "binary.md").write_bytes(bytes(range(256)) * 64)
    (folder / "huge.md").write_text("Good evening, here is the news. " * 330_000)  # 10.6 MB
    (folder / "odd.md").write_text("Good evening\x00 👋🏽. 今天 the 上证指数 rose。 مرحبا.\x1b\n", encoding="utf-8")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--text", "Hi.", "--set", "engine.avatar=empty.png"], 1, ["empty.png", "not an image"]),
        (["--text", "Hi.", "--set", "engine.avatar=bomb.png"], 1, ["bomb.png", "20000x20000", "megapixels"]),
        (["--text", "Hi.", "--set", "engine.avatar=cut.png"], 1, ["cut.png", "truncated"]),
        (["--text", "Hi.", "--set", "engine.avatar=notes.png"], 1, ["notes.png", "not an image"]),
        (["--script", "binary.md"], 1, ["binary.md", "not UTF-8"]),
        (["--script", "huge.md"], 1, ["huge.md", "million characters"]),
        (["--text", "Hi.", "--set", "stream.fps=nan"], 2, ["stream.fps"]),
        (["--text", "Hi.", "--set", "outputs.file.path=a\x01b/x.mp4"], None, []),
    ],
)
def test_bad_input_at_the_command_line_is_one_message_and_writes_nothing(
    tmp_path: Path, args: list[str], code: int | None, expected: list[str]
) -> None:
    bad_inputs(tmp_path)
    before = set(tmp_path.iterdir())
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([*ANCHORCAST, "run", *args, "--out", "out/x.mp4", "--set", "voice.use=espeak"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    if code is None:  # a strange but legal name: written where it was asked, or refused in one message
        assert result.returncode in (0, 1, 2), result.stderr
        return
    assert result.returncode == code, (result.returncode, result.stderr)
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert set(tmp_path.iterdir()) - before <= {tmp_path / "out"}
    assert not (tmp_path / "out" / "x.mp4").exists() or code == 0


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--script", "odd.md"], ["--text", "Hi.", "--set", "engine.avatar=cmyk.jpg",
                                                             "--set", "engine.face_box=[160,120,200,240]"]])
def test_odd_but_valid_input_is_read(tmp_path: Path, args: list[str]) -> None:
    """NUL and escape bytes, emoji, right-to-left and Chinese beside English in a script; a CMYK JPEG portrait."""
    from tests.mp4 import decode

    bad_inputs(tmp_path)
    env = {**os.environ, "COLUMNS": "200"}
    result = subprocess.run([*ANCHORCAST, "run", *args, "--out", "out/x.mp4", "--set", "voice.use=espeak",
                             "--set", "stream.width=320", "--set", "stream.height=240"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    video = decode(tmp_path / "out" / "x.mp4")
    assert video.audio_seconds > 0.5 and len(video.frames) > 10
    if "engine.avatar=cmyk.jpg" in args:  # the colours of the portrait, not its CMYK numbers read as RGB
        from PIL import Image

        original = np.asarray(Image.open(bundled_avatar()).convert("RGB").resize((320, 240)), np.float32)
        assert np.abs(video.frames[0].astype(np.float32).mean((0, 1)) - original.mean((0, 1))).max() < 25
