"""What a video file on disk still holds after a failure: how far it plays, and the failure in plain words."""

from __future__ import annotations

import errno
from pathlib import Path

WRITE_FAILURES = {
    errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "the disk became read-only",
    errno.ENOENT: "the folder was removed", errno.ESTALE: "the folder was removed",
    errno.EACCES: "permission to write was taken away", errno.EPERM: "permission to write was taken away",
    errno.EIO: "an input/output error (a failing disk or a lost network share)",
}  # fmt: skip


def describe_write_failure(error: BaseException) -> str:
    """A failed write, as what it is: "disk full", "the folder was removed", ..."""
    return WRITE_FAILURES.get(getattr(error, "errno", None) or 0, f"writing failed ({reason(error)})")


def playable_seconds(path: Path) -> float:
    """How far a (possibly cut-off) video file plays without a hole: the end of the last frame before the first
    one that does not decode. Only the packets are read up to the last keyframe, and decoded from there (frames
    cut off from a reference they need, the B-frames of a fragment whose next one is missing, do not play); when
    the last keyframe itself was cut off, from the one before."""
    import av

    keyframes: list[int] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0.0
            for packet in container.demux(container.streams.video[0]):
                if packet.is_keyframe and packet.pts is not None:
                    keyframes.append(packet.pts)
    except (OSError, av.FFmpegError, ValueError):
        pass  # a cut-off fragment ends the reading: what came before it is there
    for keyframe in reversed(keyframes[-3:]):
        end = _contiguous_end(path, keyframe)
        if end > 0:
            return end
    return 0.0


def _contiguous_end(path: Path, keyframe: int) -> float:
    """Decodes from ``keyframe`` and returns the end of the frames that follow one another without a gap."""
    import av

    spans: list[tuple[int, int]] = []
    time_base = None
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            time_base = video.time_base
            container.seek(keyframe, stream=video, backward=True, any_frame=False)
            for frame in container.decode(video):
                if frame.pts is not None:
                    duration = frame.duration or (round(1 / video.average_rate / video.time_base)
                                                  if video.average_rate else 1)
                    spans.append((frame.pts, duration))
    except (OSError, av.FFmpegError, ValueError):
        pass
    if not spans or time_base is None:
        return 0.0
    # A fragment cut off mid-write can hold a P-frame without the B-frames shown before it: the file plays
    # without a hole only up to the first missing frame.
    spans.sort()
    end = spans[0][0] + spans[0][1]
    for pts, duration in spans[1:]:
        if pts > end + duration // 2:
            break
        end = max(end, pts + duration)
    return float(end * time_base)


def reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error)
    return reason[:1].lower() + reason[1:]
