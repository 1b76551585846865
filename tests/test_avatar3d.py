"""The browser path on a real server: ``WS /v1/sessions/{id}/coefficients`` from a face3d session (a real
WebSocket client), its refusals, the ``/avatar3d`` page's files, and the page itself in headless Chromium
(WebGL through SwiftShader): the head's mouth moves while the session speaks and is still while it is idle, on
the sound's clock."""

from __future__ import annotations

import itertools
import json
import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pygltflib
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from anchorcast.server.auth import watch_key
from anchorcast_plugins.engines.face3d import coeff_model
from tests.studio_server import TOKEN, StudioServer

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
HEADER = struct.Struct("<BBHIddII")
DOCS = Path(__file__).resolve().parent.parent / "docs"
SENTENCE = "Good evening. Here is the news, with the markets, the weather and the sport."
FACE_PROFILE = """
[stream]
width = 160
height = 160
fps = 25
sample_rate = 16000

[scheduler]
latency_budget_ms = 2500
overrun = "repeat"

[source]
use = "script"
text = "unused by sessions"

[voice]
use = "espeak"

[engine]
use = "face3d"
{weights}

[outputs.captions]
use = "captions"
path = "session.vtt"
"""


def trained_weights() -> bool:
    """Whether the session draws with trained weights (docs/avatar3d.png is only redrawn then)."""
    shipped = Path(coeff_model.__file__).resolve().parent / "assets" / "coeffs.safetensors"
    return bool(os.environ.get("ANCHORCAST_TEST_FACE3D_WEIGHTS")) or shipped.exists()


def weights_line(folder: Path) -> str:
    """``ANCHORCAST_TEST_FACE3D_WEIGHTS`` (a checkpoint, e.g. a training run's), else the shipped weights when
    the package has them, else an untrained model's (the stream's shape and timing do not depend on it; only
    the speaking-versus-idle figures and the look of docs/avatar3d.png do)."""
    given = os.environ.get("ANCHORCAST_TEST_FACE3D_WEIGHTS")
    if given:
        return f'weights = "{Path(given).resolve()}"'
    if trained_weights():
        return ""
    path = folder / "untrained.safetensors"
    coeff_model.CoefficientModel().save(path)  # type: ignore[no-untyped-call]
    return f'weights = "{path}"'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    folder = tmp_path_factory.mktemp("avatar3d")
    profile = FACE_PROFILE.format(weights=weights_line(folder))
    with StudioServer(folder, "--no-session", profiles={"face3d-test": profile}) as running:
        with running.client() as client:
            client.create_session("face3d-test", session_id="face")
        say_and_wait(running, "Hello.")  # the engine's first speech warms it up
        yield running


def say_and_wait(server: StudioServer, text: str) -> None:
    said = httpx.post(f"{server.url}/v1/sessions/face/say", json={"text": text}, headers=AUTH, timeout=30)
    assert said.status_code == 202, said.text
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and queued(server):
        time.sleep(0.5)


def queued(server: StudioServer) -> int:
    return len(httpx.get(f"{server.url}/v1/sessions/face", headers=AUTH).json()["queue"])


def socket_url(server: StudioServer, session: str, query: str = "") -> str:
    return server.url.replace("http", "ws", 1) + f"/v1/sessions/{session}/coefficients{query}"


class Collector(threading.Thread):
    """A WebSocket client of the stream that keeps every message with its arrival time."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.messages: list[tuple[float, Any]] = []
        self.stop = threading.Event()
        self.started = threading.Event()

    def run(self) -> None:
        with connect(self.url, max_size=None) as socket:
            while not self.stop.is_set():
                message = socket.recv(10)
                self.messages.append((time.monotonic(), message))
                self.started.set()


def mouth_weights(names: list[str], weights: np.ndarray) -> np.ndarray:
    mouth = [k for k, name in enumerate(names) if name.startswith(("jaw", "mouth")) and name != "mouthClose"]
    return weights[..., mouth].sum(axis=-1)


def test_the_stream_carries_each_frames_53_coefficients_and_sound_at_frame_rate(server: StudioServer) -> None:
    plain = Collector(socket_url(server, "face", f"?token={TOKEN}"))
    audio = Collector(socket_url(server, "face", f"?audio=pcm&watch={watch_key(TOKEN, 'face')}"))
    for client in (plain, audio):
        client.start()
        assert client.started.wait(60), "no message within 60 s"
    time.sleep(1.5)  # idle frames first
    say_and_wait(server, SENTENCE)
    time.sleep(3.5)  # idle frames after the speech (and the latency budget's worth still to air)
    for client in (plain, audio):
        client.stop.set()
        client.join(15)

    intro = json.loads(plain.messages[0][1])
    assert intro["type"] == "expressions" and intro["fps"] == 25 and intro["sample_rate"] == 16000
    names = intro["names"]
    assert len(names) == 53 and "jawOpen" in names and "eyeBlink_L" in names
    frames = [json.loads(message) for _, message in plain.messages[1:]]
    assert all(frame["type"] == "coefficients" and len(frame["weights"]) == 53 for frame in frames)
    odd = [(names[k], w) for frame in frames for k, w in enumerate(frame["weights"])
           if not (0.0 <= w <= 1.0 and round(w, 3) == w)]
    assert not odd, odd[:10]
    indices = np.array([frame["index"] for frame in frames])
    assert np.all(np.diff(indices) >= 1) and (np.diff(indices) == 1).mean() > 0.99  # in order, none dropped
    np.testing.assert_allclose([frame["pts"] for frame in frames], indices / 25, atol=1e-6)
    arrivals = np.array([at for at, _ in plain.messages[1:]])
    span = arrivals[-1] - arrivals[0]
    assert 0.8 < (indices[-1] - indices[0]) / 25 / span < 1.25, "frames arrive at the stream's frame rate"

    assert json.loads(audio.messages[0][1])["names"] == names
    packets = [message for _, message in audio.messages[1:]]
    assert all(isinstance(packet, bytes) for packet in packets)
    by_index = {frame["index"]: frame["weights"] for frame in frames}
    weights, levels = [], []
    for packet in packets:
        kind, version, count, index, pts, audio_pts, rate, samples = HEADER.unpack_from(packet)
        assert (kind, version, count, rate, samples) == (1, 1, 53, 16000, 640)
        assert audio_pts == pytest.approx(pts) and pts == pytest.approx(index / 25)
        assert len(packet) == HEADER.size + 4 * count + 2 * samples
        values = np.frombuffer(packet, "<f4", count, HEADER.size)
        sound = np.frombuffer(packet, "<i2", samples, HEADER.size + 4 * count) / 32768
        if index in by_index:
            np.testing.assert_allclose(by_index[index], values, atol=5e-4)  # the same frame, rounded
        weights.append(values)
        levels.append(float(np.sqrt(np.mean(sound**2))))
    weights_array, level = np.array(weights), np.array(levels)
    speaking = level > 0.02
    near_speech = np.convolve(level > 0.002, np.ones(25), mode="same") > 0  # within half a second of any sound
    idle = ~near_speech
    assert speaking.sum() > 25 and idle.sum() > 25, (speaking.sum(), idle.sum())
    mouth = mouth_weights(names, weights_array)
    print(f"mouth weights: {mouth[speaking].mean():.3f} speaking, {mouth[idle].mean():.3f} idle "
          f"({speaking.sum()} and {idle.sum()} frames)")
    assert mouth[speaking].mean() > 3 * mouth[idle].mean() + 0.05


def test_a_session_whose_engine_gives_no_coefficients_is_told_so(server: StudioServer) -> None:
    with server.client() as client:
        client.create_session("small", session_id="plain")
        try:
            with connect(socket_url(server, "plain", f"?token={TOKEN}")) as socket:
                message = json.loads(socket.recv(30))
                assert message["type"] == "error" and "viseme" in message["detail"]
                assert "face3d" in message["detail"]
                with pytest.raises(ConnectionClosed) as closed:
                    socket.recv(10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4415
        finally:
            client.delete_session("plain")


def test_the_stream_and_the_page_refuse_a_missing_key_and_an_unknown_session(server: StudioServer) -> None:
    for query, status in (("", 401), ("?token=wrong-token-0123456789", 401),
                          (f"?watch={watch_key(TOKEN, 'plain')}", 401)):  # another session's key
        with pytest.raises(InvalidStatus) as refused:
            connect(socket_url(server, "face", query))
        assert refused.value.response.status_code == status
    with pytest.raises(InvalidStatus) as refused:
        connect(socket_url(server, "nope", f"?token={TOKEN}"))
    assert refused.value.response.status_code == 404

    assert httpx.get(f"{server.url}/avatar3d/face").status_code == 401
    assert httpx.get(f"{server.url}/avatar3d/nope?token={TOKEN}").status_code == 404
    address = httpx.get(f"{server.url}/v1/sessions/face/overlay", headers=AUTH).json()["avatar3d_path"]
    assert address == f"/avatar3d/face?watch={watch_key(TOKEN, 'face')}"
    page = httpx.get(server.url + address)
    assert page.status_code == 200 and '<script type="importmap">' in page.text
    assert httpx.get(f"{server.url}/avatar3d/face/models/../../etc/passwd?token={TOKEN}").status_code == 404
    assert httpx.get(f"{server.url}/avatar3d/face/models/small.toml?token={TOKEN}").status_code == 400
    assert httpx.get(f"{server.url}/avatar3d/face/models/absent.glb?token={TOKEN}").status_code == 404


def test_the_page_files_come_from_the_package_with_their_licences(server: StudioServer) -> None:
    for name in ("three.module.min.js", "GLTFLoader.module.min.js", "three-vrm.module.min.js"):
        script = httpx.get(f"{server.url}/static/avatar3d/vendor/{name}")
        assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "MIT License" in httpx.get(f"{server.url}/static/avatar3d/vendor/LICENSE.three").text
    assert "pixiv" in httpx.get(f"{server.url}/static/avatar3d/vendor/LICENSE.three-vrm").text
    assert httpx.get(f"{server.url}/static/avatar3d/vendor/nothing.js").status_code == 404

    head = httpx.get(f"{server.url}/static/avatar3d/head.glb", timeout=120)  # httpx asks for gzip
    assert head.status_code == 200 and head.headers["content-encoding"] == "gzip"
    assert len(head.content) < 8_000_000
    gltf = pygltflib.GLTF2.load_from_bytes(head.content)
    assert len(gltf.meshes[0].extras["targetNames"]) == 53
    assert all(accessor.sparse is not None for accessor in gltf.accessors if accessor.name in
               gltf.meshes[0].extras["targetNames"])


MOUTH_NOW = """(() => {
  const s = window.anchorcast.avatar3d.state;
  let sum = 0;
  s.names.forEach((name, k) => {
    if (/^(jaw|mouth)/.test(name) && name !== "mouthClose") sum += s.lastApplied.weights[k];
  });
  return sum;
})()"""
"""The sum of the mouth's weights in the frame the page shows now."""


def mouth_motion(page: Any, box: list[int], shots: int) -> list[float]:
    """Mean absolute change of the mouth box's pixels between consecutive screenshots."""
    x0, y0, x1, y1 = box
    clip = {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}
    frames = []
    for _ in range(shots):
        png = page.screenshot(clip=clip)
        frames.append(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.float32))
        time.sleep(0.15)
    return [float(np.abs(b - a).mean()) for a, b in itertools.pairwise(frames)]


def heard_lag(heard: list[list[float]], levels: dict[int, list[float]]) -> tuple[float, float, float]:
    """How the sound the page's graph rendered lines up with the stream: each sample holds the pts at the
    speakers, the level of the last 10 ms rendered, and how far rendering runs ahead of the speakers, so the
    rendered sound should be the stream's at ``pts + ahead``. Returns the shift from there (s) that lines the
    levels up best with the 10 ms levels of the frames' sound, the correlation there, and the median lead."""
    samples = np.array(heard)
    rendered_at = samples[:, 0] + samples[:, 2]
    best = (0.0, -1.0)
    for shift in np.arange(-0.2, 0.2001, 0.0025):
        position = (rendered_at + shift - 0.005) * 25 + 1e-6  # the analyser's 10 ms end where rendering is
        indices, quarters = np.floor(position).astype(int), np.floor(4 * (position % 1)).astype(int)
        known = np.array([index in levels for index in indices])
        if known.sum() < 50:
            continue
        frame_levels = np.array([levels[i][q] for i, q in zip(indices[known], quarters[known], strict=True)])
        if frame_levels.std() == 0 or samples[known, 1].std() == 0:
            continue
        correlation = float(np.corrcoef(samples[known, 1], frame_levels)[0, 1])
        if correlation > best[1]:
            best = (float(shift), correlation)
    return best[0], best[1], float(np.median(samples[:, 2]))


def test_the_page_moves_the_heads_mouth_with_the_sound_and_keeps_it_still_when_idle(server: StudioServer) -> None:
    from tests.browser import browser_page

    with browser_page(400, 400) as page:
        page.goto(f"{server.url}/avatar3d/face?watch={watch_key(TOKEN, 'face')}&background=1b2633&antialias=0")
        page.wait_for_function("window.anchorcast?.avatar3d?.state.applied > 10", timeout=120_000)
        state = page.evaluate("(({ model, error, names, bound }) => ({ model, error, names, bound }))"
                              "(window.anchorcast.avatar3d.state)")
        assert state["model"] == "gltf" and state["error"] is None and len(state["names"]) == 53
        assert state["bound"] >= 53  # every expression drives a morph target (several primitives share them)
        assert page.evaluate(MOUTH_NOW) < 0.1  # idle
        assert page.evaluate("window.anchorcast.avatar3d.audio()") == "running"
        box = page.evaluate("window.anchorcast.avatar3d.mouthBox()")
        assert box is not None and 0 < box[0] < box[2] < 400 and 0 < box[1] < box[3] < 400

        idle = mouth_motion(page, box, 8)
        said = httpx.post(f"{server.url}/v1/sessions/face/say", json={"text": f"{SENTENCE} {SENTENCE}"},
                          headers=AUTH)
        assert said.status_code == 202
        page.wait_for_function(f"{MOUTH_NOW} > 0.5", timeout=120_000, polling=100)  # the speech shows
        speaking: list[float] = []
        widest = -1.0  # the picture for the docs: the widest open jaw shown while speaking
        for _ in range(12):  # the two sentences last about 10 s
            speaking += mouth_motion(page, box, 2)
            shot = page.screenshot()  # then the weights it shows (the page draws only when they change)
            jaw = page.evaluate("(({ names, lastApplied }) => lastApplied.weights[names.indexOf('jawOpen')])"
                                "(window.anchorcast.avatar3d.state)")
            if jaw > widest and trained_weights():
                widest = jaw
                DOCS.mkdir(exist_ok=True)
                (DOCS / "avatar3d.png").write_bytes(shot)
        while queued(server):
            time.sleep(0.5)
        time.sleep(1.0)
        result = page.evaluate("(({ offsets, late, heard, levels, reanchors }) => ({ offsets, late, heard, "
                               "levels, reanchors }))(window.anchorcast.avatar3d.state)")

    lag, correlation, ahead = heard_lag(result["heard"], {int(k): v for k, v in result["levels"].items()})
    offsets = np.array(result["offsets"])
    print(f"docs/avatar3d.png: jawOpen {widest:.2f}; mouth motion: idle {np.mean(idle):.2f} "
          f"(max {max(idle):.2f}), speaking {np.mean(speaking):.2f} (max {max(speaking):.2f}; grey levels per "
          f"pixel between screenshots); shown frame - pts at the "
          f"speakers: median {1000 * np.median(offsets):.1f} ms, {1000 * offsets.min():.1f} .. "
          f"{1000 * offsets.max():.1f} ms over {len(offsets)} renders ({result['late']} late: the sound ran dry, "
          f"{result['reanchors']} re-anchors); the sound rendered is the stream's at the clock's pts "
          f"{1000 * lag:+.1f} ms (r = {correlation:.2f}); rendering runs {1000 * ahead:.0f} ms ahead of the "
          f"speakers (the output latency the clock takes off)")
    assert max(idle) < 0.5, idle
    assert np.mean(speaking) > 4 * max(np.mean(idle), 0.1), (idle, speaking)
    assert correlation > 0.5
    assert abs(lag) <= 0.04, "the clock must point at the frame whose sound plays, within one frame"


BONES = {  # the bones VRM 1.0 requires, as empty nodes where a body would put them (metres, +y up, facing +z)
    "hips": (0, -0.6, 0), "spine": (0, -0.45, 0), "head": (0, 0.0, 0.02), "leftUpperLeg": (0.1, -0.65, 0),
    "leftLowerLeg": (0.1, -1.1, 0), "leftFoot": (0.1, -1.5, 0), "rightUpperLeg": (-0.1, -0.65, 0),
    "rightLowerLeg": (-0.1, -1.1, 0), "rightFoot": (-0.1, -1.5, 0), "leftUpperArm": (0.2, -0.25, 0),
    "leftLowerArm": (0.45, -0.25, 0), "leftHand": (0.7, -0.25, 0), "rightUpperArm": (-0.2, -0.25, 0),
    "rightLowerArm": (-0.45, -0.25, 0), "rightHand": (-0.7, -0.25, 0),
}


def vrm_from_head(glb: bytes) -> bytes:
    """A minimal VRM 1.0 avatar made of the shipped head: the required humanoid bones as empty nodes, and the
    lip-sync and blink presets bound to the head's ARKit morph targets (as an avatar tool would bind them)."""
    gltf = pygltflib.GLTF2.load_from_bytes(glb)
    names = gltf.meshes[0].extras["targetNames"]
    bones = {}
    for bone, translation in BONES.items():
        gltf.nodes.append(pygltflib.Node(name=bone, translation=list(map(float, translation))))
        gltf.scenes[0].nodes.append(len(gltf.nodes) - 1)
        bones[bone] = {"node": len(gltf.nodes) - 1}
    presets = {"aa": "jawOpen", "ih": "mouthSmile_L", "ou": "mouthPucker", "ee": "mouthStretch_L",
               "oh": "mouthFunnel", "blinkLeft": "eyeBlink_L", "blinkRight": "eyeBlink_R"}
    gltf.extensionsUsed = [*gltf.extensionsUsed, "VRMC_vrm"]
    gltf.extensions = {**(gltf.extensions or {}), "VRMC_vrm": {
        "specVersion": "1.0",
        "meta": {"name": "anchorcast test head", "authors": ["anchorcast tests"],
                 "licenseUrl": "https://vrm.dev/licenses/1.0/"},
        "humanoid": {"humanBones": bones},
        "expressions": {"preset": {preset: {"morphTargetBinds": [{"node": 0, "index": names.index(target),
                                                                   "weight": 1.0}]}
                                   for preset, target in presets.items()}},
    }}
    return b"".join(gltf.save_to_bytes())


VRM_PAIR = """(() => {
  const a = window.anchorcast.avatar3d, s = a.state, w = s.lastApplied.weights;
  const weight = (name) => w[s.names.indexOf(name)];
  return [weight("jawOpen"), a.expression("aa"), weight("eyeBlink_L"), a.expression("blinkLeft")];
})()"""
"""The page's jawOpen and aa, eyeBlink_L and blinkLeft now."""


def test_a_vrm_avatar_from_the_profile_folder_speaks_with_its_presets(server: StudioServer) -> None:
    from tests.browser import browser_page

    head = httpx.get(f"{server.url}/static/avatar3d/head.glb", timeout=120).content
    (server.profiles / "head.vrm").write_bytes(vrm_from_head(head))
    with browser_page(320, 320) as page:
        page.goto(f"{server.url}/avatar3d/face?watch={watch_key(TOKEN, 'face')}&model=head.vrm&antialias=0")
        page.wait_for_function("window.anchorcast?.avatar3d?.state.applied > 5", timeout=120_000)
        state = page.evaluate("(({ model, error, bound }) => ({ model, error, bound }))"
                              "(window.anchorcast.avatar3d.state)")
        assert state == {"model": "vrm", "error": None, "bound": 7}
        png = page.screenshot(omit_background=True)  # no ?background=: transparent around the head, for OBS
        alpha = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)[:, :, 3]
        assert alpha[:20, :20].max() == 0 and alpha[150:170, 150:170].min() == 255
        said = httpx.post(f"{server.url}/v1/sessions/face/say", json={"text": SENTENCE}, headers=AUTH)
        assert said.status_code == 202
        # aa follows jawOpen, as the page's table maps it (VRM's own mouth override may zero it during a blink)
        pairs = []
        deadline = time.monotonic() + 120
        while len(pairs) < 20 and time.monotonic() < deadline:
            pair = page.evaluate(VRM_PAIR)
            if pair[0] > 0.05:
                pairs.append(pair)
            time.sleep(0.1)
        assert len(pairs) >= 20, "the speech's frames did not show"
        for jaw, aa, blink, blink_left in pairs:
            assert blink_left == pytest.approx(min(1.0, blink), abs=1e-3)
            assert aa == pytest.approx(min(1.0, jaw), abs=1e-3) or (blink > 0.5 and aa < jaw)
    while queued(server):
        time.sleep(0.5)
