"""Errors that reach the user as one clear message and a non-zero exit, never a traceback."""

from __future__ import annotations


class AnchorcastError(Exception):
    """A user-facing problem: bad input, a missing file, an unavailable component.

    The CLI prints ``str(error)`` (and ``hint`` when given) and exits with ``exit_code``.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


class ProfileError(AnchorcastError):
    """A profile is malformed: names the file and the key."""

    exit_code = 2


class PluginError(AnchorcastError):
    """A plugin failed to load or register a component."""


class InputError(AnchorcastError):
    """A script, audio file or image given to a component cannot be used."""
