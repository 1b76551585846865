"""Speech in ``anchorcast train prepare``: RNNoise denoising of the 16 kHz track, voice activity per 25 fps frame
and the trimming of long silences, and a signal-to-noise estimate before and after denoising.

Denoising is :func:`anchorcast_plugins.sources.noise_suppression.denoise_audio` (RNNoise, the model inside
``pyrnnoise``), which also gives RNNoise's voice-activity probability per 10 ms. That probability is the voice
activity used here, chosen over webrtcvad on the synthetic speech (two sentences, 6 s, frames labelled by the
rendered speech spans; recall of speech frames / share of non-speech frames called speech):

=============  ================  ================  ================
white noise    webrtcvad mode 2  webrtcvad mode 3  RNNoise p > 0.5
=============  ================  ================  ================
none           0.99 / 0.19       0.99 / 0.16       0.87 / 0.00
SNR 20 dB      0.98 / 0.08       0.98 / 0.08       0.97 / 0.06
SNR 10 dB      0.98 / 0.05       0.98 / 0.05       0.97 / 0.02
SNR 0 dB       1.00 / 1.00       1.00 / 1.00       0.95 / 0.03
=============  ================  ================  ================

webrtcvad calls everything speech at 0 dB; RNNoise keeps separating. Its misses on clean speech are dips inside
words, which the minimum silence length bridges: a video frame (40 ms) is speech when any of its 10 ms
probabilities reaches ``threshold`` (0.5), and only a run of non-speech frames longer than ``min_silence``
(0.5 s, longer than the pauses between words and sentences) is cut, keeping ``pad`` (0.12 s) at each side that
touches speech.

RNNoise keeps other voices as speech: with crowd noise (babble) behind the presenter it lowers the presenter's
voice along with the crowd (by 13-18 dB at 0-10 dB SNR on the test babble, against under 1 dB with white or pink
noise at any SNR from 0 to 40 dB; scripts/bench_denoise.py). So the denoised sound is used only when the speech
level it leaves is within ``max_speech_loss`` (6 dB) of the original's; otherwise the original is kept and the
video's report says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.dataset import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME

DEFAULT_SPEECH_THRESHOLD = 0.5
DEFAULT_MIN_SILENCE = 0.5
DEFAULT_SILENCE_PAD = 0.12
NOISE_PROBABILITY = 0.2
"""10 ms frames under this speech probability count as noise for the SNR estimate."""
SNR_CAP_DB = 60.0
DEFAULT_MAX_SPEECH_LOSS_DB = 6.0
MIN_NOISE_SHARE = 0.05
"""With fewer 10 ms frames than this called noise, the speech level is taken without a noise floor subtracted."""


@dataclass(frozen=True)
class SpeechTrack:
    """A video's sound after the speech step: ``audio`` (denoised, or the original with ``--no-denoise``),
    ``original``, the speech probability of each 25 fps frame (None: voice activity not measured) and the SNR
    estimates of the original and of ``audio`` (dB; None without voice activity)."""

    audio: npt.NDArray[np.float32]
    original: npt.NDArray[np.float32]
    frame_speech: npt.NDArray[np.float32] | None
    snr_before: float | None
    snr_after: float | None
    denoised: bool
    speech_change_db: float | None = None
    """How denoising changed the speech level (dB, negative: quieter); None when not denoised."""
    skipped: str | None = None
    """Why the denoised sound was not used, when it was made but its speech level fell too far."""


def check_speech_options(threshold: float, min_silence: float, pad: float,
                         max_speech_loss: float = DEFAULT_MAX_SPEECH_LOSS_DB) -> None:
    if not max_speech_loss >= 0:
        raise InputError(f"--max-speech-loss must be 0 dB or more, got {max_speech_loss}",
                         hint=f"the default is {DEFAULT_MAX_SPEECH_LOSS_DB:g}; --no-denoise keeps the sound as it is")
    if not 0 < threshold < 1:
        raise InputError(f"--speech-threshold must be a probability in (0, 1), got {threshold}",
                         hint=f"the default is {DEFAULT_SPEECH_THRESHOLD:g}")
    if not min_silence > 0:
        raise InputError(f"--min-silence must be more than 0 seconds, got {min_silence}",
                         hint=f"the default is {DEFAULT_MIN_SILENCE:g}; --no-trim-silence keeps silences")
    if not 0 <= pad < min_silence / 2:
        raise InputError(f"--silence-pad must be at least 0 and under half of --min-silence ({min_silence:g} s), "
                         f"got {pad}", hint=f"the default is {DEFAULT_SILENCE_PAD:g}")


def speech_track(audio: npt.NDArray[np.float32], *, denoise: bool, voice_activity: bool,
                 max_speech_loss: float = DEFAULT_MAX_SPEECH_LOSS_DB) -> SpeechTrack:
    """Denoises ``audio`` (16 kHz) when ``denoise``; measures voice activity when either is asked (RNNoise gives
    both in one pass; with ``voice_activity`` alone the denoised sound is not kept). The original is kept when
    denoising lowers the speech level by more than ``max_speech_loss`` dB."""
    if not denoise and not voice_activity:
        return SpeechTrack(audio, audio, None, None, None, False)
    from anchorcast_plugins.sources.noise_suppression import denoise_audio

    result = denoise_audio(audio, SAMPLE_RATE)
    speech = np.asarray(result.speech, np.float32)
    frames = -(-len(audio) // SAMPLES_PER_FRAME)
    per_frame = frame_probabilities(speech, float(result.frame_seconds), frames)
    voice = VoiceFrames.of(speech, len(audio), round(float(result.frame_seconds) * SAMPLE_RATE))
    before = voice.power(audio)
    snr_before = voice.snr(before)
    if not denoise:
        return SpeechTrack(audio, audio, per_frame, snr_before, None, False)
    cleaned = np.ascontiguousarray(result.audio, np.float32)
    after = voice.power(cleaned)
    change = voice.level_change(before, after)
    if change is not None and change < -max_speech_loss:
        why = (f"denoising not used: it lowered the speech by {-change:.1f} dB (over --max-speech-loss "
               f"{max_speech_loss:g}); other voices behind the presenter? RNNoise keeps them as speech")
        return SpeechTrack(audio, audio, per_frame, snr_before, None, False, change, why)
    return SpeechTrack(cleaned, audio, per_frame, snr_before, voice.snr(after), True, change)


@dataclass(frozen=True)
class VoiceFrames:
    """RNNoise's verdict on a track's 10 ms frames (``hop`` samples each): ``talk`` where its speech probability
    reaches the threshold, ``noise`` where it is under :data:`NOISE_PROBABILITY`. The power of each frame of a
    signal (the original, the denoised) is measured once and judged by these masks."""

    hop: int
    talk: npt.NDArray[np.bool_]
    noise: npt.NDArray[np.bool_]

    @classmethod
    def of(cls, speech: npt.NDArray[np.float32], samples: int, hop: int) -> VoiceFrames:
        hop = max(1, hop)
        count = min(len(speech), samples // hop)
        return cls(hop, speech[:count] >= DEFAULT_SPEECH_THRESHOLD, speech[:count] < NOISE_PROBABILITY)

    def power(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """The mean power of each judged frame of ``audio``."""
        count = len(self.talk)
        return np.mean(np.square(audio[: count * self.hop].astype(np.float64)).reshape(count, self.hop), axis=1)

    def snr(self, power: npt.NDArray[np.float64]) -> float | None:
        """Signal-to-noise ratio in dB: the mean power of the speech frames (less the noise power) over the mean
        power of the noise frames; None without both kinds. Capped at :data:`SNR_CAP_DB` (a denoised pause can
        be digital silence)."""
        if not self.talk.any() or not self.noise.any():
            return None
        noise_power = float(power[self.noise].mean())
        signal_power = max(float(power[self.talk].mean()) - noise_power, 1e-20)
        if noise_power <= signal_power * 10 ** (-SNR_CAP_DB / 10):
            return SNR_CAP_DB
        return float(10 * np.log10(signal_power / noise_power))

    def speech_power(self, power: npt.NDArray[np.float64]) -> float | None:
        """The mean power of the speech frames, less the noise floor when enough frames are noise to measure one;
        None without speech."""
        if not self.talk.any():
            return None
        talk_power = float(power[self.talk].mean())
        if self.noise.mean() < MIN_NOISE_SHARE:
            return talk_power
        floor = float(power[self.noise].mean())
        # a floor near the speech level (speech-like noise the VAD half-accepts) would make the difference
        # meaningless
        return talk_power - floor if talk_power - floor > 0.1 * talk_power else talk_power

    def level_change(self, before: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> float | None:
        """The change in speech level (dB) from the frame powers ``before`` to ``after``; None without speech."""
        first, second = self.speech_power(before), self.speech_power(after)
        if first is None or second is None:
            return None
        return float(10 * np.log10(max(second, 1e-20) / max(first, 1e-20)))


def frame_probabilities(speech: npt.NDArray[np.float32], frame_seconds: float,
                        frames: int) -> npt.NDArray[np.float32]:
    """The highest speech probability among the ``frame_seconds`` frames overlapping each 25 fps frame."""
    out = np.zeros(frames, np.float32)
    if len(speech) == 0:
        return out
    starts = np.arange(len(speech)) * frame_seconds
    index = np.minimum((starts * FPS + 1e-9).astype(np.int64), frames - 1)
    ends = np.minimum(((starts + frame_seconds) * FPS - 1e-9).astype(np.int64), frames - 1)
    np.maximum.at(out, index, speech)
    np.maximum.at(out, ends, speech)
    return out


def silence_mask(frame_speech: npt.NDArray[np.float32], threshold: float, min_silence: float,
                 pad: float) -> npt.NDArray[np.bool_]:
    """True for the frames cut as silence: runs of frames under ``threshold`` longer than ``min_silence``
    seconds, less ``pad`` seconds at each end that touches speech."""
    quiet = frame_speech < threshold
    cut = np.zeros(len(quiet), bool)
    longest = round(min_silence * FPS)
    keep = round(pad * FPS)
    start = None
    for index, value in enumerate([*quiet.tolist(), False]):
        if value and start is None:
            start = index
        elif not value and start is not None:
            if index - start > longest:
                lo = start + keep if start > 0 else start
                hi = index - keep if index < len(quiet) else index
                cut[lo:hi] = True
            start = None
    return cut
