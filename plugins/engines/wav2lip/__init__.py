"""The Wav2Lip lip engine: checkpoint-compatible models, safe loading, prepared avatars, fast CPU paths.

Registers the engine ``wav2lip`` and the commands ``anchorcast weights`` (import, list) and ``anchorcast avatar``
(prepare). Nothing heavy is imported here: torch and friends load when a command runs or the engine is built.
"""

from __future__ import annotations

from typing import Any

from anchorcast import hookimpl
from anchorcast.components import Setting

SETTINGS = {
    "weights": Setting(str, help="generator weights: a name from `anchorcast weights list`, or a checkpoint path"),
    "avatar": Setting(
        str, None, "a portrait, a video or an avatar folder (default: the bundled portrait)", kind="path"
    ),
    "face_box": Setting(list, None, "[x, y, w, h] in the avatar's pixels, instead of face detection"),
    "device": Setting(str, "auto", "auto (mlu, then cuda, then cpu), cpu, cuda, cuda:N, mlu, mlu:N"),
    "backend": Setting(
        str, "auto", "auto: the fastest whose error against fp32 is within tolerance; or one by name",
        choices=("auto", "torch", "openvino-fp32", "openvino-int8"),
    ),
    "remeasure": Setting(
        bool, False, "measure the backends again instead of using the choice stored with the weights (auto only)"
    ),
    "inference_streams": Setting(int, 1, "OpenVINO inference streams (2: throughput mode)", minimum=1, maximum=4),
    "max_batch": Setting(int, 4, "largest batch the scheduler may form when paced live", minimum=1, maximum=64),
    "throughput_batch": Setting(
        int, 16, "largest batch when rendering as fast as possible (pace = \"fast\"), inferred in sub-batches "
        "of max_batch that overlap with the paste", minimum=1, maximum=256,
    ),
}


@hookimpl
def anchorcast_register_engines(host: Any, register: Any) -> None:
    register("wav2lip", _create_engine, settings=SETTINGS, summary="Wav2Lip generator (+GAN) on mlu/cuda/cpu")


def _create_engine(host: Any, settings: dict[str, Any]) -> Any:
    from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine

    return Wav2LipEngine(settings)


@hookimpl
def anchorcast_register_commands(host: Any, register: Any) -> None:
    register("weights", _configure_weights, _run_weights, summary="import and list Wav2Lip weights")
    register("avatar", _configure_avatar, _run_avatar, summary="prepare an avatar folder from a portrait or video")
    register("train", _configure_train, _run_train,
             summary="prepare data and train a personal anchor; train the face3d coefficient model")


def _configure_weights(parser: Any) -> None:
    from anchorcast_plugins.engines.wav2lip.cli_args import configure_weights

    configure_weights(parser)


def _run_weights(host: Any, args: Any) -> int:
    from anchorcast_plugins.engines.wav2lip.weights_store import run_weights

    return run_weights(host, args)


def _configure_avatar(parser: Any) -> None:
    from anchorcast_plugins.engines.wav2lip.cli_args import configure_avatar

    configure_avatar(parser)


def _run_avatar(host: Any, args: Any) -> int:
    from anchorcast_plugins.engines.wav2lip.avatar import run_avatar

    return run_avatar(host, args)


def _configure_train(parser: Any) -> None:
    from anchorcast_plugins.engines.wav2lip.training.cli_args import configure_train

    configure_train(parser)


def _run_train(host: Any, args: Any) -> int:
    from anchorcast_plugins.engines.wav2lip.training.cli_args import run_train

    return run_train(host, args)
