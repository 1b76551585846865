"""The ``obs`` output against real OBS Studio: a scenario run in a private network namespace, reporting JSON.

tests/test_obs_control.py starts it as::

    unshare --net --pid --fork --kill-child --mount-proc \\
        bash -c 'ip link set lo up && exec python -m tests.obs_scenario RESULT.json'

so that obs-websocket (which listens on every interface) only ever sees loopback, and so that everything started
here (Xvfb, OBS, nginx) dies with this process even if it crashes: it is PID 1 of its namespace. It starts nginx-rtmp
with a test-pattern stream pushed to it, then OBS, and checks with its own obs-websocket client what the output
did: the program scene, the text sources' settings, source screenshots, reconnection after OBS is killed and
restarted, and the wrong-password behaviour (counted from OBS's own log). Each phase records its figures and
checks in the report; a phase that raises records the traceback and the next phases still run.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

import anchorcast_plugins.outputs.obs_control as obs_control
from anchorcast import hookimpl
from anchorcast.errors import AnchorcastError
from anchorcast.host import Host
from anchorcast.media import Caption, Cue, Event, Interrupt, SpeechEnded, SpeechStarted, StreamFormat
from anchorcast.plugin_manager import PluginPolicy
from tests.components import RecordingPlugin
from tests.obs_studio import ObsStudio, run_phase, scenario_main
from tests.servers import NginxRtmp

PASSWORD_ENV = "ANCHORCAST_TEST_OBS_PASSWORD"
WRONG_ENV = "ANCHORCAST_TEST_OBS_WRONG_PASSWORD"
UNSET_ENV = "ANCHORCAST_TEST_OBS_UNSET_PASSWORD"
PASSWORD = "anchorcast-test-pw-1"
CHANGED_PASSWORD = "anchorcast-test-pw-2"
SCENE = "anchorcast"
CAPTIONS = "anchorcast captions"
LOWER_THIRD = "anchorcast lower third"
MEDIA = "anchorcast media"
FMT = StreamFormat(640, 360, Fraction(25), 16000)
PUSH_SIZE = (320, 180)
MAGENTA = (230, 20, 230)

log = logging.getLogger("obs_scenario")


# --- helpers -----------------------------------------------------------------------------------------------


class Pusher:
    """Pushes a live test pattern to nginx with PyAV: magenta with a moving green bar in the top half only, so
    the lower part of the picture (where captions go) stays still."""

    def __init__(self, url: str, fps: int = 25) -> None:
        self.url, self.fps = url, fps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)
        self.frames = 0
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import av

        try:
            container = av.open(self.url, "w", format="flv")
            stream = container.add_stream(
                "libx264", rate=self.fps, options={"preset": "ultrafast", "tune": "zerolatency"}
            )
            stream.width, stream.height, stream.pix_fmt = *PUSH_SIZE, "yuv420p"
            stream.codec_context.gop_size = self.fps // 2
            width, height = PUSH_SIZE
            started = time.monotonic()
            while not self._stop.is_set():
                image = np.empty((height, width, 3), np.uint8)
                image[:] = MAGENTA
                x = (self.frames * 6) % (width - 20)
                image[: height // 2, x : x + 20] = (0, 220, 0)
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = self.frames
                container.mux(stream.encode(frame))
                self.frames += 1
                delay = started + self.frames / self.fps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            container.mux(stream.encode(None))
            container.close()
        except Exception as error:  # reported, not raised: the OBS checks say what it means
            self.error = f"{type(error).__name__}: {error}"


class Observer:
    """The scenario's own obs-websocket client (obsws-python's ReqClient)."""

    def __init__(self, obs: ObsStudio) -> None:
        import obsws_python

        self.client = obsws_python.ReqClient(host="127.0.0.1", port=obs.port, password=obs.password, timeout=10)

    def req(self, kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.client.send(kind, data, raw=True) or {}

    def program(self) -> str:
        return self.req("GetCurrentProgramScene")["currentProgramSceneName"]

    def text(self, source: str) -> str | None:
        try:
            return self.req("GetInputSettings", {"inputName": source})["inputSettings"].get("text", "")
        except Exception:  # the source does not exist (yet)
            return None

    def scenes(self) -> list[str]:
        return [scene["sceneName"] for scene in self.req("GetSceneList")["scenes"]]

    def inputs(self) -> list[tuple[str, str]]:
        return [(item["inputName"], item["inputKind"]) for item in self.req("GetInputList")["inputs"]]

    def scene_items(self, scene: str) -> list[str]:
        return [item["sourceName"] for item in self.req("GetSceneItemList", {"sceneName": scene})["sceneItems"]]

    def screenshot(self, source: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """An RGBA image of what ``source`` renders now."""
        import cv2

        data: dict[str, Any] = {"sourceName": source, "imageFormat": "png"}
        if width:
            data |= {"imageWidth": width, "imageHeight": height}
        encoded = self.req("GetSourceScreenshot", data)["imageData"].split(",", 1)[1]
        image = cv2.imdecode(np.frombuffer(base64.b64decode(encoded), np.uint8), cv2.IMREAD_UNCHANGED)
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA if image.shape[2] == 4 else cv2.COLOR_BGR2RGBA)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.01) -> float | None:
    """Seconds until ``check()`` held (None: it never did within ``timeout``)."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:  # OBS restarting: keep asking
            pass
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)


def output(host: Host, **settings: Any) -> obs_control.ObsControl:
    """An obs output made by the registered factory from a profile table, as the host makes it."""
    table = {"use": "obs", "password_env": PASSWORD_ENV, **settings}
    raw = {
        "source": {"use": "test-list", "lines": [["x", ""]]},
        "voice": {"use": "test-tone"},
        "engine": {"use": "test-level"},
        "outputs": {"obs": table},
    }
    profile = host.load_profile(None, raw=raw)
    return host.build(profile.outputs["obs"])


def timed_event(out: obs_control.ObsControl, event: Event, calls: list[float]) -> float:
    started = time.monotonic()
    out.event(event)
    calls.append((time.monotonic() - started) * 1000)
    return started


def media_visible(image: np.ndarray) -> bool:
    """The pushed magenta pattern shows in the top-left of the scene."""
    patch = image[20:60, 20:60, :3].reshape(-1, 3).astype(int)
    red, green, blue = patch.mean(0)
    return red > 120 and blue > 120 and green < 90


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class EventTimes:
    """Records when each event aired (the host's event hook) and grabs the outputs at startup."""

    def __init__(self) -> None:
        self.events: list[tuple[float, Event]] = []
        self.outputs: list[tuple[str, Any]] = []

    @hookimpl
    def anchorcast_startup(self, host: Any) -> None:
        self.outputs = list(host.scheduler.outputs)

    @hookimpl
    def anchorcast_event(self, host: Any, event: Event) -> None:
        self.events.append((time.monotonic(), event))


class Monitor:
    """Polls the program scene and the caption text, keeping every change with its time."""

    def __init__(self, obs: ObsStudio) -> None:
        self.observer = Observer(obs)
        self.changes: list[tuple[float, str, str | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.observer.close()

    def _run(self) -> None:
        last: tuple[str, str | None] | None = None
        while not self._stop.is_set():
            state = (self.observer.program(), self.observer.text(CAPTIONS))
            if state != last:
                self.changes.append((time.monotonic(), *state))
                last = state
            time.sleep(0.01)

    def first(self, after: float, check: Callable[[str, str | None], bool]) -> float | None:
        for at, scene, text in self.changes:
            if at >= after and check(scene, text):
                return at
        return None

    def sequence(self, index: int) -> list[Any]:
        values: list[Any] = []
        for change in self.changes:
            if not values or values[-1] != change[index]:
                values.append(change[index])
        return values


# --- the phases ----------------------------------------------------------------------------------------------


class Scenario:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.nginx = NginxRtmp(work / "nginx")
        self.obs = ObsStudio(work / "obs", password=PASSWORD, width=FMT.width, height=FMT.height)
        self.pusher = Pusher(self.nginx.url("anchor"))
        self.host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(RecordingPlugin(), obs_control))
        self.report: dict[str, Any] = {"phases": {}}
        self.event_call_ms: list[float] = []
        os.environ[PASSWORD_ENV] = PASSWORD
        os.environ[WRONG_ENV] = "not-the-password"
        os.environ.pop(UNSET_ENV, None)

    def phase(self, name: str, run: Callable[[dict[str, Any]], None]) -> None:
        run_phase(self.report, name, run)

    def run(self) -> dict[str, Any]:
        self.nginx.start()
        self.pusher.start()
        try:
            self.phase("not_running", self.not_running)
            self.phase("ensure", self.ensure)
            self.phase("events", self.events)
            self.phase("screenshot", self.screenshot)
            self.phase("host_run", self.host_run)
            self.phase("restart", self.restart)
            self.phase("wrong_password", self.wrong_password)
            self.phase("password_changed", self.password_changed)
        finally:
            self.report["obs_rss_mb"] = self.obs.rss_mb()
            self.report["pushed_frames"] = self.pusher.frames
            self.report["pusher_error"] = self.pusher.error
            self.report["event_call_ms_max"] = round(max(self.event_call_ms, default=0.0), 3)
            self.report["event_calls"] = len(self.event_call_ms)
            self.pusher.stop()
            self.obs.stop()
            self.nginx.stop()
        return self.report

    def not_running(self, result: dict[str, Any]) -> None:
        """OBS not running: required is an error at start; not required goes on and connects when OBS comes."""
        required = output(self.host, port=self.obs.port, required=True)
        started = time.monotonic()
        try:
            required.open(FMT)
            result["required_error"] = None
        except AnchorcastError as error:
            result["required_error"] = str(error)
            result["required_error_type"] = type(error).__name__
        result["required_open_ms"] = ms(time.monotonic() - started)

        waiting = output(self.host, port=self.obs.port, media_url=self.nginx.url("anchor"), caption_hold_s=0)
        started = time.monotonic()
        waiting.open(FMT)
        result["optional_open_ms"] = ms(time.monotonic() - started)
        timed_event(waiting, Caption(0.0, "waiting for OBS"), self.event_call_ms)
        time.sleep(1.0)
        result["figures_while_down"] = waiting.metrics()
        try:
            result["obs_start_to_port_s"] = round(self.obs.start(), 2)
            port_open = time.monotonic()
            observer = Observer(self.obs)
            try:
                shown = wait_until(
                    lambda: observer.program() == SCENE and observer.text(CAPTIONS) == "waiting for OBS", 30
                )
                result["port_to_state_shown_ms"] = ms(shown)
                result["connected_after_port_ms"] = ms(time.monotonic() - port_open) if shown is not None else None
                result["figures"] = waiting.metrics()
                waiting.close()
                result["caption_after_close"] = observer.text(CAPTIONS)
            finally:
                observer.close()
        finally:
            waiting.close()

    def ensure(self, result: dict[str, Any]) -> None:
        """A second output reuses everything (no duplicates) and puts back what a user removed."""
        observer = Observer(self.obs)
        try:
            item = observer.req("GetSceneItemId", {"sceneName": SCENE, "sourceName": LOWER_THIRD})["sceneItemId"]
            observer.req("RemoveSceneItem", {"sceneName": SCENE, "sceneItemId": item})
            for name in ("studio", "wide"):
                observer.req("CreateScene", {"sceneName": name})
            observer.req("SetCurrentProgramScene", {"sceneName": "wide"})
            result["items_after_user_removed_one"] = observer.scene_items(SCENE)

            self.main = output(
                self.host, port=self.obs.port, required=True, media_url=self.nginx.url("anchor"),
                lower_third="Anna Anchor", caption_hold_s=1.0,
            )  # fmt: skip
            started = time.monotonic()
            self.main.open(FMT)
            result["open_connect_and_setup_ms"] = ms(time.monotonic() - started)
            result["program"] = observer.program()
            result["scenes"] = observer.scenes()
            result["inputs"] = observer.inputs()
            result["scene_items"] = observer.scene_items(SCENE)
            result["lower_third_text"] = observer.text(LOWER_THIRD)
            result["media_settings"] = observer.req("GetInputSettings", {"inputName": MEDIA})["inputSettings"]
            result["expected_media_url"] = self.nginx.url("anchor")
            caption = observer.req("GetInputSettings", {"inputName": CAPTIONS})
            result["caption_kind"] = caption["inputKind"]
        finally:
            observer.close()

    def events(self, result: dict[str, Any]) -> None:
        """Events become OBS state: captions (partial, final, held then cleared, interrupted) and cue scenes."""
        out, calls = self.main, self.event_call_ms
        observer = Observer(self.obs)
        try:
            latencies = []
            for number in range(12):
                text = f"caption number {number}"
                sent = timed_event(out, Caption(float(number), text), calls)
                if wait_until(lambda t=text: observer.text(CAPTIONS) == t, 10) is not None:
                    latencies.append((time.monotonic() - sent) * 1000)
                time.sleep(0.05)
            result["caption_latency_ms"] = sorted(round(v, 1) for v in latencies)

            for text, final in (("one", False), ("one two", False), ("one two three", True)):
                timed_event(out, Caption(20.0, text, final=final), calls)
            result["final_shown_ms"] = ms(wait_until(lambda: observer.text(CAPTIONS) == "one two three", 10))
            time.sleep(0.5)
            result["final_still_shown"] = observer.text(CAPTIONS)

            sent = timed_event(out, Cue(21.0, "studio"), calls)
            shown = wait_until(lambda: observer.program() == "studio", 10)
            result["cue_to_program_ms"] = ms(None if shown is None else time.monotonic() - sent)
            timed_event(out, Cue(22.0, "no such scene"), calls)
            time.sleep(0.3)
            result["program_after_unknown_cue"] = observer.program()
            timed_event(out, Cue(23.0, SCENE), calls)
            wait_until(lambda: observer.program() == SCENE, 10)

            sent = timed_event(out, Interrupt(24.0, "test"), calls)
            result["interrupt_cleared_ms"] = ms(wait_until(lambda: observer.text(CAPTIONS) == "", 10))

            timed_event(out, SpeechStarted(25.0, "held line"), calls)
            timed_event(out, Caption(25.0, "held line"), calls)
            wait_until(lambda: observer.text(CAPTIONS) == "held line", 10)
            time.sleep(1.5)  # longer than caption_hold_s: speech is still going, the line must stay
            result["held_during_speech"] = observer.text(CAPTIONS)
            ended = timed_event(out, SpeechEnded(27.0, "held line"), calls)
            cleared = wait_until(lambda: observer.text(CAPTIONS) == "", 10)
            result["cleared_after_speech_end_s"] = None if cleared is None else round(time.monotonic() - ended, 2)
            result["figures"] = out.metrics()
        finally:
            observer.close()

    def screenshot(self, result: dict[str, Any]) -> None:
        """Source screenshots: the media source shows the pushed stream; a caption changes the caption area."""
        out, calls = self.main, self.event_call_ms
        observer = Observer(self.obs)
        try:
            result["media_visible_wait_s"] = wait_until(
                lambda: media_visible(observer.screenshot(SCENE, FMT.width, FMT.height)), 30, 0.2
            )
            before = observer.screenshot(SCENE, FMT.width, FMT.height)
            result["scene_mean_rgb"] = [round(float(v), 1) for v in before[..., :3].reshape(-1, 3).mean(0)]
            result["blank"] = bool(before[..., :3].std() < 2)
            text = "ANCHORCAST CAPTION 12345"
            sent = timed_event(out, Caption(30.0, text), calls)
            band = slice(int(FMT.height * 0.75), FMT.height)
            changed: dict[str, float] = {}

            def caption_drawn() -> bool:
                after = observer.screenshot(SCENE, FMT.width, FMT.height)
                diff = np.abs(after[band, :, :3].astype(int) - before[band, :, :3].astype(int)).max(axis=2)
                changed["band"] = float((diff > 60).mean())
                changed["top_left_media"] = float(media_visible(after))
                return changed["band"] > 0.01

            drawn = wait_until(caption_drawn, 10, 0.0)
            result["event_to_screenshot_ms"] = ms(None if drawn is None else time.monotonic() - sent)
            result["caption_band_changed_fraction"] = round(changed.get("band", 0.0), 4)
            result["media_still_visible"] = bool(changed.get("top_left_media"))
            source = observer.screenshot(CAPTIONS)
            result["caption_source_size"] = list(source.shape[:2])
            result["caption_source_opaque_fraction"] = round(float((source[..., 3] > 128).mean()), 4)
            lower = observer.screenshot(LOWER_THIRD)
            result["lower_third_opaque_fraction"] = round(float((lower[..., 3] > 128).mean()), 4)
        finally:
            observer.close()
            self.main.close()

    def host_run(self, result: dict[str, Any]) -> None:
        """A whole anchorcast run (real-time pace) with the obs output: cues, speech switches, captions."""
        times = EventTimes()
        host = Host.create(
            PluginPolicy(), entry_points=False, extra_plugins=(RecordingPlugin(), obs_control, times)
        )
        first, second = "Good evening, this is anchorcast.", "Now the weather."
        raw = {
            "stream": {"width": 64, "height": 48, "fps": 25, "sample_rate": 16000},
            "scheduler": {"pace": "realtime", "lead_in_ms": 300, "pause_ms": 1000, "tail_ms": 3000},
            "source": {"use": "test-list", "lines": [[first, "studio"], [second, ""]]},
            "voice": {"use": "test-tone"},
            "engine": {"use": "test-level"},
            "outputs": {
                "collect": {"use": "test-collect"},
                "obs": {
                    "use": "obs", "port": self.obs.port, "password_env": PASSWORD_ENV, "required": True,
                    "media_url": self.nginx.url("anchor"), "caption_hold_s": 1.0,
                    "switch_on_speech": {"started": SCENE, "ended": "wide"},
                },
            },
        }  # fmt: skip
        with Monitor(self.obs) as monitor:
            time.sleep(0.2)
            report = host.run(host.load_profile(None, raw=raw))
            time.sleep(0.5)
        result["scenes_seen"] = monitor.sequence(1)
        result["captions_seen"] = monitor.sequence(2)
        result["events"] = [(round(at - times.events[0][0], 3), e.kind) for at, e in times.events]
        result["frames"] = report["frames"]
        result["output_obs_write_ms"] = report["stages"].get("output:obs")
        outputs = dict(times.outputs)
        if "obs" in outputs:
            result["figures"] = outputs["obs"].metrics()

        def latency(kind: str, check: Callable[[str, str | None], bool], nth: int = 0) -> float | None:
            aired = [at for at, event in times.events if event.kind == kind]
            if len(aired) <= nth:
                return None
            shown = monitor.first(aired[nth], check)
            return ms(None if shown is None else shown - aired[nth])

        result["cue_to_scene_ms"] = latency("cue", lambda scene, _: scene == "studio")
        result["caption_to_text_ms"] = latency("caption", lambda _, text: text == first)
        result["speech_ended_to_scene_ms"] = latency("speech_ended", lambda scene, _: scene == "wide")
        result["speech_started_to_scene_ms"] = latency("speech_started", lambda scene, _: scene == SCENE, nth=1)
        ended = [at for at, event in times.events if event.kind == "speech_ended"]
        cleared = monitor.first(ended[-1], lambda _, text: text == "") if ended else None
        result["caption_cleared_after_last_speech_s"] = None if cleared is None else round(cleared - ended[-1], 2)

    def restart(self, result: dict[str, Any]) -> None:
        """OBS killed (nothing saved) and started again: the output reconnects and re-applies everything."""
        out = output(self.host, port=self.obs.port, required=True, media_url=self.nginx.url("anchor"),
                     caption_hold_s=0)  # fmt: skip
        out.open(FMT)
        try:
            timed_event(out, Caption(40.0, "before restart"), self.event_call_ms)
            observer = Observer(self.obs)
            result["before_shown"] = (
                wait_until(lambda: observer.text(CAPTIONS) == "before restart", 10) is not None
            )
            observer.req("SetCurrentProgramScene", {"sceneName": "wide"})  # as OBS might come back: not ours
            observer.close()
            killed = time.monotonic()
            self.obs.kill()
            calls: list[float] = []
            timed_event(out, Caption(41.0, "after restart"), calls)
            timed_event(out, SpeechStarted(41.0, "after restart"), calls)
            self.event_call_ms += calls
            result["event_call_ms_while_down"] = round(max(calls), 3)
            noticed = wait_until(lambda: not out.connected, 10)
            result["loss_noticed_ms"] = ms(noticed)
            time.sleep(max(0.0, 1.5 - (time.monotonic() - killed)))
            result["obs_start_to_port_s"] = round(self.obs.start(), 2)
            observer = Observer(self.obs)
            try:
                shown = wait_until(
                    lambda: observer.program() == SCENE and observer.text(CAPTIONS) == "after restart", 30
                )
                result["port_to_state_shown_ms"] = ms(shown)
                result["kill_to_state_shown_s"] = (
                    round(time.monotonic() - killed, 2) if shown is not None else None
                )
                result["scenes"] = observer.scenes()
                result["scene_items"] = observer.scene_items(SCENE)
                media = observer.req("GetInputSettings", {"inputName": MEDIA})["inputSettings"]
                result["media_input"] = media.get("input")
                result["figures"] = out.metrics()
            finally:
                observer.close()
        finally:
            out.close()

    def wrong_password(self, result: dict[str, Any]) -> None:
        """A wrong password, and none at all: one clear error at open, exactly one connection, no retries."""
        for label, env in (("wrong", WRONG_ENV), ("unset", UNSET_ENV)):
            before = self.obs.websocket_connections()
            out = output(self.host, port=self.obs.port, password_env=env, required=False)
            started = time.monotonic()
            try:
                out.open(FMT)
                result[f"{label}_error"] = None
            except AnchorcastError as error:
                result[f"{label}_error"] = str(error)
                result[f"{label}_error_type"] = type(error).__name__
                result[f"{label}_hint"] = error.hint
            finally:
                out.close()
            result[f"{label}_open_ms"] = ms(time.monotonic() - started)
            time.sleep(2.0)
            result[f"{label}_connections"] = self.obs.websocket_connections() - before

    def password_changed(self, result: dict[str, Any]) -> None:
        """OBS comes back with another password mid-stream: one attempt, one error, the output leaves the stream
        at its next write; no retry storm."""
        out = output(self.host, port=self.obs.port, required=False)
        out.open(FMT)
        try:
            self.obs.kill()
            self.obs.password = CHANGED_PASSWORD
            before = self.obs.websocket_connections()
            self.obs.start()
            restarted = time.monotonic()

            def failed() -> bool:
                try:
                    out.write(None, None)  # type: ignore[arg-type]
                except AnchorcastError as error:
                    result["write_error"] = str(error)
                    return True
                return False

            rejected = wait_until(failed, 30, 0.05)
            result["rejected_after_restart_s"] = (
                None if rejected is None else round(time.monotonic() - restarted, 2)
            )
            time.sleep(5.0)  # several backoff periods: a retrying output would connect again
            result["connections"] = self.obs.websocket_connections() - before
            result["figures"] = out.metrics()
        finally:
            out.close()


def main() -> int:
    return scenario_main(lambda work: Scenario(work).run(), "anchorcast-obs-")

if __name__ == "__main__":
    sys.exit(main())
