"""``anchorcast serve``: the studio server on uvicorn, with one session of the given profile on air.

The listening socket is bound here (before uvicorn starts) so that a port in use is one clear message and
``--port 0`` takes a free port, printed with the rest.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import shlex
import signal
import socket
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from anchorcast.errors import AnchorcastError

LOOPBACK_NAMES = ("localhost",)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profile", nargs="?", default="default",
                        help="profile of the session put on air at start, and of sessions created without one "
                        "(a bundled name or a file; default: default)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1; another "
                        "address needs ANCHORCAST_TOKEN set)")
    parser.add_argument("--port", type=int, default=8800, help="port (default 8800; 0: any free port)")
    parser.add_argument("--profiles", type=Path, help="folder of further profiles clients may name")
    parser.add_argument("--outputs", type=Path, default=Path("anchorcast-sessions"),
                        help="folder the sessions' files go to, one subfolder each (default: ./anchorcast-sessions)")
    parser.add_argument("--max-sessions", type=int, default=8, help="sessions at most (default 8)")
    parser.add_argument("--no-session", action="store_true", help="start with no session on air")
    parser.add_argument("--separate-engines", action="store_true",
                        help="give every session an engine of its own (default: sessions with the same engine, "
                        "settings and stream format share one, their frames batched together)")
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL",
                        help="STUN/TURN server for WebRTC viewers, stun:HOST:PORT or turn:USER:PASSWORD@HOST:PORT "
                        "(repeatable; also $ANCHORCAST_ICE_SERVERS, comma-separated; default: none, host "
                        "candidates only, enough on a LAN)")
    parser.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow browser pages from this origin to call the API (repeatable; default: none)")
    parser.add_argument("--public-url", metavar="URL",
                        help="the address OBS and browsers reach this server at, for the overlay addresses it "
                        "gives (default: the listen address; http://127.0.0.1:PORT when listening on all)")


def ice_servers(args: argparse.Namespace) -> list[str]:
    from_env = [url.strip() for url in os.environ.get("ANCHORCAST_ICE_SERVERS", "").split(",") if url.strip()]
    servers = [*args.ice_server, *from_env]
    for url in servers:
        if url.split(":", 1)[0] not in ("stun", "stuns", "turn", "turns"):
            raise AnchorcastError(f"ICE server {url!r}: give stun:HOST:PORT or turn:USER:PASSWORD@HOST:PORT")
    return servers


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise AnchorcastError(f"cannot listen on {host}:{port}: {error.strerror or error}",
                              hint="another server may use that port: choose one with --port (0: any free port)") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def command_serve(args: argparse.Namespace, console: Console) -> int:
    import uvicorn

    from anchorcast.server.api import create_app
    from anchorcast.server.auth import TOKEN_ENV, RedactTokens, server_token, token_file
    from anchorcast.server.studio import ServerLimits, Studio, StudioConfig
    from anchorcast.server.whep import overlay_path

    if args.max_sessions < 1:
        raise AnchorcastError("--max-sessions must be at least 1")
    if not is_loopback(args.host) and not __import__("os").environ.get(TOKEN_ENV):
        raise AnchorcastError(f"--host {args.host} listens beyond this machine: set {TOKEN_ENV} to the token "
                              "clients must send (at least 16 characters)")
    profiles_dir, default_profile = args.profiles, args.profile
    given = Path(args.profile).expanduser()
    if given.suffix == ".toml" or given.is_file():
        if not given.is_file():
            raise AnchorcastError(f"{given}: no such profile file")
        profiles_dir = profiles_dir or given.parent
        default_profile = given.stem
        if profiles_dir.resolve() != given.parent.resolve():
            raise AnchorcastError(f"{given} is not in the --profiles folder {profiles_dir}")
    studio = Studio(StudioConfig(profiles_dir=profiles_dir, outputs_dir=args.outputs,
                                 limits=ServerLimits(max_sessions=args.max_sessions),
                                 share_engines=not args.separate_engines, ice_servers=ice_servers(args)))
    if is_loopback(args.host):
        from anchorcast_plugins.outputs.webrtc.viewers import include_loopback_candidates

        include_loopback_candidates()
    token, generated = server_token()
    sock = bind(args.host, args.port)
    try:
        port = sock.getsockname()[1]
        shown_host = f"[{args.host}]" if ":" in args.host else args.host
        url = f"http://{shown_host}:{port}"
        public = (args.public_url or (f"http://127.0.0.1:{port}" if args.host in ("0.0.0.0", "::") else url))

        def overlay_for(session_id: str) -> str:
            return public.rstrip("/") + overlay_path(token, session_id)

        studio.overlay_for = overlay_for
        if not args.no_session:
            console.print(f"starting session [bold]main[/] ({escape(default_profile)}) ...", highlight=False, soft_wrap=True)
            studio.create(default_profile, {}, "main")
        app = create_app(studio, token, default_profile=default_profile, cors_origins=tuple(args.cors_origin))
        _announce(console, url, token, generated, token_file(),
                  None if args.no_session else overlay_for("main"))
        # -v shows uvicorn's access log (tokens in query strings redacted)
        level = "info" if logging.getLogger().getEffectiveLevel() <= logging.INFO else "warning"
        config = uvicorn.Config(app, log_level=level, timeout_graceful_shutdown=3, ws_ping_interval=20)
        redact = RedactTokens()  # on every handler: the WebSocket lines come through uvicorn.error, not .access
        for name in ("", "uvicorn", "uvicorn.error", "uvicorn.access"):
            for handler in logging.getLogger(name).handlers:
                handler.addFilter(redact)
        # uvicorn shuts down on SIGINT or SIGTERM, then raises the signal again: as KeyboardInterrupt, or as
        # _Stopped from this handler (the default one would end the process before the files are finalised)
        previous = signal.signal(signal.SIGTERM, _raise_stopped)
        try:
            uvicorn.Server(config).run(sockets=[sock])
        except (KeyboardInterrupt, _Stopped):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
    finally:
        console.print("stopping: finishing every session's outputs ...", highlight=False)
        studio.close()
        sock.close()
    return 0


class _Stopped(Exception):
    """SIGTERM (a service manager stopping the server)."""


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped()


def _announce(console: Console, url: str, token: str, generated: bool, path: Path, overlay: str | None) -> None:
    console.print(f"[bold]anchorcast studio[/] on [bold]{url}[/]  (API documentation: {url}/docs?token=...)",
                  highlight=False, soft_wrap=True)
    console.print(f"console: {url}/console  (watch and drive the sessions in a browser)", highlight=False,
                  soft_wrap=True)
    if generated:
        console.print(f"token: [bold]{escape(token)}[/]  (saved to {escape(str(path))}, readable only by you; "
                      "set ANCHORCAST_TOKEN to choose your own)", highlight=False, soft_wrap=True)
    else:
        console.print("token: the one in ANCHORCAST_TOKEN", highlight=False, soft_wrap=True)
        token = "$ANCHORCAST_TOKEN"
    if overlay is not None:
        console.print(f"session main is on air; watch it: {url}/v1/sessions/main/preview.mjpeg?token=...",
                      highlight=False, soft_wrap=True)
        console.print(f"overlay for an OBS Browser Source (the anchor on a transparent background, with sound): "
                      f"{escape(overlay)}", highlight=False, soft_wrap=True)
        body = shlex.quote('{"text": "Good evening. Here is the news."}')
        console.print("try:", highlight=False, soft_wrap=True)
        console.print(f'  curl -H "Authorization: Bearer {escape(token)}" -H "Content-Type: application/json" '
                      f"-d {escape(body)} {url}/v1/sessions/main/say", highlight=False, soft_wrap=True)
        console.print('  anchorcast say "Good evening."', highlight=False, soft_wrap=True)
    console.print("Ctrl-C stops the server (every session's files are finalised).", highlight=False, soft_wrap=True)


# --- the client commands ---------------------------------------------------------------------------------


def configure_say(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what the anchor says")
    parser.add_argument("--session", help="session id (default: the only session, or main)")
    parser.add_argument("--voice", help="another voice for this utterance: NAME or NAME:VOICE")
    parser.add_argument("--interrupt", action="store_true", help="drop what is queued and speak now")
    parser.add_argument("--url", help="the server (default: $ANCHORCAST_URL or http://127.0.0.1:8800)")


def configure_sessions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server (default: $ANCHORCAST_URL or http://127.0.0.1:8800)")


def command_say(args: argparse.Namespace, out: Console) -> int:
    from anchorcast.client import Client

    with Client(args.url) as client:
        session = args.session or _only_session(client)
        utterance = client.say(session, args.text, voice=args.voice, interrupt=args.interrupt)
    out.print(f"{session}: queued {utterance}", highlight=False, soft_wrap=True)
    return 0


def command_sessions(args: argparse.Namespace, out: Console) -> int:
    from rich.table import Table

    from anchorcast.client import Client

    with Client(args.url) as client:
        details = [client.session(s["id"]) for s in client.sessions()]
    table = Table(title=f"sessions at {client.url}", header_style="bold")
    for column in ("id", "profile", "state", "queue", "frames", "fps", "overruns", "latency p50/p95 ms"):
        table.add_column(column)
    for detail in details:
        metrics: dict[str, Any] = detail["metrics"]
        latency = "-" if metrics["latency_p50_ms"] is None else \
            f"{metrics['latency_p50_ms']:.0f} / {metrics['latency_p95_ms']:.0f}"
        table.add_row(detail["id"], detail["profile"], detail["state"], str(len(detail["queue"])),
                      str(metrics["frames"]), f"{metrics['fps']:.1f}", str(metrics["overruns"]), latency)
    out.print(table)
    return 0


def _only_session(client: Any) -> str:
    ids = [s["id"] for s in client.sessions()]
    if len(ids) == 1:
        return ids[0]
    if "main" in ids:
        return "main"
    if not ids:
        raise AnchorcastError(f"the server at {client.url} has no session", hint="create one: POST /v1/sessions")
    raise AnchorcastError(f"the server at {client.url} has {len(ids)} sessions: give one with --session "
                          f"({', '.join(ids)})")
