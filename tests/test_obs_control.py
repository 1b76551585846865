"""The ``obs`` output: its settings and event logic, and the whole output against real OBS Studio.

The OBS tests run tests/obs_scenario.py once inside a private network namespace (obs-websocket listens on every
interface), with its own PID namespace so that everything it starts dies with it; each test below checks one part of
the JSON report it writes. Figures (connect, event-to-OBS and reconnect times) are in that report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest

import anchorcast_plugins.outputs.obs_control as obs_control
from anchorcast.errors import InputError, ProfileError
from anchorcast.host import Host
from anchorcast.media import Caption, Cue, Interrupt, SpeechEnded, SpeechStarted
from anchorcast.plugin_manager import PluginPolicy
from anchorcast_plugins.outputs.obs_control import AnchorState, ObsSettings
from tests.components import RecordingPlugin
from tests.obs_studio import phase_of, run_scenario
from tests.servers import free_port

SCENARIO_TIMEOUT_S = 420


def _host() -> Host:
    return Host.create(PluginPolicy(), entry_points=False, extra_plugins=(RecordingPlugin(), obs_control))


def _build(host: Host, **table: Any) -> obs_control.ObsControl:
    raw = {
        "source": {"use": "test-list", "lines": [["x", ""]]},
        "voice": {"use": "test-tone"},
        "engine": {"use": "test-level"},
        "outputs": {"obs": {"use": "obs", **table}},
    }
    return host.build(host.load_profile(None, raw=raw).outputs["obs"])


# --- settings and the event logic (no OBS needed) -----------------------------------------------------------


def test_plugin_module_imports_no_websocket_library() -> None:
    code = "import sys, anchorcast_plugins.outputs.obs_control; print(sorted({'obsws_python', 'websocket'} & set(sys.modules)))"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert found.strip() == "[]"


def test_a_password_in_the_profile_is_refused() -> None:
    host = _host()
    with pytest.raises(ProfileError, match="password"):
        _build(host, password="hunter2")
    with pytest.raises(InputError, match="password_env is not an environment variable name"):
        _build(host, password_env="hunter2 is my password")


def test_switch_on_speech_accepts_only_started_and_ended() -> None:
    host = _host()
    output = _build(host, switch_on_speech={"started": "anchor", "ended": "wide"})
    assert output.settings.switch_on_speech == {"started": "anchor", "ended": "wide"}
    with pytest.raises(InputError, match=r"switch_on_speech\.begin: unknown key"):
        _build(host, switch_on_speech={"begin": "anchor"})
    with pytest.raises(InputError, match="five different names"):
        _build(host, caption_source="same", lower_third_source="same")


def test_a_browser_source_needs_the_studio_servers_overlay_address(caplog: pytest.LogCaptureFixture) -> None:
    host = _host()
    assert _build(host, browser_source=True).settings.browser_source is False  # `anchorcast run`: no server
    assert "anchorcast serve" in caplog.text and "no Browser Source is added" in caplog.text
    host.overlay = {"url": "http://127.0.0.1:8800/overlay/main?watch=k", "width": 640, "height": 360}
    output = _build(host, browser_source=True)
    assert output.settings.overlay_url == host.overlay["url"]
    assert (output.settings.overlay_width, output.settings.overlay_height) == (640, 360)
    assert _build(host).settings.browser_source is False  # the address alone adds nothing


def _state(**settings: Any) -> tuple[AnchorState, ObsSettings]:
    config = ObsSettings(**settings)
    return AnchorState(config.scene), config


def test_a_cue_outranks_the_speech_started_scene_for_its_own_segment() -> None:
    state, config = _state(switch_on_speech={"started": "anchor", "ended": "wide"})
    state.apply(Cue(1.0, "studio"), 0.0, config)
    state.apply(SpeechStarted(1.0), 0.0, config)
    assert state.scene == "studio"
    state.apply(SpeechEnded(2.0), 0.0, config)
    assert state.scene == "wide"
    state.apply(SpeechStarted(3.0), 0.0, config)
    assert state.scene == "anchor"
    off, config = _state(cue_scenes=False)
    off.apply(Cue(1.0, "studio"), 0.0, config)
    assert off.scene == "anchorcast"


def test_a_cue_may_set_the_lower_third_and_keeps_it_until_another_does() -> None:
    state, config = _state()
    assert state.lower_third is None  # the profile's own until a cue says otherwise
    state.apply(Cue(1.0, "studio", {"lower_third": "Anna Anchor, news desk"}), 0.0, config)
    assert (state.scene, state.lower_third) == ("studio", "Anna Anchor, news desk")
    state.apply(Cue(2.0, "weather"), 0.0, config)
    assert (state.scene, state.lower_third) == ("weather", "Anna Anchor, news desk")
    state.apply(Cue(3.0, "", {"lower_third": ""}), 0.0, config)
    assert (state.scene, state.lower_third) == ("weather", "")


def test_captions_replace_stay_during_speech_and_clear_after_the_hold() -> None:
    state, config = _state(caption_hold_s=2.0)
    state.apply(SpeechStarted(0.0), 0.0, config)
    state.apply(Caption(0.0, "one", final=False), 0.1, config)
    state.apply(Caption(0.0, "one two", final=True), 0.2, config)
    state.expire(100.0)
    assert state.caption == "one two"  # speech goes on: no timer
    state.apply(SpeechEnded(1.0), 10.0, config)
    state.expire(11.9)
    assert state.caption == "one two"
    state.expire(12.0)
    assert state.caption == ""
    state.apply(Caption(5.0, "late final"), 20.0, config)  # a final after speech ended is held too
    state.expire(22.0)
    assert state.caption == ""
    state.apply(Caption(6.0, "cut"), 30.0, config)
    state.apply(Interrupt(6.0), 30.1, config)
    assert state.caption == "" and state.clear_at is None
    forever, config = _state(caption_hold_s=0.0)
    forever.apply(Caption(0.0, "stays"), 0.0, config)
    forever.apply(SpeechEnded(0.0), 0.0, config)
    forever.expire(1e9)
    assert forever.caption == "stays"


def test_obs_not_running_is_an_error_only_when_required() -> None:
    port = free_port()  # nothing listens there
    host = _host()
    required = _build(host, port=port, required=True)
    with pytest.raises(InputError, match=r"not reachable \(connection refused\)") as caught:
        required.open(None)  # type: ignore[arg-type]
    assert "WebSocket Server Settings" in (caught.value.hint or "")

    optional = _build(host, port=port)
    started = time.monotonic()
    optional.open(None)  # type: ignore[arg-type]
    try:
        assert time.monotonic() - started < 2.5
        began = time.monotonic()
        for number in range(200):
            optional.event(Caption(float(number), f"line {number}"))
        assert time.monotonic() - began < 0.5  # queued, never waiting on the network
        time.sleep(1.2)
        figures = optional.metrics()
        assert figures["failed_attempts"] >= 2 and not figures["connected"]
    finally:
        began = time.monotonic()
        optional.close()
    assert time.monotonic() - began < 5


# --- against real OBS Studio ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("nginx") is None:
        pytest.fail("nginx missing: apt-get install -y nginx libnginx-mod-rtmp (scripts/install-test-deps.sh)")
    result = tmp_path_factory.mktemp("obs") / "result.json"
    report, log = run_scenario("tests.obs_scenario", result, SCENARIO_TIMEOUT_S, "OBS scenario")
    report["log"] = log
    return report

def _subsequence(wanted: list[Any], seen: list[Any]) -> bool:
    remaining = iter(seen)
    return all(any(value == item for item in remaining) for value in wanted)


@pytest.mark.slow
def test_obs_not_running_then_started_connects_in_the_background(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "not_running")
    assert phase["required_error_type"] == "InputError"
    assert "not reachable (connection refused)" in phase["required_error"]
    assert phase["optional_open_ms"] < 2500
    assert phase["figures_while_down"]["failed_attempts"] >= 1 and not phase["figures_while_down"]["connected"]
    assert phase["port_to_state_shown_ms"] is not None, "the output never connected once OBS was up"
    assert phase["figures"]["connects"] == 1
    assert phase["caption_after_close"] == ""


@pytest.mark.slow
def test_the_anchor_scene_is_ensured_without_duplicates(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "ensure")
    ours = {"anchorcast media": "ffmpeg_source", "anchorcast captions": "text_ft2_source_v2",
            "anchorcast lower third": "text_ft2_source_v2"}  # fmt: skip
    assert "anchorcast lower third" not in phase["items_after_user_removed_one"]
    assert sorted(phase["scene_items"]) == sorted(ours)  # put back, nothing doubled
    inputs = [tuple(item) for item in phase["inputs"]]
    assert sorted(i for i in inputs if i[0] in ours) == sorted(ours.items())
    assert phase["program"] == "anchorcast"
    assert phase["lower_third_text"] == "Anna Anchor"
    assert phase["media_settings"]["input"] == phase["expected_media_url"]
    assert phase["media_settings"]["is_local_file"] is False


@pytest.mark.slow
def test_events_become_captions_and_scenes(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "events")
    assert len(phase["caption_latency_ms"]) == 12
    assert phase["final_still_shown"] == "one two three"
    assert phase["cue_to_program_ms"] is not None
    assert phase["program_after_unknown_cue"] == "studio"  # refused by OBS, logged, nothing else changed
    assert phase["interrupt_cleared_ms"] is not None
    assert phase["held_during_speech"] == "held line"
    assert 0.8 <= phase["cleared_after_speech_end_s"] <= 5  # caption_hold_s = 1
    assert phase["figures"]["connection_losses"] == 0
    assert scenario["event_call_ms_max"] < 100  # queued: event() never waits on OBS


@pytest.mark.slow
def test_screenshots_show_the_stream_and_the_caption(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "screenshot")
    assert scenario["pusher_error"] is None
    assert phase["media_visible_wait_s"] is not None, "the media source never showed the pushed RTMP stream"
    assert not phase["blank"]
    assert phase["event_to_screenshot_ms"] is not None
    assert phase["caption_band_changed_fraction"] > 0.01
    assert phase["media_still_visible"]
    assert phase["caption_source_opaque_fraction"] > 0.02
    assert phase["lower_third_opaque_fraction"] > 0.02


@pytest.mark.slow
def test_a_host_run_switches_scenes_and_writes_captions(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "host_run")
    assert phase["frames"] > 0
    # the cue outranks speech started for the first segment; then speech ended / started switch
    assert _subsequence(["studio", "wide", "anchorcast", "wide"], phase["scenes_seen"]), phase["scenes_seen"]
    first, second = "Good evening, this is anchorcast.", "Now the weather."
    assert _subsequence([first, second, ""], phase["captions_seen"]), phase["captions_seen"]
    assert phase["caption_cleared_after_last_speech_s"] < 2.5  # the 1 s hold, well before the run's end
    assert phase["output_obs_write_ms"]["p50_ms"] < 2  # frames are ignored
    assert phase["figures"]["connects"] == 1


@pytest.mark.slow
def test_obs_restart_reconnects_and_reapplies(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "restart")
    assert phase["before_shown"]
    assert phase["event_call_ms_while_down"] < 100
    assert phase["loss_noticed_ms"] is not None
    assert phase["port_to_state_shown_ms"] is not None, "the state was not re-applied after OBS restarted"
    assert {"anchorcast media", "anchorcast captions", "anchorcast lower third"} <= set(phase["scene_items"])
    assert phase["media_input"].startswith("rtmp://127.0.0.1:")
    assert phase["figures"]["connection_losses"] >= 1 and phase["figures"]["reconnect_s"]


@pytest.mark.slow
def test_a_wrong_or_missing_password_is_one_clear_error(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "wrong_password")
    assert phase["wrong_error_type"] == "InputError"
    assert phase["wrong_error"].startswith("OBS rejected the password (close code 4009)")
    assert "ANCHORCAST_TEST_OBS_WRONG_PASSWORD" in phase["wrong_error"]
    assert phase["wrong_connections"] == 1
    assert "asks for a password" in phase["unset_error"]
    assert "ANCHORCAST_TEST_OBS_UNSET_PASSWORD" in phase["unset_error"]
    assert phase["unset_connections"] == 1


@pytest.mark.slow
def test_a_password_changed_while_streaming_stops_the_output_without_a_retry_storm(
    scenario: dict[str, Any],
) -> None:
    phase = phase_of(scenario, "password_changed")
    assert phase["rejected_after_restart_s"] is not None
    assert "close code 4009" in phase["write_error"]
    assert phase["connections"] == 1  # over 5 s after the rejection: no further attempt


@pytest.mark.slow
def test_obs_figures_are_reported(scenario: dict[str, Any]) -> None:
    phases = scenario["phases"]
    figures = {
        "obs_rss_mb": scenario.get("obs_rss_mb"),
        "obs_start_to_port_s": phases["not_running"].get("obs_start_to_port_s"),
        "open_connect_and_setup_ms": phases["ensure"].get("open_connect_and_setup_ms"),
        "background_connect_after_port_ms": phases["not_running"].get("port_to_state_shown_ms"),
        "caption_event_to_settings_ms": phases["events"].get("caption_latency_ms"),
        "cue_event_to_program_ms": phases["events"].get("cue_to_program_ms"),
        "caption_event_to_screenshot_ms": phases["screenshot"].get("event_to_screenshot_ms"),
        "host_run_latencies_ms": {k: v for k, v in phases["host_run"].items() if k.endswith("_ms")},
        "reconnect_after_port_open_ms": phases["restart"].get("port_to_state_shown_ms"),
        "kill_to_state_shown_s": phases["restart"].get("kill_to_state_shown_s"),
        "scenario_seconds": {name: phase.get("seconds") for name, phase in phases.items()},
    }
    print("obs figures:", json.dumps(figures, indent=1))
    # every figure was measured, and each is a time the output's own limits bound: a connect and set-up within
    # the connect timeout of each request, events within a second, a reconnect within the backoff's cap
    captions = figures["caption_event_to_settings_ms"]
    assert captions and all(0 < ms < 1000 for ms in captions), captions
    timings_ms = {key: figures[key] for key in ("open_connect_and_setup_ms", "background_connect_after_port_ms",
                                                "cue_event_to_program_ms", "reconnect_after_port_open_ms")}
    assert all(isinstance(v, (int, float)) and v > 0 for v in timings_ms.values()), timings_ms
    assert timings_ms["cue_event_to_program_ms"] < 1000
    assert timings_ms["open_connect_and_setup_ms"] < 20 * obs_control.CONNECT_TIMEOUT_S * 1000
    assert timings_ms["reconnect_after_port_open_ms"] < (max(obs_control.BACKOFF_S) + 5) * 1000
    assert figures["host_run_latencies_ms"], figures


class _ObsWithBrowserSource:
    """Answers obs-websocket requests as an OBS that has the Browser Source (Debian's build, which the OBS tests
    run, has none), recording what was asked: the requests the obs output makes are its real code path."""

    def __init__(self, existing: dict[str, str]) -> None:
        self.inputs = dict(existing)
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def request(self, kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        self.calls.append((kind, data or {}))
        answers: dict[str, Any] = {
            "GetVideoSettings": {"baseWidth": 1920, "baseHeight": 1080},
            "GetSceneList": {"scenes": [{"sceneName": "anchorcast"}]},
            "GetInputList": {"inputs": [{"inputName": n, "inputKind": k} for n, k in self.inputs.items()]},
            "GetInputKindList": {"inputKinds": ["browser_source", "ffmpeg_source", "text_ft2_source_v2"]},
            "CreateInput": {"sceneItemId": len(self.calls)},
            "GetSceneItemId": {"sceneItemId": 1},
        }
        return answers.get(kind, {})


def test_the_browser_source_is_created_showing_the_overlay_then_updated_not_duplicated() -> None:
    from anchorcast_plugins.outputs.obs_session import BROWSER_KIND, ensure_anchor_scene

    settings = ObsSettings(browser_source=True, overlay_url="http://studio:8800/overlay/main?watch=k",
                           overlay_width=640, overlay_height=360)
    obs = _ObsWithBrowserSource({})
    ensure_anchor_scene(obs, settings)  # type: ignore[arg-type]
    created = [data for kind, data in obs.calls if kind == "CreateInput" and data["inputKind"] == BROWSER_KIND]
    assert len(created) == 1
    browser = created[0]["inputSettings"]
    assert created[0]["inputName"] == "anchorcast overlay" and created[0]["sceneName"] == "anchorcast"
    assert browser["url"] == settings.overlay_url and (browser["width"], browser["height"]) == (640, 360)
    assert browser["reroute_audio"] is True and "rgba(0, 0, 0, 0)" in browser["css"]
    fit = next(data["sceneItemTransform"] for kind, data in obs.calls if kind == "SetSceneItemTransform")
    assert (fit["boundsWidth"], fit["boundsHeight"]) == (1920, 1080)

    again = _ObsWithBrowserSource({"anchorcast overlay": BROWSER_KIND})  # a later run, another address
    moved = ObsSettings(browser_source=True, overlay_url="http://studio:8801/overlay/main?watch=k2")
    ensure_anchor_scene(again, moved)  # type: ignore[arg-type]
    assert not [d for kind, d in again.calls if kind == "CreateInput" and d["inputKind"] == BROWSER_KIND]
    updates = [d for kind, d in again.calls if kind == "SetInputSettings" and d["inputName"] == "anchorcast overlay"]
    assert updates and updates[0]["inputSettings"]["url"] == moved.overlay_url
