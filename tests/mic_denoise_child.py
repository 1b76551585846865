"""The child process of tests/test_mic_denoise.py (and scripts/bench_denoise.py's measured latency): it records with
the ``mic`` source from the PulseAudio loopback, with and without ``denoise``, as tests/mic_child.py does.

``python -c "from tests.mic_denoise_child import child_main; child_main()" MODE JSON``:

- ``streams``: one MicSource per entry of ``denoise`` (a list of booleans), all on the same device at once, each
  read by its own thread; every chunk's samples and the monotonic time it left the source are saved in
  ``streams.npz`` (``samples_N``, ``left_N``), and each source's ``added_latency_s`` in ``streams.json``;
- ``host``: tests/mic_child.py's live stream, mic (``denoise`` as given) -> viseme -> a probe output; the run's
  report in ``report.json``.

Both print ``READY`` once audio flows.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast.media import StreamFormat
from tests.mic_child import CHUNK, RATE, READY_TIMEOUT_S, REPO, Child, child_host
from tests.pulse import PulseAudio

PLAYER_BUFFER_MS = 250
"""pacat's buffer: a small one underruns on a loaded machine and inserts silence into the sound."""


def child_main(argv: list[str] | None = None) -> None:
    mode, raw = (argv if argv is not None else sys.argv[1:])[:2]
    {"streams": _streams, "host": child_host}[mode](json.loads(raw))


def _streams(options: dict[str, Any]) -> None:
    from anchorcast_plugins.sources.mic_source import MicSource

    sources = [MicSource("pulse", denoise=flag) for flag in options["denoise"]]
    for source in sources:
        source.open(StreamFormat(64, 48, Fraction(25), RATE))
    parts: list[list[np.ndarray]] = [[] for _ in sources]
    left: list[list[float]] = [[] for _ in sources]
    started = [threading.Event() for _ in sources]
    stop = threading.Event()

    def read(n: int) -> None:
        for chunk in sources[n].items():
            parts[n].append(chunk.samples)
            left[n].append(time.monotonic())
            started[n].set()
            if stop.is_set():
                break

    threads = [threading.Thread(target=read, args=(n,), daemon=True) for n in range(len(sources))]
    for thread in threads:
        thread.start()
    for event in started:
        event.wait(READY_TIMEOUT_S)
    print("READY", flush=True)
    time.sleep(options["seconds"])
    stop.set()
    for thread in threads:
        thread.join(10)
    for source in sources:
        source.close()
    out = Path(options["out"])
    arrays: dict[str, np.ndarray] = {}
    for n in range(len(sources)):
        arrays[f"samples_{n}"] = np.concatenate(parts[n])
        arrays[f"left_{n}"] = np.array(left[n])
    np.savez(out / "streams.npz", **arrays)  # type: ignore[arg-type]
    (out / "streams.json").write_text(json.dumps({"added_latency_s": [s.added_latency_s for s in sources],
                                                  "chunk": sources[0].chunk_samples}))


# --- the parent's side -------------------------------------------------------------------------------------


class DenoiseChild(Child):
    """This module's :func:`child_main` in a child process started with the sound server's environment."""

    def __init__(self, mode: str, options: dict[str, Any], env: dict[str, str]) -> None:
        code = "from tests.mic_denoise_child import child_main; child_main()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, mode, json.dumps(options)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines = []


def record_streams(pulse: PulseAudio, out: Path, denoise: list[bool], sound: np.ndarray
                   ) -> tuple[Any, dict[str, Any]]:
    """Plays ``sound`` (at :data:`RATE`) into the sink while one mic source per ``denoise`` flag records it;
    returns ``streams.npz`` and ``streams.json``."""
    options = {"denoise": denoise, "seconds": len(sound) / RATE + 2.5, "out": str(out)}
    child = DenoiseChild("streams", options, pulse.client_env())
    try:
        child.wait_ready()
        player = pulse.player(RATE, latency_ms=PLAYER_BUFFER_MS)
        time.sleep(0.5)
        player.write(sound)
        player.finish()
        code = child.finish(timeout=90)
        if code != 0:
            raise RuntimeError(f"the recording child failed ({code}): {child.output()}")
    finally:
        child.stop()
    return np.load(out / "streams.npz"), json.loads((out / "streams.json").read_text())


def locate(recording: np.ndarray, sound: np.ndarray) -> int:
    """Where ``sound`` starts in ``recording`` (the cross-correlation peak)."""
    size = 2 * len(recording)
    correlation = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(sound, size)), size)
    return int(np.argmax(correlation[: len(recording) - len(sound) + 1]))


def left_delay_ms(streams: Any, late: int, early: int, late_at: int, early_at: int, length: int) -> float:
    """How much later the same sound left stream ``late`` than stream ``early`` (wall clock, mean over every
    seventh sample of it: a sample leaves with its 20 ms chunk, so single samples would be off by up to a
    chunk)."""
    samples = np.arange(0, length, 7)
    left_late = streams[f"left_{late}"][(late_at + samples) // CHUNK]
    left_early = streams[f"left_{early}"][(early_at + samples) // CHUNK]
    return float(np.mean(left_late - left_early) * 1000)
