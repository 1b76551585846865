"""One WebRTC viewer: an aiortc peer connection sending the session's shared packets, on the server's event loop.

A viewer's tracks hand aiortc the packets the session encoded once (:mod:`.encoding`). A viewer that cannot keep
up loses its backlog and waits for the next keyframe (it never holds the session or other viewers back); one whose
connection fails, closes, or never connects within :data:`CONNECT_TIMEOUT_S` is hung up and forgotten.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

from anchorcast_plugins.outputs.webrtc.encoding import Layout

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 15.0
VIDEO_BACKLOG = 12
"""Video packets a viewer may fall behind (about half a second) before its backlog is dropped."""
AUDIO_BACKLOG = 50


class PacketTrack(MediaStreamTrack):
    """A track whose ``recv`` returns packets already encoded for every viewer."""

    def __init__(self, kind: str, backlog: int) -> None:
        super().__init__()
        self.kind = kind
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue()
        self._backlog = backlog
        self.waiting_for_keyframe = kind == "video"
        self.sent = 0
        self.dropped = 0

    def offer(self, packet: av.Packet, keyframe: bool = False) -> bool:
        """Queues a packet; False when the viewer had fallen behind and needs a keyframe to go on."""
        if self.readyState != "live":
            return True
        if self.kind == "video":
            if self.waiting_for_keyframe and not keyframe:
                return False
            self.waiting_for_keyframe = False
        if self._queue.qsize() >= self._backlog:
            self.dropped += self._queue.qsize()
            while not self._queue.empty():
                self._queue.get_nowait()
            if self.kind == "video":  # a gap in a video stream: nothing decodes until the next keyframe
                self.waiting_for_keyframe = True
                return keyframe
        self._queue.put_nowait(packet)
        return True

    async def recv(self) -> av.Packet:  # type: ignore[override]
        packet = await self._queue.get()
        if packet is None or self.readyState != "live":
            raise MediaStreamError
        self.sent += 1
        return packet

    def stop(self) -> None:
        super().stop()
        self._queue.put_nowait(None)


def include_loopback_candidates() -> None:
    """Offer 127.0.0.1 as an ICE candidate too (aioice leaves loopback out): a server bound to loopback serves
    browsers on this machine, which must reach it even where no network interface is up."""
    import aioice.ice

    original = aioice.ice.get_host_addresses
    if getattr(original, "with_loopback", False):
        return

    def with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        addresses = original(use_ipv4, use_ipv6)
        return [*addresses, "127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses

    with_loopback.with_loopback = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = with_loopback


def configuration(ice_servers: list[str]) -> RTCConfiguration:
    """Host candidates only unless ICE servers are given (``stun:host:port``, ``turn:user:password@host:port``).
    An empty list matters: aiortc uses a public STUN server when it is given none."""
    servers = []
    for url in ice_servers:
        scheme, _, rest = url.partition(":")
        if scheme in ("turn", "turns") and "@" in rest:
            credentials, _, address = rest.rpartition("@")
            user, _, password = credentials.partition(":")
            servers.append(RTCIceServer(f"{scheme}:{address}", username=user, credential=password))
        else:
            servers.append(RTCIceServer(url))
    return RTCConfiguration(iceServers=servers)


class Viewer:
    """A browser (or any WHEP client) watching one session."""

    def __init__(self, ice_servers: list[str], on_closed: Callable[[Viewer], None],
                 on_keyframe_wanted: Callable[[], None], layout: Layout) -> None:
        self.id = secrets.token_hex(8)
        self.layout = layout
        self.created = time.monotonic()
        self.pc = RTCPeerConnection(configuration(ice_servers))
        self.video = PacketTrack("video", VIDEO_BACKLOG)
        self.audio = PacketTrack("audio", AUDIO_BACKLOG)
        self.closed = False
        self._on_closed = on_closed
        self._on_keyframe_wanted = on_keyframe_wanted
        self._watchdog: asyncio.Task[None] | None = None
        self.pc.on("connectionstatechange", self._state_changed)

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    async def answer(self, offer_sdp: str) -> str:
        """Takes the viewer's SDP offer (it must receive video and audio) and returns the answer, with every
        host candidate gathered (no trickle ICE needed)."""
        await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        kinds = {t.kind: t for t in self.pc.getTransceivers()}
        if "video" not in kinds:
            raise ValueError("the offer has no video: a WHEP viewer offers to receive video (and audio)")
        for kind, track in (("video", self.video), ("audio", self.audio)):
            if kind not in kinds:
                continue
            sender = self.pc.addTrack(track)
            transceiver = next(t for t in self.pc.getTransceivers() if t.sender is sender)
            codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs
                      if c.mimeType.lower() in ("video/vp8", "audio/opus")]
            transceiver.setCodecPreferences(codecs)
            if kind == "video":
                # A PLI or FIR from the viewer: the shared encoder makes the next frame a keyframe.
                transceiver.sender._send_keyframe = self._keyframe_wanted  # type: ignore[method-assign]
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        self._watchdog = asyncio.ensure_future(self._hang_up_unless_connected())
        return str(self.pc.localDescription.sdp)

    def _keyframe_wanted(self) -> None:
        self.video.waiting_for_keyframe = True
        self._on_keyframe_wanted()

    def offer(self, kind: str, packet: av.Packet, keyframe: bool = False) -> None:
        if self.closed:
            return
        track = self.video if kind == "video" else self.audio
        if not track.offer(packet, keyframe):
            self._on_keyframe_wanted()

    async def _hang_up_unless_connected(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if self.state != "connected" and not self.closed:
            log.info("webrtc viewer %s did not connect within %.0f s: hung up", self.id, CONNECT_TIMEOUT_S)
            await self.close()

    async def _state_changed(self) -> None:
        if self.state in ("failed", "closed") and not self.closed:
            log.info("webrtc viewer %s: connection %s", self.id, self.state)
            await self.close()

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._watchdog is not None and self._watchdog is not asyncio.current_task():
            self._watchdog.cancel()
        self.video.stop()
        self.audio.stop()
        try:
            await self.pc.close()
        finally:
            self._on_closed(self)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "layout": self.layout.name, "seconds": round(time.monotonic() - self.created, 1),
                "video_packets": self.video.sent, "audio_packets": self.audio.sent,
                "dropped_packets": self.video.dropped + self.audio.dropped}
