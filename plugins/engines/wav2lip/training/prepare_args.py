"""Command-line arguments of ``anchorcast train prepare`` (argparse only, so listing commands stays fast; the
command itself lives in :mod:`.prepare`). The cleaning thresholds' defaults and the figures that chose them are in
:mod:`.prepare_quality` and :mod:`.prepare_speech`; they are repeated here, not imported, for the same reason."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEFAULT_MIN_SECONDS = 1.0
DEFAULT_MAX_SECONDS = 10.0
DEFAULT_MIN_RESOLUTION = 160
DEFAULT_MIN_FACE = 48
# keep in step with prepare_quality and prepare_speech (a test checks)
DEFAULT_MIN_SHARPNESS = 30.0
DEFAULT_MIN_BRIGHTNESS = 50.0
DEFAULT_MAX_CLIPPED = 0.25
DEFAULT_MIN_BITS_PER_PIXEL = 0.02
DEFAULT_SPEECH_THRESHOLD = 0.5
DEFAULT_MIN_SILENCE = 0.5
DEFAULT_SILENCE_PAD = 0.12
DEFAULT_MAX_SPEECH_LOSS_DB = 6.0


def configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO",
                        help="talking-face videos with sound; a folder is searched for videos")
    parser.add_argument("--out", type=Path, required=True, metavar="DATASET", help="data set folder to write")
    parser.add_argument("--speaker", default=None,
                        help="speaker of every video (default: the people found by clustering the faces, named "
                             "after their videos' folders)")
    parser.add_argument("--speaker-per-folder", action="store_true",
                        help="no face clustering: each video's speaker is its parent folder's name")
    parser.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                        help=f"drop clips shorter than this (default {DEFAULT_MIN_SECONDS})")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"split longer stretches into clips of at most this (default {DEFAULT_MAX_SECONDS})")
    parser.add_argument("--min-resolution", type=int, default=DEFAULT_MIN_RESOLUTION, metavar="PIXELS",
                        help=f"drop videos whose shorter side is below this (default {DEFAULT_MIN_RESOLUTION})")
    parser.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE, metavar="PIXELS",
                        help=f"frames whose face is narrower than this count as lost (default {DEFAULT_MIN_FACE})")
    parser.add_argument("--expert", default=None, metavar="WEIGHTS",
                        help="a lip-sync expert (weights name or file of kind syncnet): drop clips it finds off-sync")
    parser.add_argument("--max-offset", type=int, default=2, metavar="FRAMES",
                        help="with --expert: drop a clip whose best audio offset is further than this (default 2)")
    sound = parser.add_argument_group("sound cleaning")
    sound.add_argument("--no-denoise", action="store_true",
                       help="keep the sound as it is (default: RNNoise denoises it; the original is kept as "
                            "clips/ID/audio_original.npy and the mel is made from the denoised sound)")
    sound.add_argument("--max-speech-loss", type=float, default=DEFAULT_MAX_SPEECH_LOSS_DB, metavar="DB",
                       help="keep the original sound of a video whose speech denoising lowers by more than this "
                            f"(default {DEFAULT_MAX_SPEECH_LOSS_DB:g}: RNNoise lowers speech under 1 dB in white or "
                            "pink noise, 13-18 dB in crowd babble, whose voices it keeps as speech)")
    sound.add_argument("--no-trim-silence", action="store_true",
                       help="keep silences (default: cut those longer than --min-silence)")
    sound.add_argument("--speech-threshold", type=float, default=DEFAULT_SPEECH_THRESHOLD, metavar="P",
                       help="a frame is speech when RNNoise's voice probability reaches this (default "
                            f"{DEFAULT_SPEECH_THRESHOLD}; RNNoise kept speech and silence apart down to 0 dB SNR "
                            "on the synthetic speech, where webrtcvad called everything speech)")
    sound.add_argument("--min-silence", type=float, default=DEFAULT_MIN_SILENCE, metavar="SECONDS",
                       help=f"cut silences longer than this (default {DEFAULT_MIN_SILENCE}: longer than the pauses "
                            "between words and sentences)")
    sound.add_argument("--silence-pad", type=float, default=DEFAULT_SILENCE_PAD, metavar="SECONDS",
                       help=f"keep this much of a cut silence next to speech (default {DEFAULT_SILENCE_PAD})")
    picture = parser.add_argument_group("picture quality (measured on the face's grey 96x96 crop)")
    picture.add_argument("--no-quality-gate", action="store_true",
                         help="keep blurred, dark, overexposed frames and low-bit-rate videos")
    picture.add_argument("--min-sharpness", type=float, default=DEFAULT_MIN_SHARPNESS, metavar="VARIANCE",
                         help="frames whose variance of the Laplacian is below this are blurred (default "
                              f"{DEFAULT_MIN_SHARPNESS:g}: clean synthetic faces 265-432, Gaussian blur sigma 1 "
                              "41-76, sigma 2 13-25); 0 turns it off")
    picture.add_argument("--min-brightness", type=float, default=DEFAULT_MIN_BRIGHTNESS, metavar="LUMA",
                         help=f"frames whose mean luma is below this are too dark (default {DEFAULT_MIN_BRIGHTNESS:g}"
                              ": clean synthetic faces 151-160, darkened to 0.35 52-56, to 0.25 37-40); 0 turns "
                              "it off")
    picture.add_argument("--max-clipped", type=float, default=DEFAULT_MAX_CLIPPED, metavar="FRACTION",
                         help="frames with more than this fraction of pixels at luma <= 8 or >= 247 are "
                              f"overexposed (default {DEFAULT_MAX_CLIPPED:g}: clean synthetic faces 0.014 at most, "
                              "brightened 1.5 times 0.43-0.53); 1 turns it off")
    picture.add_argument("--min-bits-per-pixel", type=float, default=DEFAULT_MIN_BITS_PER_PIXEL, metavar="BITS",
                         help="drop a whole video whose video stream has fewer bits per pixel per frame "
                              f"(default {DEFAULT_MIN_BITS_PER_PIXEL:g}: the synthetic clip in x264 measured 0.169 "
                              "at CRF 18, 0.043 at CRF 35, 0.019 at CRF 45; 1080p25 at 4 Mbit/s is 0.077); 0 "
                              "turns it off")


def cleaning_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~.prepare.Cleaning` the parsed arguments ask for (InputError for a value out of range)."""
    from anchorcast_plugins.engines.wav2lip.training.prepare import Cleaning
    from anchorcast_plugins.engines.wav2lip.training.prepare_quality import QualityGate

    gate = None if args.no_quality_gate else QualityGate(
        min_sharpness=args.min_sharpness, min_brightness=args.min_brightness, max_clipped=args.max_clipped,
        min_bits_per_pixel=args.min_bits_per_pixel)
    return Cleaning(denoise=not args.no_denoise, trim_silence=not args.no_trim_silence,
                    speech_threshold=args.speech_threshold, min_silence=args.min_silence,
                    silence_pad=args.silence_pad, max_speech_loss=args.max_speech_loss, quality=gate,
                    cluster_people=not args.speaker_per_folder)
