"""The ``viseme`` lip engine: the default engine, no model weights.

Mouth shapes come from the voice's phoneme timings when known (IPA mapped to a few visemes), otherwise from the
audio around each frame. They are drawn by warping the mouth of a still portrait (the bundled astronaut unless
``avatar`` names another; the face is found with OpenCV's Haar cascade, or given as ``face_box``) or by showing
PNG sprites from a ``sprites`` folder (``closed.png``, ``open.png`` and optionally ``wide.png``, ``round.png``,
``teeth.png``, ``mid.png``).

This module stays light: OpenCV is imported by the factory, through :mod:`anchorcast_plugins.engines.viseme.engine`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting

if TYPE_CHECKING:
    from anchorcast.hookspecs import Register
    from anchorcast.host import Host
    from anchorcast_plugins.engines.viseme.engine import VisemeEngine

SETTINGS: dict[str, Setting] = {
    "avatar": Setting(str, None, "portrait image (PNG/JPEG) with a front-facing face; default: the bundled "
                      "astronaut", kind="file"),
    "sprites": Setting(str, None, "folder of mouth sprites (closed.png, open.png; optional wide.png, round.png, "
                       "teeth.png, mid.png) used instead of a portrait", kind="dir"),
    "face_box": Setting(list, None, "the face as [x, y, w, h] in avatar image pixels, instead of detecting it"),
    "background": Setting(str, "blur", 'behind the fitted portrait: "blur" (the portrait blurred and darkened) '
                          'or a colour "#RRGGBB"'),
    "mouth_scale": Setting(float, 1.0, "how far the mouth opens: 0 never, 1 natural, up to 3",
                           minimum=0.0, maximum=3.0),
    "idle_motion": Setting(str, "auto", "blinks and breathing on a portrait: on, off, or auto (on in the studio "
                           "server's sessions, which stay on air)", choices=("auto", "on", "off")),
}


def create(host: Host, settings: dict[str, Any]) -> VisemeEngine:
    from anchorcast_plugins.engines.viseme.engine import create_engine

    return create_engine(settings, on_air=getattr(host, "session", None) is not None)


@hookimpl
def anchorcast_register_engines(host: Host, register: Register) -> None:
    register("viseme", create, settings=SETTINGS,
             summary="default engine, no weights: a portrait's mouth (or sprites) moved by phonemes or audio")
