"""Clock arithmetic: frames are exact slices of the audio timeline at any rate."""

from __future__ import annotations

from fractions import Fraction

import pytest

from anchorcast.clock import MediaClock

RATES = [(Fraction(25), 16000), (Fraction(30000, 1001), 48000), (Fraction(30), 16000), (Fraction(24), 22050),
         (Fraction(50), 44100)]


@pytest.mark.parametrize(("fps", "rate"), RATES)
def test_frames_tile_the_timeline_without_gaps_or_overlap(fps: Fraction, rate: int) -> None:
    clock = MediaClock(fps, rate)
    frames = 10_000
    assert clock.frame_start(0) == 0
    assert all(clock.frame_end(i) == clock.frame_start(i + 1) for i in range(frames))
    # no drift: after N frames exactly N/fps seconds of samples have passed (to within one sample)
    assert abs(clock.frame_start(frames) - frames * rate / fps) < 1
    sizes = {clock.frame_samples(i) for i in range(frames)}
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("fps", "rate"), RATES)
def test_sample_to_frame_and_frames_covering(fps: Fraction, rate: int) -> None:
    clock = MediaClock(fps, rate)
    for sample in range(0, 200_000, 997):
        index = clock.frame_at_sample(sample)
        assert clock.frame_start(index) <= sample < clock.frame_end(index)
    for samples in range(1, 100_000, 1231):
        count = clock.frames_covering(samples)
        assert clock.frame_start(count) >= samples > clock.frame_start(count - 1)
    assert clock.frames_covering(0) == 0


def test_frame_at_25_fps_16_khz() -> None:
    clock = MediaClock(Fraction(25), 16000)
    assert (clock.frame_start(3), clock.frame_end(3)) == (1920, 2560)
    assert clock.frame_pts(3) == pytest.approx(0.12)
    assert clock.frames_covering(16000) == 25 and clock.frames_covering(16001) == 26


def test_ntsc_rate_has_uneven_frames_but_exact_totals() -> None:
    clock = MediaClock(Fraction(30000, 1001), 48000)
    assert {clock.frame_samples(i) for i in range(5)} == {1601, 1602}
    assert clock.frame_start(30000) == 48000 * 1001  # 1001 seconds exactly


def test_invalid_clock() -> None:
    with pytest.raises(ValueError):
        MediaClock(Fraction(0), 16000)
