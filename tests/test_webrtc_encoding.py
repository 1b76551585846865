"""The WebRTC output's sound: Opus packets that leave evenly as they play, on a timeline without gaps (a
browser syncs its picture to this audio, so audio jitter or a gap would delay the picture from then on)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from anchorcast.media import AudioChunk, StreamFormat
from anchorcast_plugins.outputs.webrtc.encoding import OPUS_FRAME_S, OPUS_RATE, AudioEncoder

FMT = StreamFormat(320, 180, Fraction(25), 16000)
PER_FRAME = 640  # samples of 16 kHz audio under one frame at 25 fps
PACKET = round(OPUS_RATE * OPUS_FRAME_S)


def chunk(index: int, rng: np.random.Generator) -> AudioChunk:
    return AudioChunk((0.1 * rng.standard_normal(PER_FRAME)).astype(np.float32), 16000, index * PER_FRAME)


def test_each_frames_sound_leaves_as_two_packets_20_ms_apart_none_held_back() -> None:
    rng = np.random.default_rng(1)
    encoder = AudioEncoder(FMT)
    timestamps = []
    for index in range(10):
        packets = encoder.encode(chunk(index, rng))
        assert [offset for offset, _ in packets] == [0.0, OPUS_FRAME_S], index
        timestamps += [packet.pts for _, packet in packets]
    assert np.all(np.diff(timestamps) == PACKET)


def test_a_gap_is_filled_with_silence_and_an_overlap_trimmed_so_the_timeline_stays_whole() -> None:
    rng = np.random.default_rng(2)
    encoder = AudioEncoder(FMT)
    timestamps = []
    for index in (0, 1, 2, 5, 5, 6):  # frames 3 and 4 never came; frame 5 came twice
        packets = encoder.encode(chunk(index, rng))
        timestamps += [packet.pts for _, packet in packets]
        if index == 5 and len(packets) > 2:
            # the filled gap goes out at once, the frame's own sound as it plays
            assert [offset for offset, _ in packets] == [0.0] * (len(packets) - 1) + [OPUS_FRAME_S]
    assert encoder.filled_s == 2 * PER_FRAME / 16000
    assert len(timestamps) == 2 * 7 and np.all(np.diff(timestamps) == PACKET)  # frames 0-6, no more, no less
