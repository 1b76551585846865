"""The media clock: audio is the master, video frames are slices of it.

Frame ``i`` is shown at ``i / fps`` and carries exactly the samples ``[start(i), start(i + 1))`` with
``start(i) = floor(i * sample_rate / fps)``. All arithmetic is on integers, so no drift accumulates however long
the stream runs, even at rates such as 30000/1001 fps where a frame has no whole number of samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class MediaClock:
    fps: Fraction
    sample_rate: int

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.sample_rate <= 0:
            raise ValueError(f"fps and sample rate must be positive, got {self.fps} and {self.sample_rate}")

    def frame_start(self, index: int) -> int:
        """First sample of frame ``index``."""
        return (index * self.sample_rate * self.fps.denominator) // self.fps.numerator

    def frame_end(self, index: int) -> int:
        """One past the last sample of frame ``index``."""
        return self.frame_start(index + 1)

    def frame_samples(self, index: int) -> int:
        return self.frame_end(index) - self.frame_start(index)

    def frame_pts(self, index: int) -> float:
        """Presentation time of frame ``index`` in seconds."""
        return float(index / self.fps)

    def frame_at_sample(self, sample: int) -> int:
        """The frame whose samples include ``sample``."""
        # largest i with floor(i*sr/fps) <= sample, i.e. i*sr*den < (sample+1)*num
        num, den = self.fps.numerator, self.fps.denominator
        return ((sample + 1) * num - 1) // (self.sample_rate * den)

    def frames_covering(self, samples: int) -> int:
        """How many frames it takes to carry ``samples`` samples (the last one may be partly past the end)."""
        num, den = self.fps.numerator, self.fps.denominator
        return -((-samples * num) // (self.sample_rate * den))

    def seconds_to_samples(self, seconds: float) -> int:
        return round(seconds * self.sample_rate)

    def samples_to_seconds(self, samples: int) -> float:
        return samples / self.sample_rate
