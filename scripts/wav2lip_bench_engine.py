"""In-process measurements of the wav2lip engine for scripts/bench_wav2lip.py: ``engine.open()`` cold and warm
(with the engine's own timings) and the first rendered batch; frames/s by backend, batch size and pacing mode, for
the generator alone and for the engine's whole render (mel windows, generator, paste at 1280x720)."""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from wav2lip_bench_backends import measure
from wav2lip_bench_inputs import ClipInputs, anchorcast_home, engine_settings, fresh_home

from anchorcast.components import FrameJob
from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.wav2lip.audio import LOOKBEHIND_SAMPLES, lookahead_samples
from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine

FORMAT = StreamFormat(1280, 720, Fraction(25), 16000)
MODE_BACKENDS = ("torch-fp32", "openvino-fp32", "openvino-int8")


def frame_jobs(count: int, speech: np.ndarray | None = None) -> list[FrameJob]:
    """``count`` consecutive frame jobs at 25 fps and 16 kHz, in full speech (so every frame is pasted), their
    audio cut from ``speech`` (a voiced tone when None)."""
    behind, ahead, per_frame = LOOKBEHIND_SAMPLES, lookahead_samples(FORMAT.fps), 640
    needed = behind + count * per_frame + ahead
    if speech is None:
        t = np.arange(needed) / 16000
        speech = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + 0.3 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    audio = np.resize(np.asarray(speech, dtype=np.float32), needed)
    return [
        FrameJob(i, i / 25, audio[i * per_frame : i * per_frame + behind + per_frame + ahead], behind, per_frame, 1.0)
        for i in range(count)
    ]


def open_engine(settings: dict[str, Any], live: bool) -> tuple[Wav2LipEngine, float]:
    """An engine paced ``live`` (or fast), opened for 1280x720 at 25 fps; and the seconds open() took."""
    engine = Wav2LipEngine(settings)
    engine.set_pacing(live)
    started = time.perf_counter()
    engine.open(FORMAT)
    return engine, time.perf_counter() - started


def startup(inputs: ClipInputs, work: Path, *, cold: bool, remeasure_too: bool, backend: str = "auto",
            first_batch: int = 16) -> list[dict[str, Any]]:
    """Fast-pace start-up rows: cold (a fresh ANCHORCAST_HOME with the weights only: the avatar is prepared, its
    features encoded, the backends measured and the OpenVINO models built) when ``cold``, then warm (all of that
    cached), then warm with ``remeasure`` (measuring on every run, as before decisions were stored). Each row:
    open() seconds, the engine's timings, the first batch of ``first_batch`` frames, and open + first batch."""
    home = work / "engine-home"
    rows: list[dict[str, Any]] = []
    prime = not cold and not home.exists()
    if cold or prime:
        fresh_home(inputs.home, home)
    cases = [("cold", False)] if cold else [("warm (priming run, cold)", False)] if prime else []
    cases += [("warm", False)] + ([("warm, remeasure=true (as before)", True)] if remeasure_too else [])
    jobs = frame_jobs(first_batch)
    with anchorcast_home(home):
        for label, remeasure in cases:
            settings = engine_settings(inputs, backend, remeasure=remeasure, throughput_batch=first_batch)
            engine, open_s = open_engine(settings, live=False)
            try:
                started = time.perf_counter()
                engine.render(jobs)
                first = time.perf_counter() - started
                rows.append({"case": label, "backend": engine.backend.name, "streams": engine.backend.streams,
                             "open_s": open_s, "first_batch_s": first, "first_frame_s": open_s + first,
                             "timings": dict(engine.timings), "batch": first_batch, "ids": _cache_ids(engine)})  # fmt: skip
            finally:
                engine.close()
    return [row for row in rows if not row["case"].startswith("warm (priming")]


def _cache_ids(engine: Wav2LipEngine) -> dict[str, str]:
    """Where the engine keeps its OpenVINO models and the ids they are cached under (as ``backend_for_avatar``
    names them), so the generator table can load the same models instead of building its own."""
    assert engine.avatar is not None
    folder = Path(engine.avatar.folder)
    avatar_id = str(getattr(engine.avatar, "source_sha256", None) or folder.name)
    return {"cache_dir": str(folder / "backends"), "weights_id": engine.weights_id, "avatar_id": avatar_id}


def backends_by_mode(inputs: ClipInputs, work: Path, *, batches: list[int], seconds: float, passes: int,
                     backends: tuple[str, ...] = MODE_BACKENDS, min_count: int = 5,
                     log: Any = print) -> list[dict[str, Any]]:
    """frames/s and latency per batch for each backend, pacing mode and batch size: the generator alone
    (``backend.predict``, or in fast mode the engine's sub-batches of ``max_batch`` kept in flight) and the
    engine's render (mel windows + generator + paste). Each engine is opened once per mode (the warm home)."""
    home = work / "engine-home"
    if not home.exists():
        fresh_home(inputs.home, home)
    jobs = frame_jobs(max(batches))
    rng = np.random.default_rng(0)
    mels = np.clip(rng.normal(-1.5, 1.5, size=(max(batches), 1, 80, 16)), -4, 4).astype(np.float32)
    rows: list[dict[str, Any]] = []
    with anchorcast_home(home):
        for backend in backends:
            for live in (True, False):
                settings = engine_settings(inputs, backend, throughput_batch=max(16, *batches))
                engine, _ = open_engine(settings, live)
                generator = _GeneratorBatches(engine)
                try:
                    for batch in batches:
                        mode = "live" if live else "fast"
                        gen = measure(lambda b=batch, g=generator: g(mels[:b]), batch, seconds / 2, passes=passes,
                                      min_count=min_count)
                        eng = measure(lambda b=batch, e=engine: e.render(jobs[:b]), batch, seconds / 2,
                                      passes=passes, min_count=min_count)
                        rows.append({"backend": backend, "mode": mode, "batch": batch,
                                     "streams": engine.backend.streams, "described": engine.backend.describe(),
                                     "generator": gen, "engine": eng})  # fmt: skip
                        log(f"  {backend} {mode} batch {batch}: generator {gen['fps']:.1f}, engine "
                            f"{eng['fps']:.1f} frames/s")
                finally:
                    generator.close()
                    engine.close()
    return rows


class _GeneratorBatches:
    """The generator's share of :meth:`Wav2LipEngine.render`: one ``predict`` for a live batch (or one no larger
    than ``max_batch``), otherwise sub-batches of the live batch size all submitted before the first result is
    taken: on the backend's streams when it has several, else on one worker thread, as the engine does."""

    def __init__(self, engine: Wav2LipEngine) -> None:
        self.engine = engine
        self._worker: ThreadPoolExecutor | None = None

    def __call__(self, mels: np.ndarray) -> list[np.ndarray]:
        engine, backend = self.engine, self.engine.backend
        frames = [0] * len(mels)
        if engine.live or len(mels) <= engine.live_batch:
            return [backend.predict(mels, frames)]
        step = engine.live_batch
        pending = [self._submit(mels[i : i + step], frames[i : i + step]) for i in range(0, len(mels), step)]
        return [future.result() for future in pending]

    def _submit(self, mels: np.ndarray, frames: list[int]) -> Future[np.ndarray]:
        backend = self.engine.backend
        if backend.streams > 1:
            return backend.submit(mels, frames)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="bench-infer")
        return self._worker.submit(backend.predict, mels, frames)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
