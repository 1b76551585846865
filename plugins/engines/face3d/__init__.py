"""The 3D face: a morphable head (ICT-FaceKit, MIT) imported into a compact asset and exported as glTF.

Registers the command ``anchorcast facemodel`` (``import DIR``, ``export-glb OUT.glb``). The bundled asset is
``assets/ict_face.npz`` (:mod:`.asset` describes it), made from ICT-FaceKit by :mod:`.facemodel`. Nothing heavy is
imported here: numpy and pygltflib load when a command runs.
"""

from __future__ import annotations

from typing import Any

from anchorcast import hookimpl


@hookimpl
def anchorcast_register_commands(host: Any, register: Any) -> None:
    register("facemodel", _configure_facemodel, _run_facemodel,
             summary="import an ICT-FaceKit head into a face-model asset; export it as glTF")


def _configure_facemodel(parser: Any) -> None:
    from anchorcast_plugins.engines.face3d.cli_args import configure_facemodel

    configure_facemodel(parser)


def _run_facemodel(host: Any, args: Any) -> int:
    from anchorcast_plugins.engines.face3d.commands import run_facemodel

    return run_facemodel(host, args)
