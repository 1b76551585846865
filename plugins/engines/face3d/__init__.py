"""The 3D face: a morphable head (ICT-FaceKit, MIT), the ``face3d`` lip engine that draws it from speech, and the
``anchorcast facemodel`` command.

The engine (:mod:`.engine`): the coefficient model (:mod:`.coeff_model`) turns speech into 53 ARKit expression
weights per frame, and the head (``assets/ict_face.npz``, :mod:`.asset`) is drawn with them by OpenGL
(:mod:`.render`, moderngl on a headless EGL context), with blinks, gaze and a slight head sway (:mod:`.motion`).
The command: ``import DIR`` builds the asset from ICT-FaceKit (:mod:`.facemodel`), ``export-glb OUT.glb`` writes
it as glTF. Nothing heavy is imported here: torch, moderngl, numpy and pygltflib load when a factory or command
runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting

if TYPE_CHECKING:
    from anchorcast.host import Host
    from anchorcast_plugins.engines.face3d.engine import Face3DEngine

SETTINGS: dict[str, Setting] = {
    "weights": Setting(str, None, "coefficient-model checkpoint (safetensors from `anchorcast train coeffs`); "
                       "default: the weights the package ships", kind="file"),
    "identity": Setting(list, None, "the head's shape: coefficients of the face model's identity modes "
                        "(up to 50 numbers, about -2 to 2); default: the mean head"),
    "skin": Setting(str, "#e0ac8c", 'skin colour "#RRGGBB"'),
    "texture": Setting(str, None, "a skin texture image laid out on the face model's UVs, instead of the colour",
                       kind="file"),
    "background": Setting(str, "#101820", 'colour "#RRGGBB" behind the head (the overlay gets the head\'s '
                          "matte and shows it transparent)"),
    "mouth_scale": Setting(float, 1.0, "how far the jaw and lips move: 0 never, 1 as the model says, up to 3",
                           minimum=0.0, maximum=3.0),
    "antialias": Setting(int, 0, "multisampling for smooth edges: 0 off, 2, 4 or 8 samples (on llvmpipe 4 "
                         "costs about 2.5 times the render time: scripts/bench_face3d.py)", choices=(0, 2, 4, 8)),
    "idle_motion": Setting(str, "auto", "blinks, small gaze shifts and head sway: on, off, or auto (on in the "
                           "studio server's sessions, which stay on air)", choices=("auto", "on", "off")),
}


def create(host: Host, settings: dict[str, Any]) -> Face3DEngine:
    from anchorcast_plugins.engines.face3d.engine import create_engine

    return create_engine(settings, on_air=getattr(host, "session", None) is not None)


@hookimpl
def anchorcast_register_engines(host: Host, register: Any) -> None:
    register("face3d", create, settings=SETTINGS,
             summary="a 3D head (ICT-FaceKit) whose 53 expressions follow speech (a Transformer), drawn by OpenGL")


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
