"""The Wav2Lip mel features: the reference computation (librosa with reflect padding), per-frame windows, and the
per-frame and streaming variants that must give the whole-file numbers."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from anchorcast.clock import MediaClock
from anchorcast_plugins.engines.wav2lip import audio

librosa = pytest.importorskip("librosa")
signal = pytest.importorskip("scipy.signal")

SR = 16000


def reference_mel(wav: np.ndarray, pad_mode: str = "reflect") -> np.ndarray:
    """Wav2Lip's audio.melspectrogram with its hparams, written with librosa and scipy as the reference does."""
    emphasised = signal.lfilter([1, -0.97], [1], wav)
    stft = librosa.stft(y=emphasised, n_fft=800, hop_length=200, win_length=800, pad_mode=pad_mode)
    basis = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600)
    db = 20 * np.log10(np.maximum(1e-5, basis @ np.abs(stft))) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def speech_like(seconds: float, seed: int = 0) -> np.ndarray:
    """Voiced syllables (a gliding harmonic source shaped by two moving formants), fricative noise bursts and
    stretches of exact digital silence."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t) + 8 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = np.zeros_like(t)
    formant1 = 500 + 300 * np.sin(2 * np.pi * 2.1 * t)
    formant2 = 1500 + 700 * np.sin(2 * np.pi * 1.3 * t + 1)
    for k in range(1, 40):
        harmonic = k * f0
        gain = np.exp(-(((harmonic - formant1) / 150) ** 2)) + 0.5 * np.exp(-(((harmonic - formant2) / 250) ** 2))
        voiced += gain * np.sin(k * phase) / k**0.5
    syllables = np.clip(np.sin(2 * np.pi * 4 * t), 0, None) ** 0.7
    noise = rng.standard_normal(t.size) * (np.sin(2 * np.pi * 4 * t + np.pi) > 0.8)
    wav = 0.15 * voiced * syllables + 0.03 * noise
    wav[(t % 1.5) > 1.2] = 0.0  # pauses of exact silence
    return (wav / np.abs(wav).max() * 0.8).astype(np.float32)


@pytest.fixture(scope="module")
def random_audio() -> np.ndarray:
    return (np.random.default_rng(7).standard_normal(int(2.3 * SR)) * 0.2).astype(np.float32)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speech_like(3.1)


def test_mel_basis_equals_librosa_slaney_filterbank() -> None:
    expected = librosa.filters.mel(sr=SR, n_fft=800, n_mels=80, fmin=55, fmax=7600, dtype=np.float64)
    assert audio.mel_basis().shape == (80, 401)
    np.testing.assert_allclose(audio.mel_basis(), expected, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("name", ["random_audio", "speech"])
def test_melspectrogram_matches_the_librosa_reference(name: str, request: pytest.FixtureRequest) -> None:
    wav = request.getfixturevalue(name)
    ours = audio.melspectrogram(wav)
    expected = reference_mel(wav)
    assert ours.dtype == np.float32
    assert ours.shape == expected.shape == (80, 1 + len(wav) // 200)
    assert np.abs(ours - expected).max() < 1e-3
    assert ours.min() >= -4 and ours.max() <= 4
    assert ours.std() > 0.5  # a real spectrogram, not a clipped constant


def test_the_first_and_last_columns_need_reflect_padding(speech: np.ndarray) -> None:
    wav = speech[int(0.05 * SR) : int(1.1 * SR)]  # starts and ends inside a syllable
    ours = audio.melspectrogram(wav)
    zero_padded = reference_mel(wav, pad_mode="constant")
    edges = np.r_[0, 1, ours.shape[1] - 2, ours.shape[1] - 1]
    assert np.abs(ours[:, edges] - zero_padded[:, edges]).max() > 0.05
    np.testing.assert_allclose(ours[:, 2:-2], zero_padded[:, 2:-2], atol=1e-3)


@pytest.mark.filterwarnings("ignore:n_fft=800 is too large")
@pytest.mark.parametrize("length", [401, 599, 600, 999, 1000, 1001])
def test_melspectrogram_shape_and_values_at_awkward_lengths(length: int) -> None:
    wav = np.random.default_rng(length).standard_normal(length) * 0.3
    ours = audio.melspectrogram(wav)
    assert ours.shape == (80, 1 + length // 200)
    assert np.abs(ours - reference_mel(wav)).max() < 1e-3


@pytest.mark.parametrize("fps", [25, 30, 24, 60, 12.5, Fraction(30000, 1001)])
def test_mel_window_start_is_the_reference_index(fps: float | Fraction) -> None:
    for i in range(5000):
        if isinstance(fps, Fraction):
            expected = (i * 80 * fps.denominator) // fps.numerator
        else:
            expected = int(i * (80.0 / fps))  # the reference's mel_idx_multiplier
        assert audio.mel_window_start(i, fps) == expected
    assert audio.mel_window_start(5, 25) == 16


def test_mel_windows_cut_like_the_reference_including_past_the_end(speech: np.ndarray) -> None:
    mel = audio.melspectrogram(speech)
    count = mel.shape[1]
    frames = int(len(speech) / SR * 25) + 6  # some frames past the end of the audio
    windows = audio.mel_windows(mel, frames, 25)
    assert windows.shape == (frames, 80, 16)
    assert windows.dtype == np.float32
    past_the_end = 0
    for i in range(frames):
        start = int(i * 80 / 25)
        if start + 16 <= count:
            np.testing.assert_array_equal(windows[i], mel[:, start : start + 16])
        else:
            past_the_end += 1
            np.testing.assert_array_equal(windows[i], mel[:, count - 16 :])
    assert past_the_end >= 6


def test_mel_windows_of_a_very_short_clip_pad_with_silence() -> None:
    mel = audio.melspectrogram(np.random.default_rng(0).standard_normal(1000))  # 6 columns
    windows = audio.mel_windows(mel, 3, 25)
    np.testing.assert_array_equal(windows[0, :, :6], mel)
    assert (windows[:, :, 6:] == -4).all()


def _chunked(wav: np.ndarray, sizes: list[int], keep: int = 0) -> tuple[np.ndarray, audio.StreamingMel]:
    stream = audio.StreamingMel(keep=keep)
    parts, position, turn = [], 0, 0
    while position < len(wav):
        size = sizes[turn % len(sizes)]
        out = stream.push(wav[position : position + size])
        assert out.shape[0] == 80 and out.dtype == np.float32
        parts.append(out)
        position += size
        turn += 1
    parts.append(stream.finish())
    return np.concatenate(parts, axis=1), stream


@pytest.mark.parametrize("sizes", [[1, 2, 3], [7, 199, 13], [200], [201], [641, 17, 999], [5003], [40000]])
@pytest.mark.parametrize("name", ["random_audio", "speech"])
def test_streaming_mel_equals_the_whole_file(sizes: list[int], name: str, request: pytest.FixtureRequest) -> None:
    wav = request.getfixturevalue(name)
    if sizes[0] <= 3:
        wav = wav[: int(0.4 * SR)]  # sample-by-sample pushes are slow: a shorter clip
    streamed, stream = _chunked(wav, sizes)
    whole = audio.melspectrogram(wav)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-6)
    assert stream.samples_received == len(wav) and stream.columns_emitted == whole.shape[1]


@pytest.mark.parametrize("length", [0, 1, 150, 399, 400, 401, 402, 599, 600, 601, 800, 1201])
def test_streaming_mel_at_the_edges_of_short_streams(length: int) -> None:
    wav = np.random.default_rng(length).standard_normal(length)
    streamed, _ = _chunked(wav, [97])
    np.testing.assert_allclose(streamed, audio.melspectrogram(wav), rtol=0, atol=1e-6)


def test_streaming_mel_emits_each_column_once_its_samples_are_in(speech: np.ndarray) -> None:
    stream = audio.StreamingMel()
    emitted = 0
    for end in range(1, 3000):
        emitted += stream.push(speech[end - 1 : end]).shape[1]
        # column c needs samples up to 200c + 399 (column 0 also sample 400 for its left reflection)
        expected = 0 if end <= 400 else (end - 400) // 200 + 1
        assert emitted == expected, end


def test_streaming_mel_keeps_recent_windows(speech: np.ndarray) -> None:
    whole = audio.mel_windows(audio.melspectrogram(speech), 70, 25)
    stream = audio.StreamingMel(keep=40)
    seen = set()
    for position in range(0, len(speech), 333):
        stream.push(speech[position : position + 333])
        for i in range(70):
            window = stream.window(i, 25)
            if window is not None:
                seen.add(i)
                np.testing.assert_allclose(window, whole[i], atol=1e-6)
    assert stream.window(0, 25) is None  # long dropped: only the last 40 columns are kept
    assert seen == set(range(70))  # each window was available for a while


def _scheduler_contexts(wav: np.ndarray, fps: Fraction, frames: range) -> tuple[list[np.ndarray], int]:
    """The contexts the host's scheduler would hand an engine with the lookbehind/lookahead FrameMel asks for."""
    clock = MediaClock(fps, SR)
    behind = clock.seconds_to_samples(audio.LOOKBEHIND_SAMPLES / SR)
    ahead = clock.seconds_to_samples(audio.lookahead_samples(fps) / SR)
    contexts = []
    for i in frames:
        low, high = clock.frame_start(i) - behind, clock.frame_end(i) + ahead
        context = np.zeros(high - low, np.float32)
        inside = slice(max(low, 0), min(high, len(wav)))
        context[inside.start - low : inside.stop - low] = wav[inside]
        contexts.append(context)
    return contexts, behind


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(24)])
def test_frame_mel_matches_the_whole_file_windows(fps: Fraction, speech: np.ndarray) -> None:
    mel = audio.melspectrogram(speech)
    frames = range(int(len(speech) / SR * fps))
    whole = audio.mel_windows(mel, len(frames), fps)
    contexts, behind = _scheduler_contexts(speech, fps, frames)
    assert behind == audio.LOOKBEHIND_SAMPLES
    batch = audio.FrameMel(fps).windows(contexts, list(frames), behind)
    assert batch.shape == (len(frames), 80, 16) and batch.dtype == np.float32
    compared = 0
    for i in frames:
        start = audio.mel_window_start(i, fps)
        if 200 * start - 400 >= 0 and 200 * (start + 15) + 400 <= len(speech):  # away from the reflected ends
            np.testing.assert_allclose(batch[i], whole[i], rtol=0, atol=1e-5)
            compared += 1
    assert compared >= len(frames) - 8
    one = audio.FrameMel(fps).window(contexts[20], 20)
    np.testing.assert_array_equal(one, batch[20])


@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30), Fraction(30000, 1001)])
def test_frame_mel_context_is_just_enough(fps: Fraction) -> None:
    """Over many frames the window needs every sample of the context at one end or the other."""
    frame_mel = audio.FrameMel(fps)
    clock = MediaClock(fps, SR)
    ahead = audio.lookahead_samples(fps)
    spare_before = min(frame_mel.segment_start(i) for i in range(3000))
    spare_after = min(
        (audio.LOOKBEHIND_SAMPLES + clock.frame_samples(i) + ahead) - (frame_mel.segment_start(i) + 3801)
        for i in range(3000)
    )
    assert spare_before >= 0 and spare_after == 0
    assert spare_before < 200  # the lookbehind covers the worst sub-hop lag plus half a window
    short = np.zeros(audio.LOOKBEHIND_SAMPLES + clock.frame_samples(0) + ahead - 1, np.float32)
    with pytest.raises(ValueError, match="lookahead"):
        frame_mel.window(short, 0)


def test_frame_mel_refuses_other_sample_rates() -> None:
    with pytest.raises(ValueError, match="16000"):
        audio.FrameMel(25, sample_rate=24000)
