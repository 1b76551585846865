"""``anchorcast run`` as scripts/bench_wav2lip.py times it: the CLI itself (``python wav2lip_bench_cli.py run ...``
is ``anchorcast run ...``), which also writes the wall-clock time (``time.time()``) at which the first frame left the
outputs to the file named by ``$W2L_BENCH_FIRST_FRAME``. The ``--metrics`` JSON counts from the scheduler's start,
after every component has opened, so it cannot tell the process's own start-up."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from anchorcast import host as host_module
from anchorcast.cli import main


def _record_first_frame(path: Path) -> None:
    run = host_module.Host.run

    def timed_run(self: Any, profile: Any, *, on_progress: Any = lambda aired, total: None, **kwargs: Any) -> Any:
        seen = False

        def progress(aired: int, total: int | None) -> None:
            nonlocal seen
            if not seen:
                seen = True
                path.write_text(f"{time.time():.6f}\n")
            on_progress(aired, total)

        return run(self, profile, on_progress=progress, **kwargs)

    host_module.Host.run = timed_run  # type: ignore[method-assign]


if __name__ == "__main__":
    if target := os.environ.get("W2L_BENCH_FIRST_FRAME"):
        _record_first_frame(Path(target))
    sys.exit(main())
