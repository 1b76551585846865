"""``[voice] fallback``: when the voice raises mid-utterance, or its model will not load, the fallback voice reads
the rest of the script. With the real piper voice (its bundled model), the fault injected after its first
sentence as an onnxruntime error would raise, and the real eSpeak voice reading on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from anchorcast.errors import AnchorcastError
from anchorcast.host import Host
from anchorcast.media import Caption, Speech, TextSegment, VoiceFailed
from anchorcast.plugin_manager import PluginPolicy
from tests.components import RecordingPlugin
from tests.mp4 import decode

pytestmark = pytest.mark.slow

FIRST, SECOND, THIRD = "Good evening.", "Here is the news.", "We read it to the end whatever the voice does."
TEXT = f"{FIRST} {SECOND} {THIRD}"


def profile_raw(out: Path, voice: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": {"width": 320, "height": 180, "fps": 25, "sample_rate": 16000},
        "scheduler": {"pace": "fast"},
        "source": {"use": "script", "text": TEXT},
        "voice": voice,
        "outputs": {"file": {"use": "file", "path": str(out), "preset": "ultrafast"}},
    }


def run(raw: dict[str, Any], fail_after: int | None) -> tuple[RecordingPlugin, dict, list[str]]:
    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), extra_plugins=(plugin,))
    profile = host.load_profile(None, raw=raw)
    assert profile.voice is not None
    voice = host.build(profile.voice)
    real_synthesize, read = voice.synthesize, []

    def synthesize(segment: TextSegment) -> Iterator[Speech]:  # the real voice's sentences, until the fault
        for speech in real_synthesize(segment):
            if fail_after is not None and len(read) == fail_after:
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : bad allocation (injected)")
            read.append(speech.text)
            yield speech

    voice.synthesize = synthesize
    report = host.run(profile, voice=voice)
    return plugin, report, read


def events(plugin: RecordingPlugin, kind: type) -> list[Any]:
    return [e for name, e in plugin.calls if name == "event" and isinstance(e, kind)]


def test_the_fallback_voice_reads_the_rest_of_the_utterance_when_the_voice_fails(tmp_path: Path) -> None:
    raw = profile_raw(tmp_path / "news.mp4", {"use": "piper", "fallback": "espeak"})
    plugin, report, read = run(raw, fail_after=1)
    assert len(read) == 1, read  # piper read the first sentence, then failed
    failures = events(plugin, VoiceFailed)
    assert len(failures) == 1, failures
    assert failures[0].voice == "piper" and failures[0].fallback == "espeak"
    assert "bad allocation" in failures[0].detail
    captions = " ".join(c.text for c in events(plugin, Caption) if c.final)
    for sentence in (FIRST, SECOND, THIRD):  # each read once: nothing lost, nothing repeated
        assert captions.count(sentence.rstrip(".")) == 1, captions
    assert report["voice_failures"] == 1
    video = decode(tmp_path / "news.mp4")
    # the whole script is on air: eSpeak reads the two sentences after the fault in well over a second
    assert video.audio_seconds > 3.0 and len(video.frames) == report["frames"]


def test_a_voice_model_that_will_not_load_gives_the_script_to_the_fallback(tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"\x08\x07" + b"not an onnx graph" * 64)  # a truncated download
    (tmp_path / "broken.onnx.json").write_text('{"audio": {"sample_rate": 22050}}')
    raw = profile_raw(tmp_path / "news.mp4", {"use": "piper", "model": str(model), "fallback": "espeak"})
    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), extra_plugins=(plugin,))
    report = host.run(host.load_profile(None, raw=raw))
    failures = events(plugin, VoiceFailed)
    assert len(failures) == 1 and failures[0].voice == "piper" and failures[0].fallback == "espeak"
    captions = " ".join(c.text for c in events(plugin, Caption) if c.final)
    assert all(s.rstrip(".") in captions for s in (FIRST, SECOND, THIRD)), captions
    assert decode(tmp_path / "news.mp4").audio_seconds > 3.0 and report["frames"] > 75


def test_without_a_fallback_the_voices_failure_ends_the_run_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:
        run(profile_raw(tmp_path / "news.mp4", {"use": "piper"}), fail_after=1)
    assert "bad allocation" in str(caught.value) or isinstance(caught.value, AnchorcastError)


def test_a_fallback_that_is_not_a_voice_is_a_profile_error_naming_the_key(tmp_path: Path) -> None:
    host = Host.create(PluginPolicy())
    with pytest.raises(AnchorcastError) as caught:
        host.load_profile(None, raw=profile_raw(tmp_path / "news.mp4", {"use": "piper", "fallback": "espeek"}))
    assert "voice.fallback" in str(caught.value) and "espeak" in str(caught.value)
