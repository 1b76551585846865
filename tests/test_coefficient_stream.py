"""The coefficient stream's output on its own: frames tagged as the face3d engine tags them, written from another
thread as the playout thread writes, serialised once on the event loop for every listener; a listener that falls
behind keeps the newest frames; nothing is done while nobody listens."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from fractions import Fraction

import numpy as np

from anchorcast.media import AudioChunk, StreamFormat, VideoFrame, tag_image
from anchorcast.server.coefficients import BACKLOG, HEADER, CoefficientOutput, shipped_expression_names

FMT = StreamFormat(64, 64, Fraction(25), 16000)


def frame(index: int, weights: np.ndarray | None) -> tuple[VideoFrame, AudioChunk]:
    image = np.zeros((64, 64, 3), np.uint8)
    picture = tag_image(image, coefficients=weights) if weights is not None else image
    sound = np.sin(np.arange(640) / 10).astype(np.float32) * 0.5
    return VideoFrame(picture, index, FMT.fps), AudioChunk(sound, 16000, index * 640)


def write_from_a_thread(output: CoefficientOutput, frames: list[tuple[VideoFrame, AudioChunk]]) -> None:
    thread = threading.Thread(target=lambda: [output.write(*item) for item in frames])
    thread.start()
    thread.join()


def test_each_frame_is_serialised_once_for_every_listener() -> None:
    async def run() -> None:
        output = CoefficientOutput()
        output.open(FMT)
        write_from_a_thread(output, [frame(0, np.full(53, 0.5, np.float32))])
        assert output.serialised == 0  # nobody listens: nothing is done
        plain, with_sound = output.listen(False), output.listen(True)
        weights = np.linspace(0, 1, 53, dtype=np.float32)
        write_from_a_thread(output, [frame(k, weights) for k in range(1, 4)] + [frame(4, None)])
        await asyncio.sleep(0.05)
        assert output.serialised == 4
        packets = [await plain.next() for _ in range(4)]
        assert [await with_sound.next() for _ in range(4)] == packets  # the very same objects
        message = json.loads(packets[0].text)
        assert message == {"type": "coefficients", "index": 1, "pts": 0.04,
                           "weights": [round(float(w), 3) for w in weights]}
        assert output.names == shipped_expression_names() and len(output.names) == 53
        kind, version, count, index, pts, audio_pts, rate, samples = HEADER.unpack_from(packets[2].binary)
        assert (kind, version, count, index, rate, samples) == (1, 1, 53, 3, 16000, 640)
        assert pts == audio_pts == 0.12
        np.testing.assert_array_equal(np.frombuffer(packets[2].binary, "<f4", 53, HEADER.size), weights)
        assert packets[3].text is None  # a frame without coefficients: its sound only
        assert struct.unpack_from("<H", packets[3].binary, 2) == (0,)
        output.close()
        assert await plain.next() is None  # the session ended
        output.forget(plain)
        output.forget(with_sound)
        assert output.listeners == 0

    asyncio.run(run())


def test_a_listener_that_falls_behind_keeps_the_newest_frames() -> None:
    async def run() -> None:
        output = CoefficientOutput()
        output.open(FMT)
        slow = output.listen(False)
        write_from_a_thread(output, [frame(k, np.zeros(53, np.float32)) for k in range(BACKLOG + 30)])
        await asyncio.sleep(0.05)
        kept = [(await slow.next()).index for _ in range(BACKLOG)]
        assert kept == list(range(30, BACKLOG + 30)) and slow.dropped == 30

    asyncio.run(run())
