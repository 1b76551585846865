"""WHEP (WebRTC-HTTP Egress Protocol, RFC 9725) for the sessions: a browser or any WHEP player watches one.

``POST /v1/sessions/{id}/whep`` with an SDP offer (``Content-Type: application/sdp``) answers ``201 Created``
with the SDP answer, the viewer resource in ``Location`` and the configured ICE servers as ``Link`` headers;
``DELETE`` of that resource hangs up. Candidates are gathered before answering, so no trickle ICE is needed
(``PATCH`` is not offered: 405, as the protocol allows).

``?layout=packed-alpha`` asks for the overlay's picture (the frame with its alpha beside it, twice as wide), and
``&key=RRGGBB`` also keys out that colour. The bearer token is the server's, or the session's watch key
(:func:`~anchorcast.server.auth.watch_key`, in the overlay URL ``GET /v1/sessions/{id}/overlay`` gives), which
watches that one session and does nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request, Response

from anchorcast.server.auth import bearer, token_matches, watch_key
from anchorcast.server.studio import Studio
from anchorcast_plugins.engines.viseme.portrait import parse_colour
from anchorcast_plugins.outputs.webrtc.encoding import Layout
from anchorcast_plugins.outputs.webrtc.output import TooManyViewers

SDP = "application/sdp"
MAX_OFFER_BYTES = 64 * 1024
LAYOUTS = ("plain", "packed-alpha")


def overlay_path(token: str, session_id: str) -> str:
    """The overlay page's address for a session, with its watch key (what an OBS Browser Source shows)."""
    return f"/overlay/{session_id}?watch={watch_key(token, session_id)}"


def add_whep_routes(app: FastAPI, studio: Studio, token: str, authorized: list[Any],
                    read_body: Callable[[Request], Awaitable[bytes]]) -> None:
    def may_watch(request: Request, session_id: str) -> None:
        offered = bearer(request.headers.get("authorization"))
        if not (token_matches(token, offered) or token_matches(watch_key(token, session_id), offered)):
            raise HTTPException(401, "a valid bearer token is required (the server's token or the session's "
                                "watch key: Authorization: Bearer KEY)", headers={"WWW-Authenticate": "Bearer"})

    @app.post("/v1/sessions/{session_id}/whep", status_code=201, tags=["watch"], response_class=Response,
              responses={201: {"content": {SDP: {}}}})
    async def whep_offer(session_id: str, request: Request,
                         layout: str = Query("plain", description="plain, or packed-alpha (colour | alpha)"),
                         key: str | None = Query(None, description="packed-alpha: also key out this colour, "
                                                 "RRGGBB")) -> Response:
        """Watch the session over WebRTC: send an SDP offer that receives video (VP8) and audio (Opus)."""
        may_watch(request, session_id)
        session = studio.get(session_id)
        if layout not in LAYOUTS:
            raise HTTPException(400, f"layout={layout!r}: use one of {', '.join(LAYOUTS)}")
        colour = parse_colour(f"#{key}") if key is not None else None
        if key is not None and (colour is None or layout != "packed-alpha"):
            raise HTTPException(400, f"key={key!r}: give a colour as six hex digits (e.g. 00ff00) with "
                                "layout=packed-alpha")
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != SDP:
            raise HTTPException(415, f"send the SDP offer with Content-Type: {SDP}")
        body = await read_body(request)
        if len(body) > MAX_OFFER_BYTES:
            raise HTTPException(413, f"an SDP offer of {len(body)} bytes; at most {MAX_OFFER_BYTES} are accepted")
        offer = body.decode("utf-8", errors="replace")
        if not offer.startswith("v=0"):
            raise HTTPException(400, "the body is not an SDP offer (it must start with v=0)")
        try:
            viewer, answer = await session.webrtc.add_viewer(offer, Layout(layout == "packed-alpha", colour))
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

    @app.delete("/v1/sessions/{session_id}/whep/{viewer_id}", status_code=200, tags=["watch"])
    async def whep_hang_up(session_id: str, viewer_id: str, request: Request) -> dict[str, Any]:
        """Hang up a WebRTC viewer."""
        may_watch(request, session_id)
        session = studio.get(session_id)
        if not await session.webrtc.remove_viewer(viewer_id):
            raise HTTPException(404, f"session {session_id} has no viewer {viewer_id!r}")
        return {"viewer": viewer_id, "state": "closed"}

    @app.get("/v1/sessions/{session_id}/overlay", dependencies=authorized, tags=["watch"])
    async def overlay(session_id: str, request: Request) -> dict[str, Any]:
        """The session's overlay page for an OBS Browser Source (the anchor on a transparent background), with
        the watch key it carries: it can watch this session and do nothing else."""
        session = studio.get(session_id)
        path = overlay_path(token, session_id)
        url = studio.overlay_for(session_id) if studio.overlay_for else str(request.base_url).rstrip("/") + path
        return {"url": url, "path": path,
                "avatar3d_path": f"/avatar3d/{session_id}?watch={watch_key(token, session_id)}",
                "watch_key": watch_key(token, session_id),
                "width": session.profile.stream.width, "height": session.profile.stream.height}
