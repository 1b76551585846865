"""The child process of tests/test_mic_denoise.py (and scripts/bench_denoise.py's measured latency): it records with
the ``mic`` source from the PulseAudio loopback, with and without ``denoise``, as tests/mic_child.py does.

``python -c "from tests.mic_denoise_child import child_main; child_main()" MODE JSON``:

- ``streams``: one MicSource per entry of ``denoise`` (a list of booleans), all on the same device at once, each
  read by its own thread; every chunk's samples and the monotonic time it left the source are saved in
  ``streams.npz`` (``samples_N``, ``left_N``), and each source's ``added_latency_s`` in ``streams.json``;
- ``host``: a live stream mic (``denoise`` as given) -> viseme -> a probe output; the run's report in
  ``report.json``.

Both print ``READY`` once audio flows.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast.media import StreamFormat
from tests.mic_child import RATE, READY_TIMEOUT_S, ProbePlugin


def child_main(argv: list[str] | None = None) -> None:
    mode, raw = (argv if argv is not None else sys.argv[1:])[:2]
    {"streams": _streams, "host": _host}[mode](json.loads(raw))


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


def _host(options: dict[str, Any]) -> None:
    from anchorcast.host import Host
    from anchorcast.plugin_manager import PluginPolicy
    from anchorcast_plugins.engines import viseme
    from anchorcast_plugins.sources import mic_source

    plugin = ProbePlugin()
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(mic_source, viseme, plugin))
    profile = host.load_profile(None, raw={
        "stream": {"width": 160, "height": 120, "fps": 25, "sample_rate": RATE},
        "scheduler": {"pace": "realtime", "lead_in_ms": 0, "latency_budget_ms": options["budget_ms"]},
        "source": {"use": "mic", "device": "pulse", "denoise": options["denoise"]},
        "engine": {"use": "viseme"},
        "outputs": {"probe": {"use": "test-mouth-probe"}},
    })
    report: dict[str, Any] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            report.update(host.run(profile))
        except BaseException as error:
            failure.append(error)
            plugin.probe.first_frame.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    plugin.probe.first_frame.wait(READY_TIMEOUT_S)
    if failure:
        raise failure[0]
    print("READY", flush=True)
    time.sleep(options["seconds"])
    host.stop()
    thread.join(30)
    if failure:
        raise failure[0]
    (Path(options["out"]) / "report.json").write_text(json.dumps(report))
