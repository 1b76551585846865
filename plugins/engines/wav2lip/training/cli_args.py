"""Command-line arguments of ``anchorcast train`` (argparse only, so listing commands stays fast; the commands
themselves live in their modules; ``prepare``'s arguments are in :mod:`.prepare_args`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from anchorcast_plugins.engines.wav2lip.training.prepare_args import configure_prepare


def configure_synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DATASET", help="data set folder to write")
    parser.add_argument("--clips", type=int, default=12, help="number of clips (default 12)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each clip (default 3.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sentences (default 0)")
    parser.add_argument("--speakers", type=int, default=2, choices=(1, 2),
                        help="1: the astronaut; 2: also a mirrored, recoloured portrait with another voice")


class SyncNetDefaults:
    """Defaults of ``anchorcast train syncnet`` (kept here, free of torch, so listing commands stays fast;
    :class:`~.syncnet.SyncNetConfig` has the same)."""

    steps = 200
    batch = 16
    lr = 1e-4
    stages = 1
    shift_min = 5
    margin_step = 0.05
    margin_every = 10
    margin_threshold = 0.4
    filter_threshold = 0.5
    min_keep = 0.5
    eval_every = 50
    eval_pairs = 64
    eval_clips = 64
    heldout = 0.2
    save_every = 50
    seed = 0
    device = "auto"


def configure_syncnet(parser: argparse.ArgumentParser) -> None:
    defaults = SyncNetDefaults
    parser.add_argument("--data", type=Path, required=True, metavar="DATASET", help="data set folder")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder to write")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"steps per stage ({defaults.steps})")
    parser.add_argument("--batch", type=int, default=defaults.batch,
                        help=f"samples per step, half in sync ({defaults.batch})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"Adam learning rate ({defaults.lr})")
    parser.add_argument("--stages", type=int, default=defaults.stages, choices=(1, 3),
                        help="1: plain training; 3: all data, filter + growing margin, filtered data")
    parser.add_argument("--shift-min", type=int, default=defaults.shift_min,
                        help=f"off-sync audio is at least this many frames away ({defaults.shift_min})")
    parser.add_argument("--margin-step", type=float, default=defaults.margin_step,
                        help=f"stage 2: margin increase ({defaults.margin_step})")
    parser.add_argument("--margin-every", type=int, default=defaults.margin_every,
                        help=f"stage 2: steps between margin increases ({defaults.margin_every})")
    parser.add_argument("--margin-threshold", type=float, default=defaults.margin_threshold,
                        help=f"stage 2: the margin grows until it passes this ({defaults.margin_threshold})")
    parser.add_argument("--filter-threshold", type=float, default=defaults.filter_threshold,
                        help=f"keep windows the stage-1 expert scores at least this ({defaults.filter_threshold})")
    parser.add_argument("--min-keep", type=float, default=defaults.min_keep,
                        help=f"keep at least this fraction of windows ({defaults.min_keep})")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help=f"evaluate on held-out pairs every N steps ({defaults.eval_every})")
    parser.add_argument("--eval-pairs", type=int, default=defaults.eval_pairs,
                        help=f"held-out pairs to evaluate on ({defaults.eval_pairs})")
    parser.add_argument("--eval-clips", type=int, default=defaults.eval_clips,
                        help="held-out clips in the whole-clip evaluation at the end of each stage "
                             f"({defaults.eval_clips})")
    parser.add_argument("--heldout", type=float, default=defaults.heldout,
                        help=f"fraction of clips held out ({defaults.heldout})")
    parser.add_argument("--save-every", type=int, default=defaults.save_every,
                        help=f"checkpoint every N steps ({defaults.save_every})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed ({defaults.seed})")
    add_common_options(parser, defaults.device)


class GeneratorDefaults:
    """Defaults of ``anchorcast train generator|finetune|gan`` (as :class:`~.generator.GeneratorConfig`)."""

    steps = 300
    batch = 4
    lr = 1e-4
    sync_weight = None
    perceptual_weight = 0.05
    msssim_weight = 0.15
    disc_weight = 0.07
    sync_on_below = 0.75
    eval_every = 50
    eval_windows = 16
    heldout = 0.2
    save_every = 50
    clip_seconds = 4.0
    seed = 0
    device = "auto"
    disc_every = 1
    disc_lr = 1e-4
    disc_floor = 0.6
    shift_min = 5
    eval_pairs = 32


def configure_generator(parser: argparse.ArgumentParser, stage: str) -> None:
    """The options of ``train generator``, ``train finetune`` and ``train gan`` (``stage``)."""
    defaults = GeneratorDefaults
    if stage == "finetune":
        parser.add_argument("--video", type=Path, required=True, metavar="PRESENTER.mp4",
                            help="the presenter reading (prepared into RUN/data)")
        parser.add_argument("--clip-seconds", type=float, default=defaults.clip_seconds,
                            help=f"cut the video into clips of at most this; whole clips are held out "
                                 f"({defaults.clip_seconds})")
    else:
        parser.add_argument("--data", type=Path, required=True, metavar="DATASET", help="data set folder")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder to write")
    parser.add_argument("--expert", required=stage != "finetune", metavar="WEIGHTS",
                        help="the lip-sync expert, frozen (a weights name or file of kind syncnet)"
                             + ("; without it only the L1 and MS-SSIM terms are used" if stage == "finetune" else ""))
    parser.add_argument("--from", dest="init", required=stage != "generator", metavar="WEIGHTS",
                        help="generator weights to start from (a weights name or file)")
    parser.add_argument("--steps", type=int, default=defaults.steps, help=f"training steps ({defaults.steps})")
    parser.add_argument("--batch", type=int, default=defaults.batch,
                        help=f"five-frame windows per step ({defaults.batch})")
    parser.add_argument("--lr", type=float, default=defaults.lr, help=f"Adam learning rate ({defaults.lr})")
    parser.add_argument("--sync-weight", type=float, default=defaults.sync_weight,
                        help="a1, the expert's sync loss (the reference's " + ("0.03" if stage == "gan" else "0.01")
                             + ")")
    parser.add_argument("--perceptual-weight", type=float, default=defaults.perceptual_weight,
                        help=f"a2, the perceptual loss on the expert's face features ({defaults.perceptual_weight})")
    parser.add_argument("--msssim-weight", type=float, default=defaults.msssim_weight,
                        help=f"a3, 1 - MS-SSIM ({defaults.msssim_weight}); L1 takes the rest")
    if stage == "gan":
        parser.add_argument("--disc-weight", type=float, default=defaults.disc_weight,
                            help=f"the adversarial loss from the discriminator ({defaults.disc_weight})")
    parser.add_argument("--sync-on-below", type=float, default=defaults.sync_on_below, metavar="LOSS",
                        help=f"switch the sync term on once the held-out sync loss is below this "
                             f"({defaults.sync_on_below}; inf: from the start)")
    parser.add_argument("--eval-every", type=int, default=defaults.eval_every,
                        help=f"evaluate on held-out windows every N steps ({defaults.eval_every})")
    parser.add_argument("--eval-windows", type=int, default=defaults.eval_windows,
                        help=f"held-out windows to evaluate on ({defaults.eval_windows})")
    parser.add_argument("--heldout", type=float, default=defaults.heldout,
                        help=f"fraction of clips held out ({defaults.heldout})")
    parser.add_argument("--save-every", type=int, default=defaults.save_every,
                        help=f"checkpoint every N steps ({defaults.save_every})")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed ({defaults.seed})")
    if stage != "finetune":
        configure_alternation(parser)
    add_common_options(parser, defaults.device)


def configure_alternation(parser: argparse.ArgumentParser) -> None:
    """``--alternate`` and its options (``train generator`` and ``train gan``)."""
    defaults = GeneratorDefaults
    group = parser.add_argument_group(
        "alternating training", "once the sync term is on, a sync-discriminator step (a trainable copy of the "
        "expert, on real pairs and on the generator's output with shifted audio) follows every --disc-every "
        "generator steps; the frozen original expert still scores the held-out sync")
    group.add_argument("--alternate", action="store_true",
                       help="train the sync discriminator in turn with the generator")
    group.add_argument("--disc-every", type=int, default=defaults.disc_every, metavar="N",
                       help=f"generator steps per sync-discriminator step ({defaults.disc_every})")
    group.add_argument("--disc-lr", type=float, default=defaults.disc_lr,
                       help=f"the sync discriminator's Adam learning rate ({defaults.disc_lr})")
    group.add_argument("--disc-floor", type=float, default=defaults.disc_floor, metavar="ACCURACY",
                       help="below this held-out accuracy on real pairs the sync discriminator is reverted to the "
                            f"expert and its steps stop ({defaults.disc_floor})")
    group.add_argument("--shift-min", type=int, default=defaults.shift_min,
                       help=f"off-sync audio is at least this many frames away ({defaults.shift_min})")
    group.add_argument("--eval-pairs", type=int, default=defaults.eval_pairs,
                       help=f"held-out real pairs for the sync discriminator's accuracy ({defaults.eval_pairs})")


def add_common_options(parser: argparse.ArgumentParser, device: str = "auto") -> None:
    """``--device``, ``--bf16`` and ``--resume``, which every training stage takes."""
    parser.add_argument("--device", default=device, help="auto, cpu, cuda[:N] or mlu[:N] (auto: mlu, cuda, cpu)")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast for the convolutions (faster on AMX/AVX512-BF16 CPUs and recent "
                             "GPUs); weights and optimizer state stay float32")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def configure_train(parser: argparse.ArgumentParser) -> None:
    """``anchorcast train ACTION``: ``prepare``, ``synth``, ``syncnet``, ``generator``, ``finetune``, ``gan``."""
    actions = parser.add_subparsers(dest="train_action", metavar="ACTION", required=True)
    configure_prepare(actions.add_parser(
        "prepare", help="talking-face videos -> a training data set",
        description="Decode talking-face videos, resample them to 25 fps and 16 kHz mono, crop the face of every "
                    "frame to 96x96 and store clips of bounded length, grouped by speaker. Reports what it drops."))
    configure_synth(actions.add_parser(
        "synth", help="a synthetic talking-face data set with known ground truth (no downloads)",
        description="Render the bundled portrait reading sentences with the eSpeak NG voice (the viseme engine, "
                    "mouth driven by phoneme timings) and store it as a training data set."))
    configure_syncnet(actions.add_parser(
        "syncnet", help="train the SyncNet lip-sync expert (optionally the three-stage curriculum)",
        description="Train the lip-sync expert with BCE on the cosine similarity of its audio and face "
                    "embeddings. --stages 3: train on all data; keep the windows it judges in sync; train with "
                    "a growing margin between in-sync and off-sync similarity; train on the kept windows. "
                    "Writes metrics.json, syncnet.safetensors and a resumable training state to --out."))
    configure_generator(actions.add_parser(
        "generator", help="train the Wav2Lip generator against the frozen expert",
        description="Train the generator with a1*L_sync + a2*L_perceptual + a3*L_msssim + (1-a1-a2-a3)*L1, the "
                    "expert frozen; the sync term is switched on once the held-out sync loss falls below "
                    "--sync-on-below. Writes metrics.json, generator.safetensors and a resumable state."), "generator")
    configure_generator(actions.add_parser(
        "finetune", help="fine-tune a generator on a presenter's own reading video (face encoder only)",
        description="Prepare the presenter's video, freeze the audio encoder and the face decoder and train only "
                    "the face (identity) encoder. Reports the mouth jitter against the real video before and "
                    "after."), "finetune")
    configure_coeffs(actions.add_parser(
        "coeffs", help="train the face3d coefficient model (speech -> 53 ARKit weights)",
        description="Train the coefficient model on teacher data sets (`train coeffs-data`) and Live Link Face "
                    "captures: L1 (mouth weighted) plus a velocity term. Writes metrics.json, coeffs.safetensors "
                    "(the engine's weights file) and a resumable state to --out."))
    configure_coeffs_data(actions.add_parser(
        "coeffs-data", help="a teacher data set for `train coeffs`: the project's voices reading a corpus",
        description="Have the piper and eSpeak NG voices read the bundled English and Chinese sentences, resample "
                    "to 16 kHz and store the teacher's 25 fps ARKit coefficients from the phoneme timings, with "
                    "held-out sentences and a held-out voice."))
    configure_generator(actions.add_parser(
        "gan", help="refine a generator with the visual-quality discriminator (expert frozen, or --alternate)",
        description="Train the generator with the adversarial term of the visual-quality discriminator added "
                    "(Adam betas 0.5, 0.999 for both), the expert frozen. Writes generator.safetensors and "
                    "discriminator.safetensors."), "gan")


def configure_coeffs(parser: argparse.ArgumentParser) -> None:
    """``train coeffs``: the face3d coefficient model (implemented in face3d's :mod:`.training`)."""
    parser.add_argument("--data", type=Path, action="append", metavar="TEACHER_SET",
                        help="a teacher data set folder (`train coeffs-data`); may be repeated")
    parser.add_argument("--livelink", type=Path, action="append", metavar="FOLDER",
                        help="a folder of Live Link Face CSV files, each with its WAV beside it; may be repeated")
    parser.add_argument("--out", type=Path, required=True, metavar="RUN", help="run folder to write")
    parser.add_argument("--from", dest="init", default=None, metavar="WEIGHTS",
                        help="coefficient-model weights to start from (e.g. the shipped ones, to fine-tune)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (2000)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop with a checkpoint after this many minutes (continue with --resume)")
    parser.add_argument("--batch", type=int, default=8, help="utterances per step (8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (0.001)")
    parser.add_argument("--crop-seconds", type=float, default=4.0, help="longest stretch of an utterance (4.0)")
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps (100)")
    parser.add_argument("--eval-every", type=int, default=100, help="held-out loss every N steps (100)")
    parser.add_argument("--seed", type=int, default=0, help="seed (0)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")


def configure_coeffs_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="TEACHER_SET", help="data set folder to write")
    parser.add_argument("--sentences", type=int, default=None,
                        help="sentences of each language to speak (default: all of the bundled corpus)")
    parser.add_argument("--languages", default="en,zh", help="corpus languages to speak (en,zh)")


def run_train(host: object, args: argparse.Namespace) -> int:
    """Runs the ``anchorcast train`` action parsed by :func:`configure_train` (imports it only now)."""
    if args.train_action == "prepare":
        from anchorcast_plugins.engines.wav2lip.training.prepare import run_prepare

        return run_prepare(host, args)
    if args.train_action == "synth":
        from anchorcast_plugins.engines.wav2lip.training.synth import run_synth

        return run_synth(host, args)
    if args.train_action == "syncnet":
        from anchorcast_plugins.engines.wav2lip.training.syncnet import run_syncnet

        return run_syncnet(host, args)
    if args.train_action in ("generator", "finetune", "gan"):
        from anchorcast_plugins.engines.wav2lip.training.generator_cli import run_generator

        return run_generator(host, args, args.train_action)
    if args.train_action == "coeffs":
        from anchorcast_plugins.engines.face3d.training import run_coeffs

        return run_coeffs(host, args)
    if args.train_action == "coeffs-data":
        from anchorcast_plugins.engines.face3d.training_data import run_coeffs_data

        return run_coeffs_data(host, args)
    from anchorcast.errors import InputError

    raise InputError(f"unknown train action {args.train_action!r}",
                     hint="use prepare, synth, syncnet, generator, finetune, gan, coeffs or coeffs-data")
