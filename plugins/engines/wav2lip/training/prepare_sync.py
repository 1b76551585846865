"""``anchorcast train prepare --expert``: clips a lip-sync expert finds off-sync are dropped."""

from __future__ import annotations

from typing import Any

import numpy as np

from anchorcast_plugins.engines.wav2lip.training.dataset import CLIPS_DIR, FACES_FILE, MEL_FILE, DatasetWriter
from anchorcast_plugins.engines.wav2lip.training.prepare_report import Stretch, VideoReport


def load_scorer(expert: str) -> Any:
    from anchorcast_plugins.engines.wav2lip.training.generator import load_expert

    return load_expert(expert, "cpu")


def drop_off_sync(writer: DatasetWriter, expert: Any, max_offset: int, dropped: list[tuple[str, str]]) -> None:
    """Scores every clip written so far with :func:`~.offsets.sync_offset` (kept in its entry's ``sync``) and
    removes those whose best audio offset is more than ``max_offset`` frames from zero, adding
    ``(source, reason)`` to ``dropped``."""
    from anchorcast_plugins.engines.wav2lip.training.offsets import sync_offset

    for entry in list(writer.entries):
        folder = writer.partial / CLIPS_DIR / entry["id"]
        faces = np.load(folder / FACES_FILE, mmap_mode="r")
        mel = np.load(folder / MEL_FILE)
        best, at_best, at_zero = sync_offset(expert, faces, mel)
        entry["sync"] = {"best_offset": best, "similarity": round(at_best, 4), "similarity_at_0": round(at_zero, 4)}
        if abs(best) > max_offset:
            writer.remove(entry["id"])
            dropped.append((entry["source"], f"clip {entry['id']}: off-sync, the expert's best audio offset is "
                                             f"{best:+d} frames (similarity {at_best:.2f}, {at_zero:.2f} at 0; "
                                             f"--max-offset {max_offset})"))


def note_off_sync(videos: list[VideoReport], dropped: list[tuple[str, str]]) -> None:
    """Moves the clips ``drop_off_sync`` dropped (their ``dropped`` lines) from the videos' clips to their dropped
    clips, with the reason."""
    reasons = {reason.split(":", 1)[0].removeprefix("clip "): reason.split(": ", 1)[1] for _, reason in dropped}
    for video in videos:
        for clip in [c for c in video.clips if c.id in reasons]:
            video.clips.remove(clip)
            video.dropped_clips.append(Stretch(clip.start, clip.end, reasons[clip.id]))
