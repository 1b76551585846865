"""Stored backend decisions (``backend = "auto"`` measured once, reused while nothing it depends on changes) and
the set-up progress a first open reports."""

from __future__ import annotations

import io
import json
import logging
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from anchorcast import setup_progress
from anchorcast.setup_display import SetupDisplay
from anchorcast_plugins.engines.wav2lip import decisions
from anchorcast_plugins.engines.wav2lip.avatar import Avatar, open_avatar
from anchorcast_plugins.engines.wav2lip.backend_choice import AvatarBackend, Tolerance, backend_for_avatar
from anchorcast_plugins.engines.wav2lip.devices import select_device
from anchorcast_plugins.engines.wav2lip.engine import calibration_mels
from tests.wav2lip_inputs import ASTRONAUT, FACE_BOX, random_weights_home

TOP, BOTTOM, LEFT, RIGHT = FACE_BOX
ASTRONAUT_BOX = (LEFT, TOP, RIGHT - LEFT, BOTTOM - TOP)  # x, y, w, h


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with random_weights_home(tmp_path_factory.mktemp("decisions-home")) as root:
        yield root


@pytest.fixture(scope="module")
def generator(home: Path) -> tuple[Any, str]:
    """The random generator imported as "test-gen", and its weights id."""
    from anchorcast_plugins.engines.wav2lip.checkpoints import build_model
    from anchorcast_plugins.engines.wav2lip.weights_store import resolve_weights, weights_id

    loaded = resolve_weights("test-gen")
    return build_model("generator", loaded.state_dict), weights_id(loaded)


@pytest.fixture(scope="module")
def avatar(home: Path) -> Avatar:
    return open_avatar(ASTRONAUT, home / "avatars", face_box=ASTRONAUT_BOX)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return calibration_mels()


class Mels:
    """The calibration mel windows, counting how often they are asked for: measuring needs them, a stored
    decision does not."""

    def __init__(self, mels: np.ndarray) -> None:
        self.mels = mels
        self.calls = 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        return self.mels


@pytest.fixture
def open_auto(generator: tuple[Any, str], avatar: Avatar, speech: np.ndarray, tmp_path: Path):
    """``backend_for_avatar`` with ``auto`` on the torch candidate alone (fast), a decisions folder of this test,
    small measurements; returns (bound backend, calibration calls, log lines)."""
    model, weights = generator
    folder = tmp_path / "decisions"
    opened: list[AvatarBackend] = []

    def run(**options: Any) -> tuple[AvatarBackend, int, list[str]]:
        mels, lines = Mels(speech), []
        options = {"avatar": avatar, "weights_id": weights, **options}
        store = decisions.DecisionStore(options["weights_id"], folder)
        bound = backend_for_avatar(
            model, select_device("cpu"), options.pop("avatar"), options.pop("weights_id"), request="auto",
            calibration_mels=mels, candidates=("torch-fp32",), samples=2, batch_size=1, decisions=store,
            log=lines.append, **options,
        )  # fmt: skip
        opened.append(bound)
        return bound, mels.calls, lines

    run.folder = folder  # type: ignore[attr-defined]
    yield run
    for bound in opened:
        bound.close()


def entries(folder: Path) -> dict[str, Any]:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())["entries"]


def test_a_stored_decision_is_reused_without_measuring(open_auto) -> None:
    first, made, lines = open_auto()
    assert made == 1 and first.decision is not None
    assert any("measuring backends: no decision is stored" in line for line in lines), lines
    (stored,) = entries(open_auto.folder).values()
    assert stored["backend"] == "torch-fp32" and stored["key"]["cpu"]["cores"] >= 1

    again, made, lines = open_auto()
    assert made == 0  # no calibration or evaluation set was made: nothing was measured
    assert again.decision is not None and again.decision.measured_at == first.decision.measured_at
    assert [r.frames_per_s for r in again.reports] == [r.frames_per_s for r in first.reports]
    assert lines == [f"wav2lip: backend torch-fp32 as decided on {stored['measured_at'][:10]} "
                     f"({first.reports[0].frames_per_s:.1f} frames/s; --remeasure to measure again)"]
    mel = np.zeros((1, 1, 80, 16), np.float32)
    np.testing.assert_array_equal(again.predict(mel, [0]), first.predict(mel, [0]))


def _other_cpu(facts: dict[str, Any], what: str) -> dict[str, Any]:
    cpu = dict(facts["cpu"])
    if what == "model":
        cpu["model"] = "Another CPU"
    elif what == "flags":
        cpu["flags"] = [*cpu["flags"], "avx512_vnni"] if "avx512_vnni" not in cpu["flags"] else []
    elif what == "cores":
        cpu["cores"] = cpu["cores"] + 2
    else:
        cpu["onednn_max_cpu_isa"] = "AVX2"
    return {**facts, "cpu": cpu}


CHANGES: dict[str, tuple[str, Callable[..., dict[str, Any]]]] = {
    "weights": ("no decision is stored for these weights yet", lambda ctx: {"weights_id": "other-weights"}),
    "avatar source": ("the avatar changed (another source)", lambda ctx: {"avatar": ctx["other_source"]()}),
    "avatar preparation": ("the avatar changed (prepared again)", lambda ctx: {"avatar": ctx["other_box"]()}),
    "cpu model": ("the CPU changed (was ", lambda ctx: ctx["facts"](lambda f: _other_cpu(f, "model"))),
    "cpu flags": ("the CPU changed (was ", lambda ctx: ctx["facts"](lambda f: _other_cpu(f, "flags"))),
    "cpu cores": ("the CPU changed (was ", lambda ctx: ctx["facts"](lambda f: _other_cpu(f, "cores"))),
    "onednn isa": ("the CPU changed (was ", lambda ctx: ctx["facts"](lambda f: _other_cpu(f, "isa"))),
    "library versions": ("the library versions changed (openvino ", lambda ctx: ctx["facts"](
        lambda f: {**f, "libraries": {**f["libraries"], "openvino": "9999.0"}})),
    "tolerance": ("the tolerance changed", lambda ctx: {"tolerance": Tolerance(psnr_db=30.0)}),
}  # fmt: skip


@pytest.mark.parametrize("change", list(CHANGES))
def test_each_key_invalidates_the_decision(
    change: str, open_auto, avatar: Avatar, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_auto()
    real_facts = decisions.machine_facts

    def facts(alter: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any]:
        monkeypatch.setattr(decisions, "machine_facts", lambda: alter(real_facts()))  # the environment, not ours
        return {}

    def other_source() -> Avatar:
        copy = tmp_path / "astronaut-copy.png"
        import cv2

        image = cv2.imread(str(ASTRONAUT))
        image[0, 0] = 255 - image[0, 0]  # another file, the same face
        cv2.imwrite(str(copy), image)
        return open_avatar(copy, tmp_path / "avatars", face_box=ASTRONAUT_BOX)

    def other_box() -> Avatar:
        x, y, w, h = ASTRONAUT_BOX
        return open_avatar(ASTRONAUT, tmp_path / "avatars", face_box=(x + 4, y, w, h))

    expected, make = CHANGES[change]
    options = make({"facts": facts, "other_source": other_source, "other_box": other_box})
    changed, made, lines = open_auto(**options)
    assert made == 1 and changed.decision is not None, lines  # measured again, and stored
    assert any(f"measuring backends: {expected}" in line for line in lines), lines
    if change != "weights":  # other weights have a file of their own
        assert len(entries(open_auto.folder)) == 2  # the first decision is kept beside the new one
    monkeypatch.setattr(decisions, "machine_facts", real_facts)
    _, made, _ = open_auto()
    assert made == 0  # back to the first key: its decision again


def test_remeasure_measures_again_and_replaces_the_entry(open_auto) -> None:
    first, _, _ = open_auto()
    (before,) = entries(open_auto.folder).values()
    again, made, lines = open_auto(remeasure=True)
    assert made == 1 and any("measuring backends: asked to measure again" in line for line in lines), lines
    (after,) = entries(open_auto.folder).values()  # replaced, not added
    assert again.decision is not None and first.decision is not None and again.decision.key == first.decision.key
    assert after["reports"][0]["frames_per_s"] == again.reports[0].frames_per_s
    assert after["reports"][0]["frames_per_s"] != before["reports"][0]["frames_per_s"]  # a new timing


@pytest.mark.parametrize("damage", ["not json {", '{"format": "something else"}', "entry"])
def test_a_damaged_decisions_file_is_survived_and_rewritten(
    damage: str, open_auto, caplog: pytest.LogCaptureFixture
) -> None:
    open_auto()
    (path,) = open_auto.folder.glob("*.json")
    if damage == "entry":
        data = json.loads(path.read_text())
        for entry in data["entries"].values():
            del entry["reports"]
        path.write_text(json.dumps(data))
    else:
        path.write_text(damage)
    with caplog.at_level(logging.WARNING):
        bound, made, _ = open_auto()
    assert made == 1 and bound.name == "torch-fp32"
    assert "ignoring" in caplog.text and str(path) in caplog.text
    (entry,) = entries(open_auto.folder).values()  # rewritten whole
    assert entry["backend"] == "torch-fp32" and entry["reports"]
    _, made, _ = open_auto()
    assert made == 0


def test_a_decided_backend_that_cannot_be_built_any_more_is_measured_again(
    open_auto, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_auto()
    (path,) = open_auto.folder.glob("*.json")
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry["backend"] = "openvino-int8"  # decided when OpenVINO was installed...
    path.write_text(json.dumps(data))
    monkeypatch.setitem(sys.modules, "openvino", None)  # ...which it no longer is
    bound, made, lines = open_auto()
    assert made == 1 and bound.name == "torch-fp32"
    assert any("measuring backends: the decided backend openvino-int8 cannot be built any more" in line
               and "needs OpenVINO" in line for line in lines), lines
    (entry,) = entries(open_auto.folder).values()
    assert entry["backend"] == "torch-fp32"


def test_an_explicit_backend_neither_reads_nor_stores_a_decision(generator, avatar, speech, tmp_path) -> None:
    model, weights = generator
    store = decisions.DecisionStore(weights, tmp_path)
    bound = backend_for_avatar(model, select_device("cpu"), avatar, weights, request="torch",
                               calibration_mels=speech, samples=2, batch_size=1, decisions=store)
    assert bound.name == "torch-fp32" and bound.decision is None and not store.path.exists()
    bound.close()


# --- set-up progress -------------------------------------------------------------------------------------------


class FramesAvatar:
    """What backend_for_avatar reads from an avatar: 20 frames of crops (more than one encoding chunk)."""

    def __init__(self, folder: Path) -> None:
        import cv2

        face = cv2.resize(cv2.imread(str(ASTRONAUT))[TOP:BOTTOM, LEFT:RIGHT], (96, 96))
        self.crops = np.stack([np.roll(face, shift, axis=1) for shift in range(20)])
        self.folder = folder
        self.source_sha256 = "twenty-frames"

    def features_path(self, weights_id: str) -> Path:
        return self.folder / "features" / f"{weights_id}.npy"


def test_a_first_open_reports_its_steps_and_a_warm_one_nothing(open_auto, tmp_path: Path) -> None:
    avatar = FramesAvatar(tmp_path / "avatar")
    seen: list[setup_progress.SetupStep] = []
    with setup_progress.reporting(seen.append):
        open_auto(avatar=avatar)
    encoding = [step for step in seen if step.title == "encoding face features"]
    assert [(s.done, s.total) for s in encoding if not s.finished] == [(None, 20), (16, 20), (20, 20)]
    assert encoding[-1].finished and not encoding[-1].failed
    measuring = [step for step in seen if step.title == "measuring backends"]
    assert measuring[0].done is None and measuring[-1].finished and measuring[-1].done == 1

    seen.clear()
    with setup_progress.reporting(seen.append):
        _, made, _ = open_auto(avatar=avatar)
    assert seen == [] and made == 0  # features cached, decision stored: nothing to do, nothing shown


def test_steps_show_as_plain_lines_off_a_terminal() -> None:
    text = io.StringIO()
    console = Console(file=text, width=200)
    display = SetupDisplay(console, progress=None)  # type: ignore[arg-type]  # never drawn off a terminal
    with setup_progress.reporting(display):
        with setup_progress.step("encoding face features", 40, unit="frames") as step:
            step.update(16)
            step.update(32)
            step.update(40)
        with setup_progress.step("building openvino-int8 (export + calibration + compile)", estimate_s=12.0):
            pass
    lines = text.getvalue().splitlines()
    assert lines[0] == "setup: encoding face features 0/40 frames"
    assert lines[1].startswith("setup: encoding face features: 40 frames in ")  # updates within 5 s are quiet
    assert lines[2] == "setup: building openvino-int8 (export + calibration + compile), 12 s left"
    assert lines[3].startswith("setup: building openvino-int8 (export + calibration + compile): in ")
    assert len(lines) == 4


def test_the_eta_comes_from_the_rate_so_far() -> None:
    step = setup_progress.SetupStep(1, "encoding", done=10, total=40, started=time.monotonic() - 5.0)
    assert step.eta_s() == pytest.approx(15.0, abs=0.2)  # 10 frames in 5 s: 30 more take 15 s
    assert replace(step, done=None, total=None, estimate_s=12.0).eta_s() == pytest.approx(7.0, abs=0.2)
    assert replace(step, finished=True).eta_s() == 0.0


# --- the engine and the commands (slow: they measure every candidate) -----------------------------------------------


@pytest.mark.slow
def test_weights_bench_stores_the_decision_a_run_reuses_and_remeasure_replaces(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from anchorcast.cli import main
    from anchorcast.media import StreamFormat
    from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine, throughput_streams

    monkeypatch.setenv("COLUMNS", "200")  # the whole table
    portrait = tmp_path / "portrait.png"
    shutil.copy(ASTRONAUT, portrait)
    box = ",".join(str(v) for v in ASTRONAUT_BOX)
    assert main(["weights", "bench", "no-such-weights"]) == 1
    assert "no weights named 'no-such-weights'" in capsys.readouterr().err

    assert main(["weights", "bench", "test-gen", "--avatar", str(portrait), "--face-box", box]) == 0
    printed = capsys.readouterr().out
    assert "openvino-int8" in printed and "chosen" in printed and "frames/s" in printed
    fast_streams = throughput_streams()
    assert printed.count("stored with the weights") == len({1, fast_streams})  # live runs' and fast runs'
    (path,) = (home / "weights" / "decisions").glob("*.json")
    by_streams = {entry["key"]["streams"]: entry for entry in json.loads(path.read_text())["entries"].values()}
    assert sorted(by_streams) == sorted({1, fast_streams})
    bench = by_streams[1]

    settings = {"weights": "test-gen", "avatar": portrait, "face_box": list(ASTRONAUT_BOX), "device": "cpu",
                "backend": "auto", "max_batch": 4}
    fmt = StreamFormat(640, 360, Fraction(25), 16000)
    engine = Wav2LipEngine(dict(settings))
    with caplog.at_level(logging.INFO):
        engine.open(fmt)
    try:
        assert engine.backend.name == bench["backend"]
        assert engine.backend.decision.measured_at == bench["measured_at"]
        assert f"backend {bench['backend']} as decided on" in caplog.text
        assert "measuring backends" not in caplog.text
    finally:
        engine.close()

    fast = Wav2LipEngine(dict(settings))
    fast.set_pacing(False)  # pace = "fast": throughput mode, its own decision
    fast.open(fmt)
    try:
        assert fast.backend.decision.measured_at == by_streams[fast_streams]["measured_at"]
    finally:
        fast.close()

    caplog.clear()
    engine = Wav2LipEngine({**settings, "remeasure": True})
    with caplog.at_level(logging.INFO):
        engine.open(fmt)
    engine.close()
    assert "measuring backends: asked to measure again" in caplog.text
    entries = json.loads(path.read_text())["entries"].values()
    assert len(entries) == len(by_streams)  # the same key: replaced
    (entry,) = [entry for entry in entries if entry["key"]["streams"] == 1]
    assert [r["frames_per_s"] for r in entry["reports"]] != [r["frames_per_s"] for r in bench["reports"]]


def test_run_remeasure_needs_an_engine_that_measures(capsys: pytest.CaptureFixture[str]) -> None:
    from anchorcast.cli import main

    assert main(["run", "default", "--remeasure", "--text", "Hi."]) == 1
    err = capsys.readouterr().err
    assert "--remeasure: the engine 'viseme' has no backends to measure" in err and "Traceback" not in err
