"""The ``obs`` output's connection to OBS (see :mod:`.obs_control`): one identified obs-websocket 5 connection
(obsws-python's ``ObsClient`` underneath) with typed errors, and the idempotent set-up of the anchor's scene.

obsws-python and websocket-client are imported when a connection is made, never at import.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

from anchorcast.errors import AnchorcastError, InputError

if TYPE_CHECKING:
    from anchorcast_plugins.outputs.obs_control import ObsSettings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
"""For the TCP connect, the websocket upgrade and every request: a hung OBS must not hang the worker."""

MEDIA_KIND = "ffmpeg_source"
TEXT_KIND = "text_ft2_source_v2"
BROWSER_KIND = "browser_source"
NO_BROWSER_SOURCE = (
    "this OBS has no Browser Source (builds without CEF leave it out, Debian's among them): the overlay was not "
    "added. Install OBS from obsproject.com, Flathub or the OBS PPA, or add the overlay address as a Browser "
    "Source by hand in an OBS that has one"
)
BROWSER_CSS = "body { background-color: rgba(0, 0, 0, 0); margin: 0px auto; overflow: hidden; }"
"""OBS's own default for a Browser Source: a transparent page."""

# obs-websocket 5 WebSocketCloseCode and RequestStatus values
CLOSE_AUTHENTICATION_FAILED = 4009
CLOSE_UNSUPPORTED_RPC_VERSION = 4010
STATUS_RESOURCE_NOT_FOUND = 600

# OBS alignment flags: centre is 0
ALIGN_LEFT, ALIGN_TOP, ALIGN_BOTTOM = 1, 4, 8


# --- one connection ------------------------------------------------------------------------------------------


class ObsUnreachable(AnchorcastError):
    """OBS cannot be reached now; trying again later may work."""


class ObsRequestError(Exception):
    """OBS answered a request with an error status."""

    def __init__(self, request: str, code: int, comment: str) -> None:
        super().__init__(f"{request} failed (code {code}){': ' + comment if comment else ''}")
        self.request, self.code, self.comment = request, code, comment


class _ConnectionLost(Exception):
    """The websocket broke in the middle of a request."""


def _quiet_obsws_logging() -> None:
    # obsws-python's client logs a traceback for every refused connection: a retry loop would flood the log.
    # This plugin reports connection problems itself, once each. (It never hands obsws-python the password,
    # which that client would also log.)
    logging.getLogger("obsws_python.baseclient.ObsClient").setLevel(logging.CRITICAL)


def _auth_string(password: str, salt: str, challenge: str) -> str:
    """obs-websocket 5's challenge response: base64(sha256(base64(sha256(password + salt)) + challenge))."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest())
    return base64.b64encode(hashlib.sha256(secret + challenge.encode()).digest()).decode()


class ObsSession:
    """An identified obs-websocket 5 connection (obsws-python's ``ObsClient`` underneath) with typed errors."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(cls, settings: ObsSettings, password: str | None) -> ObsSession:
        """Connects and identifies. Raises :class:`ObsUnreachable` (worth retrying) or
        :class:`~anchorcast.errors.InputError` (a wrong or missing password: retrying cannot help)."""
        import websocket
        from obsws_python.baseclient import ObsClient

        _quiet_obsws_logging()
        where = f"OBS at {settings.url}"
        try:
            client = ObsClient(host=settings.host, port=settings.port, password="", timeout=CONNECT_TIMEOUT_S)
        except ConnectionRefusedError:
            raise ObsUnreachable(
                f"{where} is not reachable (connection refused): OBS is not running or its WebSocket server is off",
                hint="start OBS and enable Tools > WebSocket Server Settings > Enable WebSocket server "
                f"(port {settings.port})",
            ) from None
        except (TimeoutError, websocket.WebSocketTimeoutException):
            raise ObsUnreachable(f"{where} did not answer within {CONNECT_TIMEOUT_S:.0f} s") from None
        except websocket.WebSocketBadStatusException as error:
            raise ObsUnreachable(
                f"{where}: something else listens there (HTTP status {error.status_code}, not obs-websocket)"
            ) from None
        except (OSError, ValueError, websocket.WebSocketException) as error:
            raise ObsUnreachable(
                f"{where} is not reachable: {getattr(error, 'strerror', None) or error}"
            ) from None
        session = cls(client)
        try:
            session._identify(settings, password)
        except BaseException:
            session.close()
            raise
        return session

    def _identify(self, settings: ObsSettings, password: str | None) -> None:
        import websocket

        where = f"OBS at {settings.url}"
        hello = self._client.server_hello
        if not isinstance(hello, dict) or hello.get("op") != 0:
            raise ObsUnreachable(f"{where} did not greet like obs-websocket 5 (OBS 28 or newer is needed)")
        payload: dict[str, Any] = {"op": 1, "d": {"rpcVersion": 1, "eventSubscriptions": 0}}
        challenge = hello.get("d", {}).get("authentication")
        if challenge:
            if not password:
                source = (
                    f"the environment variable {settings.password_env} is not set"
                    if settings.password_env
                    else "password_env is empty"
                )
                raise InputError(
                    f"{where} asks for a password, but {source}",
                    hint=f"export {settings.password_env or 'OBS_WEBSOCKET_PASSWORD'}=... with the password from "
                    "OBS's Tools > WebSocket Server Settings",
                )
            payload["d"]["authentication"] = _auth_string(password, challenge["salt"], challenge["challenge"])
        try:
            ws = self._client.ws
            ws.send(json.dumps(payload))
            opcode, data = ws.recv_data()
        except (OSError, websocket.WebSocketException) as error:
            raise ObsUnreachable(f"{where} dropped the connection while identifying: {error}") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            reason = data[2:].decode(errors="replace")
            if code == CLOSE_AUTHENTICATION_FAILED:
                raise InputError(
                    f"OBS rejected the password (close code 4009) from the environment variable "
                    f"{settings.password_env} ({where})",
                    hint="use the password shown in OBS's Tools > WebSocket Server Settings; anchorcast will not "
                    "retry with the same password",
                )
            if code == CLOSE_UNSUPPORTED_RPC_VERSION:
                raise InputError(f"{where} does not speak obs-websocket RPC version 1: {reason}")
            raise ObsUnreachable(f"{where} closed the connection while identifying (code {code}: {reason})")
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or reply.get("op") != 2:
            raise ObsUnreachable(f"{where} did not confirm the identification: {str(data)[:120]}")

    def request(self, kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; its response data (empty when none). Raises :class:`ObsRequestError` when OBS says no
        and :class:`_ConnectionLost` when the connection is gone."""
        try:
            reply = self._client.req(kind, data)
        except Exception as error:  # socket and websocket errors, obsws-python's timeout, EOF (an empty reply)
            raise _ConnectionLost(f"{kind}: {type(error).__name__}: {error}") from None
        if not isinstance(reply, dict) or "requestStatus" not in reply:
            raise _ConnectionLost(f"{kind}: unexpected reply {str(reply)[:120]}")
        status = reply["requestStatus"]
        if not status.get("result"):
            raise ObsRequestError(kind, int(status.get("code", 0)), str(status.get("comment") or ""))
        return reply.get("responseData") or {}

    def abort(self) -> None:
        """Drops the connection at once, from any thread: a request waiting on it (a worker stuck on a hung OBS)
        fails at once. The socket itself is released by :meth:`close`, on the thread that uses it."""
        sock = getattr(getattr(self._client, "ws", None), "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile: nothing left to drop
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        ws = self._client.ws
        try:
            ws.close(timeout=1)
        except Exception:  # already broken: nothing left to close
            log.debug("closing the OBS websocket failed", exc_info=True)
        finally:
            with contextlib.suppress(Exception):
                ws.shutdown()  # the socket, even when close() returned early (a connection it thought was gone)


# --- the anchor's scene ------------------------------------------------------------------------------------


def ensure_anchor_scene(session: ObsSession, settings: ObsSettings) -> None:
    """Makes sure OBS has the anchor's scene with its sources, creating only what is missing and reusing inputs
    of the same names (added to the scene when they are elsewhere). Safe to repeat: nothing is duplicated.

    Raises :class:`~anchorcast.errors.InputError` when OBS refuses, e.g. a name is taken by a source of the wrong
    kind."""
    try:
        _ensure(session, settings)
    except ObsRequestError as error:
        raise InputError(
            f"OBS refused to set up the anchor's scene {settings.scene!r}: {error}",
            hint="a source with one of the obs output's names may already exist with another kind: rename it in "
            "OBS or change scene / media_source / caption_source / lower_third_source",
        ) from None


def _ensure(session: ObsSession, settings: ObsSettings) -> None:
    video = session.request("GetVideoSettings")
    width, height = float(video.get("baseWidth") or 1920), float(video.get("baseHeight") or 1080)
    scenes = {scene["sceneName"] for scene in session.request("GetSceneList").get("scenes", [])}
    if settings.scene not in scenes:
        session.request("CreateScene", {"sceneName": settings.scene})
    inputs = {item["inputName"]: item["inputKind"] for item in session.request("GetInputList").get("inputs", [])}
    fill = {
        "positionX": 0.0, "positionY": 0.0, "alignment": ALIGN_LEFT | ALIGN_TOP,
        "boundsType": "OBS_BOUNDS_SCALE_INNER", "boundsAlignment": 0, "boundsWidth": width,
        "boundsHeight": height,
    }  # fmt: skip

    text_style = {"outline": True, "drop_shadow": False, "antialiasing": True}
    wanted: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []  # name, kind, settings, transform
    if settings.media_url:
        media = {
            "is_local_file": False, "input": settings.media_url, "restart_on_activate": False,
            "close_when_inactive": False, "clear_on_media_end": False, "buffering_mb": 1,
            "reconnect_delay_sec": 2, "hw_decode": False, "looping": False,
        }  # fmt: skip
        wanted.append((settings.media_source, MEDIA_KIND, media, fill))
    browser = browser_source_settings(settings)
    if browser is not None:
        kinds = session.request("GetInputKindList", {"unversioned": True}).get("inputKinds", [])
        if BROWSER_KIND in kinds or inputs.get(settings.browser_source_name) == BROWSER_KIND:
            wanted.append((settings.browser_source_name, BROWSER_KIND, browser, fill))
        else:
            log.warning("%s: %s", NO_BROWSER_SOURCE, settings.overlay_url)
    lower_third = {
        "text": settings.lower_third, **text_style,
        "font": {"face": settings.font, "size": max(12, round(height / 13)), "style": "Regular", "flags": 0},
    }  # fmt: skip
    wanted.append((settings.lower_third_source, TEXT_KIND, lower_third, {
        "positionX": width * 0.05, "positionY": height * 0.80, "alignment": ALIGN_LEFT | ALIGN_BOTTOM,
    }))  # fmt: skip
    captions = {
        "text": "", **text_style, "word_wrap": True, "custom_width": round(width * 0.9),
        "font": {"face": settings.font, "size": max(12, round(height / 16)), "style": "Regular", "flags": 0},
    }  # fmt: skip
    wanted.append((settings.caption_source, TEXT_KIND, captions, {
        "positionX": width / 2, "positionY": height * 0.95, "alignment": ALIGN_BOTTOM,
    }))  # fmt: skip

    for name, kind, input_settings, transform in wanted:
        existing = inputs.get(name)
        if existing is None:
            created = session.request("CreateInput", {
                "sceneName": settings.scene, "inputName": name, "inputKind": kind,
                "inputSettings": input_settings, "sceneItemEnabled": True,
            })  # fmt: skip
            _place(session, settings.scene, int(created["sceneItemId"]), transform)
            continue
        if kind == TEXT_KIND and not existing.startswith("text_"):
            raise InputError(
                f"OBS already has a source named {name!r} of kind {existing!r}; captions need a text source",
                hint="rename that source in OBS, or set caption_source / lower_third_source to another name",
            )
        if existing == kind and kind in (MEDIA_KIND, BROWSER_KIND):
            update = {"is_local_file": False, "input": settings.media_url} if kind == MEDIA_KIND else input_settings
            session.request("SetInputSettings", {"inputName": name, "inputSettings": update, "overlay": True})
        elif kind in (MEDIA_KIND, BROWSER_KIND):
            log.info("OBS source %r is a %s, not a %s: left as it is", name, existing, kind)
        try:
            session.request("GetSceneItemId", {"sceneName": settings.scene, "sourceName": name})
        except ObsRequestError as error:
            if error.code != STATUS_RESOURCE_NOT_FOUND:
                raise
            added = session.request("CreateSceneItem", {
                "sceneName": settings.scene, "sourceName": name, "sceneItemEnabled": True,
            })  # fmt: skip
            _place(session, settings.scene, int(added["sceneItemId"]), transform)
    if settings.lower_third and settings.lower_third_source in inputs:
        session.request("SetInputSettings", {
            "inputName": settings.lower_third_source, "inputSettings": {"text": settings.lower_third},
            "overlay": True,
        })  # fmt: skip
    missing = set(settings.switch_on_speech.values()) - scenes - {settings.scene}
    if missing:
        log.warning(
            "OBS has no scene named %s (switch_on_speech): switches to it are skipped",
            ", ".join(repr(s) for s in sorted(missing)),
        )


def browser_source_settings(settings: ObsSettings) -> dict[str, Any] | None:
    """What the Browser Source showing the overlay is set to (obs-browser's keys), or None when the profile
    does not ask for one. Its audio is controlled in OBS, like any source's."""
    if not settings.browser_source:
        return None
    return {
        "is_local_file": False, "url": settings.overlay_url, "width": settings.overlay_width,
        "height": settings.overlay_height, "css": BROWSER_CSS, "reroute_audio": True, "shutdown": False,
        "restart_when_active": False, "fps_custom": False,
    }  # fmt: skip


def _place(session: ObsSession, scene: str, item: int, transform: dict[str, Any]) -> None:
    session.request(
        "SetSceneItemTransform", {"sceneName": scene, "sceneItemId": item, "sceneItemTransform": transform}
    )
