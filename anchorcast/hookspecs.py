"""The hooks a plugin may implement. Every hook receives ``host``.

Hooks are for discovery, registration, lifecycle and events, never for per-frame work: registration hooks hand
the host named factories whose objects the scheduler then drives directly (see :mod:`anchorcast.components`).

A minimal plugin module::

    from anchorcast import hookimpl

    @hookimpl
    def anchorcast_register_outputs(host, register):
        register("null", lambda host, settings: NullOutput(), summary="discards everything")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from anchorcast import hookspec

if TYPE_CHECKING:
    from anchorcast.components import Factory, Schema
    from anchorcast.host import Host
    from anchorcast.media import Event


class Register(Protocol):
    """The callback registration hooks receive.

    ``name`` is what profiles write after ``use =``; ``settings`` is the schema of the component's profile
    table; ``summary`` is one line for ``anchorcast plugins``.
    """

    def __call__(self, name: str, factory: Factory, *, settings: Schema | None = None, summary: str = "") -> None: ...


class RegisterCommand(Protocol):
    """The callback for CLI commands: ``configure(parser)`` adds arguments, ``run(host, args)`` returns an exit code."""

    def __call__(
        self,
        name: str,
        configure: Any,
        run: Any,
        *,
        summary: str = "",
    ) -> None: ...


@hookspec
def anchorcast_register_sources(host: Host, register: Register) -> None:
    """Register input sources (script readers, audio files, microphones)."""


@hookspec
def anchorcast_register_voices(host: Host, register: Register) -> None:
    """Register text-to-speech voices."""


@hookspec
def anchorcast_register_engines(host: Host, register: Register) -> None:
    """Register lip engines."""


@hookspec
def anchorcast_register_outputs(host: Host, register: Register) -> None:
    """Register outputs (files, streams, virtual cameras, scene control)."""


@hookspec
def anchorcast_register_commands(host: Host, register: RegisterCommand) -> None:
    """Register extra ``anchorcast`` sub-commands. ``configure(parser: argparse.ArgumentParser)`` adds the
    command's arguments; ``run(host, args: argparse.Namespace) -> int`` runs it."""


@hookspec
def anchorcast_startup(host: Host) -> None:
    """The host has opened every stage of a run and is about to start the clock."""


@hookspec
def anchorcast_shutdown(host: Host) -> None:
    """The run has ended (normally, on an interrupt or on an error); outputs are closed."""


@hookspec
def anchorcast_event(host: Host, event: Event) -> None:
    """Something happened on the media timeline: speech started/ended, a caption, a script cue, an overrun or
    an interrupt (see :mod:`anchorcast.media`). Called from the playout thread when the event's frame airs;
    return quickly and hand slow work (network calls) to a thread of your own."""


@hookspec
def anchorcast_metrics(host: Host, report: dict[str, Any]) -> None:
    """About once a second during a run: the scheduler's metrics (same shape as the ``--metrics`` JSON)."""

