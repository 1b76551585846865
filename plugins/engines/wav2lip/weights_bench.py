"""``anchorcast weights bench NAME``: measure every candidate backend for stored weights and an avatar now, show
the figures, and store the choice (:mod:`.decisions`) so that runs with ``backend = "auto"`` and the same
weights, avatar, machine and settings start without measuring."""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from anchorcast.errors import InputError
from anchorcast.setup_display import showing_setup

from .backend_choice import AvatarBackend, backend_for_avatar
from .measurement import BackendReport


def run_bench(out: Console, args: argparse.Namespace) -> int:
    """Runs the command; user mistakes raise InputError (the CLI prints them)."""
    from anchorcast import setup_progress
    from anchorcast.profile import parse_fps

    from .avatar import open_avatar, parse_face_box
    from .checkpoints import build_model
    from .devices import select_device
    from .engine import calibration_mels, throughput_streams
    from .weights_store import resolve_weights, weights_id

    for option, value in (("--backend-batch", args.backend_batch), ("--inference-streams", args.inference_streams)):
        if value is not None and value < 1:
            raise InputError(f"{option} must be at least 1, got {value}")
    if args.fps <= 0:
        raise InputError(f"--fps must be positive, got {args.fps}")
    face_box = parse_face_box(args.face_box) if args.face_box else None
    avatar_path = args.avatar
    if avatar_path is None:
        from anchorcast_plugins.engines.viseme.engine import bundled_avatar

        avatar_path = bundled_avatar()
    console = Console(stderr=True)
    started = time.perf_counter()
    loaded = resolve_weights(args.name, expected_kind="generator")
    weights = weights_id(loaded)
    device = select_device(args.device)
    model = build_model("generator", loaded.state_dict).to(device.device)
    if device.half:
        model = model.half()
    with showing_setup(console), setup_progress.LazyStep("preparing the avatar", unit="frames") as preparing:
        avatar = open_avatar(Path(avatar_path), fps=parse_fps(args.fps),
                             face_box=face_box, progress=preparing)
    # live runs infer with the profile's streams (1 by default), fast ones with one per core: each has its decision
    pacings = [args.inference_streams] if args.inference_streams else sorted({1, throughput_streams()})
    for streams in pacings:
        with showing_setup(console):
            bound = backend_for_avatar(
                model, device, avatar, weights, request="auto", calibration_mels=calibration_mels,
                batch_size=args.backend_batch, streams=streams, remeasure=True, log=lambda _: None,
            )
        try:
            out.print(_table(bound, args.name, avatar.folder))
            label = f"{streams} inference stream{'s' if streams > 1 else ''}"
            out.print(f"stored with the weights: runs with backend = \"auto\", these weights and avatar, on this "
                      f"machine (device {device.device}, batch {args.backend_batch}, {label}) use "
                      f"[bold]{bound.name}[/] without measuring ({time.perf_counter() - started:.1f} s)",
                      highlight=False)
        finally:
            bound.close()
    return 0


def _table(bound: AvatarBackend, name: str, avatar: Path) -> Table:
    table = Table(title=f"backends for weights {name} and avatar {avatar.name}", header_style="bold")
    for column, justify in (("backend", "left"), ("frames/s", "right"), ("PSNR dB", "right"),
                            ("max error", "right"), ("mean error", "right"), ("build/load s", "right"),
                            ("chosen", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for report in bound.reports:
        table.add_row(*_row(report))
    return table


def _row(report: BackendReport) -> list[str]:
    error = report.error
    psnr = "" if error is None else ("exact" if math.isinf(error.psnr_db) else f"{error.psnr_db:.1f}")
    build = "" if report.build is None else f"{report.build.seconds:.1f} ({'loaded' if report.build.cached else 'built'})"
    chosen = "[green]chosen[/]" if report.chosen else f"[dim]{report.skipped or ''}[/]"
    return [
        report.name,
        "" if report.frames_per_s is None else f"{report.frames_per_s:.1f}",
        psnr,
        "" if error is None else f"{error.max_abs:.4f}",
        "" if error is None else f"{error.mean_abs:.5f}",
        build,
        chosen,
    ]
