"""anchorcast: a real-time virtual anchor for broadcast.

Plugins mark their hook implementations with :data:`hookimpl`; see :mod:`anchorcast.hookspecs`.
"""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

PROJECT_NAME = "anchorcast"
"""The pluggy project name and the entry-point group every plugin registers under."""

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl", "hookspec"]
