"""A small Python client for the studio server (``anchorcast serve``).

```python
from anchorcast.client import Client

studio = Client("http://127.0.0.1:8800")          # token: $ANCHORCAST_TOKEN or the local server's token file
session = studio.create_session("default", {"engine.use": "viseme"})
studio.say(session, "Good evening. Here is the news.")
for event in studio.events(session):              # JSON events as they air
    if event["type"] == "utterance_ended":
        break
studio.delete_session(session)                    # returns once the outputs are finalised
```

Every call raises :class:`ClientError` (with the server's ``status`` and ``detail``) when the server refuses it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from anchorcast.errors import AnchorcastError
from anchorcast.server.auth import client_token

DEFAULT_URL = "http://127.0.0.1:8800"


class ClientError(AnchorcastError):
    """The server answered with an error (``status`` is its HTTP status) or could not be reached (0)."""

    def __init__(self, status: int, detail: str, *, hint: str | None = None) -> None:
        super().__init__(detail if status == 0 else f"{detail} (HTTP {status})", hint=hint)
        self.status = status
        self.detail = detail


class Client:
    """Talks to one server; thread-safe for separate calls (httpx connection pool)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120.0) -> None:
        self.url = (url or os.environ.get("ANCHORCAST_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or client_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- sessions ------------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def sessions(self) -> list[dict[str, Any]]:
        return self._call("GET", "/v1/sessions")["sessions"]

    def session(self, session: str) -> dict[str, Any]:
        return self._call("GET", f"/v1/sessions/{session}")

    def create_session(self, profile: str | None = None, settings: dict[str, Any] | None = None,
                       session_id: str | None = None) -> str:
        body: dict[str, Any] = {"set": settings or {}}
        if profile:
            body["profile"] = profile
        if session_id:
            body["id"] = session_id
        return self._call("POST", "/v1/sessions", json=body)["id"]

    def delete_session(self, session: str) -> dict[str, Any]:
        return self._call("DELETE", f"/v1/sessions/{session}")

    # --- speech --------------------------------------------------------------------------------------------

    def say(self, session: str, text: str, voice: str | None = None, interrupt: bool = False) -> str:
        body: dict[str, Any] = {"text": text, "interrupt": interrupt}
        if voice:
            body["voice"] = voice
        return self._call("POST", f"/v1/sessions/{session}/say", json=body)["utterance"]

    def play(self, session: str, audio: bytes | Path, interrupt: bool = False) -> str:
        """Sends a WAV file (or its bytes) for the anchor to lip-sync; returns the utterance id."""
        data = Path(audio).read_bytes() if isinstance(audio, Path) else audio
        return self._call("POST", f"/v1/sessions/{session}/audio", content=data,
                          params={"interrupt": str(interrupt).lower()},
                          headers={"Content-Type": "audio/wav"})["utterance"]

    def interrupt(self, session: str) -> list[str]:
        return self._call("POST", f"/v1/sessions/{session}/interrupt")["dropped"]

    def cue(self, session: str, scene: str | None = None, lower_third: str | None = None) -> None:
        self._call("POST", f"/v1/sessions/{session}/cue", json={"scene": scene, "lower_third": lower_third})

    # --- WebSockets ----------------------------------------------------------------------------------------

    def events(self, session: str, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """The session's events as they air, until the session ends (or the iterator is closed)."""
        with self._websocket(f"/v1/sessions/{session}/events") as socket:
            while True:
                try:
                    message = socket.recv(timeout)
                except TimeoutError:
                    return
                except Exception as error:  # closed: the session ended or the server stopped
                    if type(error).__name__.startswith("ConnectionClosed"):
                        return
                    raise
                yield json.loads(message)

    def stream(self, session: str, chunks: Iterable[bytes], rate: int = 16000, channels: int = 1,
               interrupt: bool = False) -> str:
        """Streams raw PCM s16le chunks as one utterance (a remote microphone, a streaming TTS)."""
        path = f"/v1/sessions/{session}/audio?rate={rate}&channels={channels}&interrupt={str(interrupt).lower()}"
        with self._websocket(path) as socket:
            utterance = json.loads(socket.recv())["utterance"]
            for chunk in chunks:
                socket.send(chunk)
            socket.send(json.dumps({"type": "end"}))
            with contextlib.suppress(Exception):  # the server closes once the stream is queued
                socket.recv(30)
        return utterance

    def _websocket(self, path: str) -> Any:
        from websockets.sync.client import connect

        url = "ws" + self.url[len("http"):] + path
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            return connect(url, additional_headers=headers, open_timeout=10)
        except OSError as error:
            raise self._unreachable(error) from None
        except Exception as error:
            status = getattr(getattr(error, "response", None), "status_code", 0)
            body = getattr(getattr(error, "response", None), "body", b"") or b""
            raise ClientError(status, _detail_of(body) or str(error)) from None

    # --- plumbing ------------------------------------------------------------------------------------------

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise self._unreachable(error) from None
        if response.status_code >= 400:
            raise ClientError(response.status_code, _detail_of(response.content) or response.reason_phrase)
        return response.json()

    def _unreachable(self, error: Exception) -> ClientError:
        return ClientError(0, f"no anchorcast server answers at {self.url}: {error}",
                           hint="start one with `anchorcast serve`, or give its address with --url / ANCHORCAST_URL")


def _detail_of(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode(errors="replace")[:200]
    return str(data.get("detail", data)) if isinstance(data, dict) else str(data)
