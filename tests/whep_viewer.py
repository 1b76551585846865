"""A WHEP viewer made with aiortc, for the tests: it watches a session as a browser would and keeps what arrives.

Each decoded frame is placed on the sender's wall clock through the RTCP sender reports, the mapping a browser
uses for lip sync (RTP timestamp -> NTP time, one per track), so the tests can ask whether the audio and the
video of the session leave in sync. ``python -m tests.whep_viewer URL TOKEN SESSION`` watches until killed (for
the test of a viewer that vanishes mid-stream).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

CLOCK = {"video": 90000, "audio": 48000}


@dataclass
class Received:
    """One track's decoded frames: RTP time (seconds from the track's first packet), content, arrival."""

    kind: str
    times: list[float] = field(default_factory=list)
    contents: list[Any] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    origin: int | None = None  # the first RTP timestamp (aiortc's receiver counts from it)
    report: tuple[float, int] | None = None  # the latest sender report: (NTP seconds, RTP timestamp)

    def wall_times(self) -> np.ndarray:
        """Each frame's time on the sender's clock (NTP seconds), through the latest sender report."""
        assert self.origin is not None and self.report is not None, f"no sender report for {self.kind} yet"
        ntp, rtp = self.report
        clock = CLOCK[self.kind]
        raw = (self.origin + np.round(np.array(self.times) * clock).astype(np.int64)) & 0xFFFFFFFF
        delta = (raw - rtp + 2**31) % 2**32 - 2**31  # signed distance, across a wrap
        return ntp + delta / clock


class WhepViewer:
    """Watches one session over WHEP until :meth:`hang_up`."""

    def __init__(self, url: str, token: str, session: str, keep_video: bool = True) -> None:
        self.endpoint = f"{url}/v1/sessions/{session}/whep"
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.keep_video = keep_video
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.video = Received("video")
        self.audio = Received("audio")
        self.location: str | None = None
        self.answer = ""
        self._tasks: list[asyncio.Task[None]] = []

    async def connect(self) -> WhepViewer:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.on("track", self._on_track)
        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(self.endpoint, content=self.pc.localDescription.sdp,
                                       headers={**self.headers, "Content-Type": "application/sdp"})
        if response.status_code != 201:
            raise RuntimeError(f"WHEP offer refused: {response.status_code} {response.text}")
        assert response.headers["content-type"].startswith("application/sdp")
        self.location = response.headers["location"]
        self.answer = response.text
        for transceiver in self.pc.getTransceivers():
            self._watch_reports(transceiver.receiver, self.video if transceiver.kind == "video" else self.audio)
        await self.pc.setRemoteDescription(RTCSessionDescription(self.answer, "answer"))
        return self

    def _watch_reports(self, receiver: Any, track: Received) -> None:
        on_rtp, on_rtcp = receiver._handle_rtp_packet, receiver._handle_rtcp_packet

        async def rtp(packet: Any, arrival_time_ms: int) -> None:
            if track.origin is None:
                track.origin = packet.timestamp
            await on_rtp(packet, arrival_time_ms)

        async def rtcp(packet: Any) -> None:
            info = getattr(packet, "sender_info", None)
            if info is not None:
                track.report = (info.ntp_timestamp / 2**32, info.rtp_timestamp)
            await on_rtcp(packet)

        receiver._handle_rtp_packet, receiver._handle_rtcp_packet = rtp, rtcp

    def _on_track(self, track: Any) -> None:
        received = self.video if track.kind == "video" else self.audio
        self._tasks.append(asyncio.ensure_future(self._read(track, received)))

    async def _read(self, track: Any, received: Received) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            received.times.append(float(frame.pts * frame.time_base))
            received.arrivals.append(time.monotonic())
            if received.kind == "video":
                received.contents.append(frame.to_ndarray(format="rgb24") if self.keep_video else None)
            else:
                samples = frame.to_ndarray().astype(np.float32).reshape(-1, len(frame.layout.channels))[:, 0]
                received.contents.append((samples / 32768.0, frame.sample_rate))

    @property
    def state(self) -> str:
        return str(self.pc.connectionState)

    async def wait_connected(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.state != "connected":
            if time.monotonic() > deadline or self.state in ("failed", "closed"):
                raise AssertionError(f"the WebRTC connection is {self.state} after {timeout} s")
            await asyncio.sleep(0.05)

    async def hang_up(self) -> int:
        """DELETE of the viewer resource, then the peer connection closed; returns the DELETE's status."""
        status = 0
        if self.location is not None:
            async with httpx.AsyncClient(timeout=30) as http:
                status = (await http.delete(self.url + self.location, headers=self.headers)).status_code
        await self.pc.close()
        for task in self._tasks:
            task.cancel()
        return status


def audio_rms_under(viewer: WhepViewer, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Per received video frame, the RMS of the audio the sender clock puts under it, and the frames' wall
    times: what a viewer sees against what it hears."""
    video_at = viewer.video.wall_times()
    audio_at = viewer.audio.wall_times()
    chunks = viewer.audio.contents
    rate = chunks[0][1]
    samples = np.concatenate([c[0] for c in chunks])
    sample_at = np.concatenate([t + np.arange(len(c[0])) / rate for t, c in zip(audio_at, chunks, strict=True)])
    order = np.argsort(sample_at)
    samples, sample_at = samples[order], sample_at[order]
    rms = []
    for start in video_at:
        lo, hi = np.searchsorted(sample_at, [start, start + 1 / fps])
        rms.append(float(np.sqrt(np.mean(np.square(samples[lo:hi])))) if hi > lo else 0.0)
    return np.array(rms), video_at


async def _watch_forever(url: str, token: str, session: str) -> None:
    viewer = await WhepViewer(url, token, session, keep_video=False).connect()
    await viewer.wait_connected()
    print("connected", flush=True)
    while True:
        await asyncio.sleep(1)
        print(f"video {len(viewer.video.times)} audio {len(viewer.audio.times)}", flush=True)


if __name__ == "__main__":
    asyncio.run(_watch_forever(*sys.argv[1:4]))
