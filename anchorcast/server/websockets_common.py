"""Refusing and closing the server's WebSockets, the same way on every route (events, audio, coefficients)."""

from __future__ import annotations

import contextlib

from fastapi import WebSocket
from fastapi.responses import JSONResponse


async def deny(websocket: WebSocket, status: int, detail: str) -> None:
    """Refuses a WebSocket handshake with an HTTP status and a JSON body where the server can send one."""
    try:
        await websocket.send_denial_response(JSONResponse({"detail": detail}, status_code=status))
    except RuntimeError:  # the server cannot send a denial response: close before accepting (HTTP 403)
        await websocket.close(code=1008, reason=detail[:120])


async def close(websocket: WebSocket, code: int, reason: str) -> None:
    """Closes with ``code`` and ``reason`` (cut to the 123 bytes a close frame holds); quiet when the client
    has closed already."""
    with contextlib.suppress(RuntimeError):
        await websocket.close(code=code, reason=reason[:120])
