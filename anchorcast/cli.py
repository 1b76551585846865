"""The ``anchorcast`` command: run, plugins, profile check, doctor, and commands registered by plugins.

User mistakes end in one clear message and a non-zero exit (see :class:`~anchorcast.errors.AnchorcastError`).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from anchorcast import __version__
from anchorcast.errors import AnchorcastError

console = Console(stderr=True)
out = Console()

EXIT_INTERRUPTED = 130
EXIT_OUTPUT_FAILED = 3
"""The run went to its end, but an output failed on the way (its message says which and why)."""
OPTIONAL_PARTS_HINT = (
    "optional parts are extras: pip install 'anchorcast[wav2lip]' (torch) or 'anchorcast[live]' "
    "(microphone, virtual camera, OBS, vosk); `anchorcast doctor` shows what is present"
)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _main(argv)
    except AnchorcastError as error:
        console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False)
        if error.hint:
            console.print(f"[dim]hint:[/] {escape(error.hint)}", highlight=False)
        return error.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    # Plugin commands must be known before parsing, but a broken profile must not stop `anchorcast plugins`:
    # load the plugins with the environment's policy for the parser, and again with the profile's for a run.
    from anchorcast.host import Host

    _setup_logging(sum(len(a) - 1 for a in argv if a.startswith("-v") and set(a[1:]) == {"v"})
                   + argv.count("--verbose"))
    host = Host.create()
    commands = {name: c for name, c in host.plugins.commands.items() if name not in _BUILTIN_COMMANDS}
    parser = _parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if args.command in commands:
        try:
            return int(commands[args.command].run(host, args) or 0)
        except ModuleNotFoundError as error:
            raise AnchorcastError(
                f"`anchorcast {args.command}` (plugin {commands[args.command].plugin}) needs a package that is not "
                f"installed: {error}",
                hint=OPTIONAL_PARTS_HINT,
            ) from None
    return int(_BUILTIN_COMMANDS[args.command](host, args) or 0)


def _parser(commands: dict[str, Any]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anchorcast", description="A real-time virtual anchor: a script or a live voice in, a talking anchor out."
    )
    parser.add_argument("--version", action="version", version=f"anchorcast {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run a profile (default: the bundled 'default' profile)")
    run.add_argument("profile", nargs="?", default=None, help="profile file or bundled profile name")
    text = run.add_mutually_exclusive_group()
    text.add_argument("--text", help="read this text instead of the profile's source")
    text.add_argument("--script", type=Path, help="read this script file (.txt or .md)")
    run.add_argument("--out", type=Path, help="write the stream to this MP4 file")
    run.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                     help="override a profile value by its dotted path, e.g. --set stream.fps=30")
    run.add_argument("--metrics", type=Path, help="write the run's metrics as JSON to this file")
    run.add_argument("--remeasure", action="store_true",
                     help="measure the engine's backends again instead of using the stored choice "
                          "(sets engine.remeasure = true)")

    sub.add_parser("plugins", help="list plugins and what they register")

    profile = sub.add_parser("profile", help="profile tools")
    profile_sub = profile.add_subparsers(dest="profile_command", metavar="ACTION", required=True)
    check = profile_sub.add_parser("check", help="validate a profile without running it")
    check.add_argument("file", help="profile file or bundled profile name")
    check.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    profile_sub.add_parser("list", help="list the bundled profiles")

    sub.add_parser("doctor", help="show versions, devices and optional components")

    from anchorcast.server import serve

    serve.configure(sub.add_parser("serve", help="run the studio server: sessions on air, driven over HTTP"))
    serve.configure_say(sub.add_parser("say", help="make a running server's anchor say something"))
    serve.configure_sessions(sub.add_parser("sessions", help="list a running server's sessions"))
    for command in commands.values():
        command.configure(sub.add_parser(command.name, help=command.summary))
    return parser


def _setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


# --- run ---------------------------------------------------------------------------------------------------


def _run_overrides(args: argparse.Namespace, raw: dict[str, Any]) -> list[tuple[str, Any]]:
    from anchorcast.profile import parse_assignment

    overrides = [parse_assignment(text) for text in args.assignments]
    if args.text is not None or args.script is not None:
        raw["source"] = {"use": "script"}
        if args.text is not None:
            overrides.append(("source.text", args.text))
        else:
            overrides.append(("source.path", str(args.script)))
    if args.out is not None:
        outputs = raw.setdefault("outputs", {}) if isinstance(raw.get("outputs", {}), dict) else {}
        label = next((k for k, v in outputs.items() if isinstance(v, dict) and v.get("use", k) == "file"), "file")
        outputs.setdefault(label, {"use": "file"})
        overrides.append((f"outputs.{label}.path", str(args.out.expanduser().resolve())))
    return overrides


def command_run(_: Any, args: argparse.Namespace) -> int:
    from anchorcast import setup_progress
    from anchorcast.console_keys import KeyCommands, RunKeys
    from anchorcast.display import RunDisplay, metrics_table
    from anchorcast.host import Host
    from anchorcast.profile import find_profile, read_toml
    from anchorcast.setup_display import SetupDisplay, left_text

    path = find_profile(args.profile)
    raw = read_toml(path)
    overrides = _run_overrides(args, raw)
    if args.metrics:
        _check_writable(args.metrics, "--metrics")
    host = Host.for_profile(path, raw)
    profile = host.load_profile(path, raw=raw, overrides=overrides)
    if args.remeasure:
        _check_remeasure(host, profile)
        profile = host.load_profile(path, raw=raw, overrides=[*overrides, ("engine.remeasure", True)])
    live = profile.pace == "realtime"
    console.print(f"[bold]anchorcast[/] {path.name}: {profile.source.use} -> "
                  f"{profile.voice.use + ' -> ' if profile.voice else ''}{profile.engine.use} -> "
                  f"{', '.join(stage.use for stage in profile.outputs.values())} "
                  f"({profile.stream.width}x{profile.stream.height} @ {float(profile.stream.fps):g} fps)",
                  highlight=False)
    interrupted = False

    def on_sigint(signum: int, frame: Any) -> None:
        # First Ctrl-C: finish the frame on air and close the outputs properly. Second: stop at once.
        nonlocal interrupted
        if interrupted or host.scheduler is None:
            raise KeyboardInterrupt
        interrupted = True
        host.stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    # keys typed while the run is still opening its components (no scheduler yet) wait for it, not lost
    run_keys = RunKeys(lambda message: console.print(f"[yellow]{escape(message)}[/]", highlight=False))
    keys = KeyCommands(run_keys.bindings())
    try:
        with keys, RunDisplay(console, float(profile.stream.fps), live) as display:
            if keys.active:
                console.print("[dim]keys: i interrupts the anchor, q stops the run[/]")

            def progress(aired: int, total: int | None) -> None:
                display.frame(aired, total)
                run_keys.frame(aired, total)

            setup = SetupDisplay(console, display.progress,
                                 lambda step: {"media": step.unit, "figures": left_text(step)})
            with setup_progress.reporting(setup):
                report = host.run(profile, on_progress=progress, on_metrics=display.metrics,
                                  on_ready=run_keys.ready)
    finally:
        signal.signal(signal.SIGINT, previous)
    console.print(metrics_table(report))
    failed, resumed = report.get("failed_outputs", {}), report.get("resumed_outputs", {})
    for label, stage in profile.outputs.items():
        if label in failed:
            console.print(f"[red]output {escape(label)} failed:[/] {escape(failed[label])}", highlight=False)
            if label in resumed:
                console.print(f"output {escape(label)} came back: {escape(resumed[label])}", highlight=False)
        elif stage.use == "file":
            console.print(f"wrote [bold]{stage.settings['path']}[/] ({report['media_seconds']:.2f} s)", highlight=False)
    if args.metrics:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    if interrupted:
        console.print("[yellow]interrupted: the output was closed cleanly[/]")
        return EXIT_INTERRUPTED
    return EXIT_OUTPUT_FAILED if failed else 0


def _check_remeasure(host: Any, profile: Any) -> None:
    """``--remeasure`` needs an engine that measures its backends (one with a ``remeasure`` setting)."""
    engine = profile.engine.use
    if "remeasure" not in host.plugins.components[("engine", engine)].settings:
        raise AnchorcastError(f"--remeasure: the engine {engine!r} has no backends to measure",
                              hint="it applies to engines that choose a backend by measuring, such as wav2lip")


def _check_writable(path: Path, option: str) -> None:
    """Fails before the run, not after it, when a file the run ends with cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass
    except OSError as error:
        raise AnchorcastError(f"{option} {path}: cannot write there: {error.strerror or error}") from None


# --- plugins, profiles, doctor -----------------------------------------------------------------------------


def command_plugins(host: Any, _: argparse.Namespace) -> int:
    table = Table(title="anchorcast plugins", header_style="bold")
    for column in ("plugin", "version", "registers", "status", "import ms"):
        table.add_column(column, justify="right" if column == "import ms" else "left")
    for record in host.plugins.records:
        status = {"loaded": "[green]loaded[/]", "failed": "[red]failed[/]"}.get(record.status, f"[dim]{record.status}[/]")
        if record.error:
            status += f"\n[red]{record.error}[/]"
        origin = "built-in" if record.builtin else record.distribution
        table.add_row(
            f"{record.name}\n[dim]{origin}[/]", record.version, "\n".join(record.registers) or "-",
            status, f"{record.import_ms:.1f}",
        )
    out.print(table)
    return 0


def command_profile(host: Any, args: argparse.Namespace) -> int:
    from anchorcast.profile import bundled_profiles, find_profile, parse_assignment

    if args.profile_command == "list":
        for name, path in sorted(bundled_profiles().items()):
            out.print(f"{name}\t{path}", highlight=False)
        return 0
    path = find_profile(args.file)
    from anchorcast.host import Host

    checked_host = Host.for_profile(path)
    profile = checked_host.load_profile(path, overrides=[parse_assignment(a) for a in args.assignments])
    stream = profile.stream
    out.print(f"[green]ok[/] {path}: {stream.width}x{stream.height} @ {float(stream.fps):g} fps, "
              f"{stream.sample_rate} Hz", highlight=False)
    for stage in profile.stages:
        out.print(f"  [{stage.table}] {stage.kind} {stage.use}", highlight=False, markup=False)
    return 0


def command_doctor(_: Any, __: argparse.Namespace) -> int:
    from anchorcast.doctor import collect

    table = Table(title="anchorcast doctor", header_style="bold")
    for column in ("section", "component", "status", "detail"):
        table.add_column(column)
    for finding in collect():
        colour = {"ok": "green", "missing": "yellow", "unavailable": "dim"}.get(finding.status, "red")
        table.add_row(finding.section, finding.name, f"[{colour}]{finding.status}[/]", finding.detail)
    out.print(table)
    return 0


def command_serve(_: Any, args: argparse.Namespace) -> int:
    from anchorcast.server.serve import command_serve as serve

    return serve(args, console)


def command_say(_: Any, args: argparse.Namespace) -> int:
    from anchorcast.server.serve import command_say as say

    return say(args, out)


def command_sessions(_: Any, args: argparse.Namespace) -> int:
    from anchorcast.server.serve import command_sessions as sessions

    return sessions(args, out)


_BUILTIN_COMMANDS = {
    "run": command_run,
    "serve": command_serve,
    "say": command_say,
    "sessions": command_sessions,
    "plugins": command_plugins,
    "profile": command_profile,
    "doctor": command_doctor,
}
