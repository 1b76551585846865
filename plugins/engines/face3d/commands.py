"""``anchorcast facemodel import`` and ``export-glb``: progress on the terminal, then a short summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from anchorcast.errors import InputError

from .asset import SHIPPED_ASSET, FaceModel
from .facemodel import import_face_model
from .gltf_export import export_glb


def run_facemodel(host: Any, args: argparse.Namespace) -> int:
    del host
    console = Console(stderr=True)
    if args.facemodel_action == "import":
        return _run_import(console, args.folder, args.out, args.identities)
    return _run_export(console, args.out, args.asset or SHIPPED_ASSET, args.sparse)


def _run_import(console: Console, folder: Path, out: Path, identities: int | None) -> int:
    started = time.perf_counter()
    with Progress(TextColumn("[bold]reading[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("OBJ files"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(escape(str(folder)), total=None)
        model = import_face_model(
            folder, identity_limit=identities,
            progress=lambda done, total, name: bar.update(task, completed=done, total=total,
                                                          description=escape(name)))
    try:
        size = model.save(out)
    except OSError as error:
        raise InputError(f"{out}: cannot write there: {error.strerror or error}") from None
    console.print(
        f"[bold]face model[/] {escape(str(out))} ({size / 1e6:.1f} MB)\n"
        f"  vertices     {model.vertex_count} ({model.render_vertex_count} with UV seams split), "
        f"{len(model.triangles)} triangles\n"
        f"  parts        {', '.join(model.part_names)}\n"
        f"  expressions  {len(model.expression_names)}, identity modes {len(model.identity_deltas)} "
        f"(of {model.metadata.get('identity_modes_in_source', '?')}), float16 deltas\n"
        f"  took         {time.perf_counter() - started:.1f} s", highlight=False)
    return 0


def _run_export(console: Console, out: Path, asset: Path, sparse: bool) -> int:
    started = time.perf_counter()
    with console.status(f"writing {escape(str(out))}"):
        summary = export_glb(FaceModel.load(asset), out, sparse=sparse)
    console.print(
        f"[bold]glTF[/] {escape(str(summary.path))} ({summary.size / 1e6:.1f} MB) from {escape(str(asset))}\n"
        f"  mesh         {summary.vertices} vertices, {summary.triangles} triangles, "
        f"{summary.primitives} materials\n"
        f"  targets      {summary.targets} morph targets{' (sparse)' if sparse else ''}, named in "
        f"mesh.extras.targetNames\n"
        f"  took         {time.perf_counter() - started:.1f} s", highlight=False)
    return 0
