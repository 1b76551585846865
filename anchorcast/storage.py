"""Where anchorcast keeps its data (stored weights, prepared avatars), and file fingerprints."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def anchorcast_home() -> Path:
    """``$ANCHORCAST_HOME``, else ``$XDG_DATA_HOME/anchorcast`` (``~/.local/share/anchorcast``). Not created here."""
    if home := os.environ.get("ANCHORCAST_HOME"):
        return Path(home).expanduser()
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data).expanduser() / "anchorcast"


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in blocks (weights files run to hundreds of MB)."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
