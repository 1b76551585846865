"""WHEP (WebRTC-HTTP Egress Protocol, RFC 9725) for the sessions: a browser or any WHEP player watches one.

``POST /v1/sessions/{id}/whep`` with an SDP offer (``Content-Type: application/sdp``) answers ``201 Created``
with the SDP answer, the viewer resource in ``Location`` and the configured ICE servers as ``Link`` headers;
``DELETE`` of that resource hangs up. Candidates are gathered before answering, so no trickle ICE is needed
(``PATCH`` is not offered: 405, as the protocol allows).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response

from anchorcast.server.studio import Studio
from anchorcast_plugins.outputs.webrtc.output import TooManyViewers

SDP = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024


def add_whep_routes(app: FastAPI, studio: Studio, authorized: list[Any],
                    read_body: Callable[[Request], Awaitable[bytes]]) -> None:
    @app.post("/v1/sessions/{session_id}/whep", status_code=201, dependencies=authorized, tags=["watch"],
              response_class=Response, responses={201: {"content": {SDP: {}}}})
    async def whep_offer(session_id: str, request: Request) -> Response:
        """Watch the session over WebRTC: send an SDP offer that receives video (VP8) and audio (Opus)."""
        session = studio.get(session_id)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != SDP:
            raise HTTPException(415, f"send the SDP offer with Content-Type: {SDP}")
        body = await read_body(request)
        if len(body) > MAX_OFFER_BYTES:
            raise HTTPException(413, f"an SDP offer of {len(body)} bytes; at most {MAX_OFFER_BYTES} are accepted")
        offer = body.decode("utf-8", errors="replace")
        if not offer.startswith("v=0"):
            raise HTTPException(400, "the body is not an SDP offer (it must start with v=0)")
        try:
            viewer, answer = await session.webrtc.add_viewer(offer)
        except TooManyViewers as error:
            raise HTTPException(503, str(error)) from None
        except ValueError as error:
            raise HTTPException(400, f"cannot answer this offer: {error}") from None
        location = f"/v1/sessions/{session_id}/whep/{viewer.id}"
        headers = {"Location": location, "ETag": f'"{viewer.id}"'}
        links = [f'<{url}>; rel="ice-server"' for url in session.webrtc.ice_servers if "@" not in url]
        if links:
            headers["Link"] = ", ".join(links)
        return Response(answer, status_code=201, media_type=SDP, headers=headers)

    @app.delete("/v1/sessions/{session_id}/whep/{viewer_id}", status_code=200, dependencies=authorized,
                tags=["watch"])
    async def whep_hang_up(session_id: str, viewer_id: str) -> dict[str, Any]:
        """Hang up a WebRTC viewer."""
        session = studio.get(session_id)
        if not await session.webrtc.remove_viewer(viewer_id):
            raise HTTPException(404, f"session {session_id} has no viewer {viewer_id!r}")
        return {"viewer": viewer_id, "state": "closed"}
