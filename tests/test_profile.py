"""Profiles are validated as a whole: every problem names the file, the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from anchorcast.errors import ProfileError
from anchorcast.host import Host
from anchorcast.profile import apply_assignment, bundled_profiles, find_profile, parse_assignment
from tests.conftest import make_profile


def write(tmp_path: Path, text: str, name: str = "show.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(host: Host, path: Path, **kwargs) -> str:
    with pytest.raises(ProfileError) as caught:
        host.load_profile(path, **kwargs)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_bundled_default_profile_is_valid(host: Host) -> None:
    path = find_profile(None)
    assert path == bundled_profiles()["default"]
    profile = host.load_profile(path)
    assert (profile.source.use, profile.voice and profile.voice.use, profile.engine.use) == ("script", "piper", "viseme")
    assert profile.stream.fps == Fraction(25) and (profile.stream.width, profile.stream.height) == (1280, 720)
    assert profile.source.settings["path"].is_file()  # resolved against the profile's folder
    assert list(profile.outputs) == ["file"]


def test_unknown_key_names_the_key_and_suggests(host: Host, tmp_path: Path) -> None:
    path = write(tmp_path, '[source]\nuse = "script"\ntext = "Hi."\n[engine]\nuse = "viseme"\navatr = "x.png"\n'
                           '[outputs.file]\npath = "a.mp4"\n')
    message = problems(host, path)
    assert "engine.avatr" in message and "did you mean 'avatar'" in message and "allowed:" in message


def test_wrong_type_unknown_plugin_and_missing_file_are_all_reported(host: Host, tmp_path: Path) -> None:
    path = write(tmp_path, '[stream]\nfps = "fast"\nwidth = 1281\n[source]\nuse = "script"\npath = "nope.md"\n'
                           '[voice]\nuse = "pipr"\n[outputs.file]\npath = "a.mp4"\n[schedular]\n')
    message = problems(host, path)
    assert "stream.fps: must be a number, got 'fast'" in message
    assert "stream.width: must be even" in message
    assert "source.path: no such file" in message and "nope.md" in message
    assert "voice.use: unknown voice 'pipr' (did you mean 'piper'?)" in message and "espeak" in message
    assert "schedular" in message and "did you mean [scheduler]" in message
    assert "5 problems" in message


def test_choices_ranges_and_even_sizes(host: Host, tmp_path: Path) -> None:
    path = write(tmp_path, '[stream]\nwidth = 641\nsample_rate = 100\n[scheduler]\noverrun = "panic"\n'
                           '[source]\nuse = "script"\ntext = "x"\n[outputs.file]\n')
    message = problems(host, path)
    assert "scheduler.overrun: 'panic' is not one of 'repeat', 'idle', 'fallback'" in message
    assert "stream.sample_rate: must be at least 8000" in message
    assert "stream.width: must be even" in message


def test_missing_source_and_outputs(host: Host, tmp_path: Path) -> None:
    message = problems(host, write(tmp_path, "[engine]\nuse = 'viseme'\n"))
    assert "source.use: required" in message and "script" in message
    assert "outputs: at least one output is required" in message


def test_fallback_policy_needs_an_engine(host: Host, tmp_path: Path) -> None:
    path = write(tmp_path, '[scheduler]\noverrun = "fallback"\n[source]\nuse = "script"\ntext = "x"\n'
                           '[outputs.file]\n')
    assert "scheduler.fallback" in problems(host, path)


def test_invalid_toml_names_the_file(host: Host, tmp_path: Path) -> None:
    path = write(tmp_path, "[stream\nwidth = 3\n")
    assert "not valid TOML" in problems(host, path)


def test_secrets_come_from_the_environment(host: Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anchorcast import hookimpl
    from anchorcast.components import Setting

    class SecretOutput:
        @hookimpl
        def anchorcast_register_outputs(self, host, register):
            register("secretive", lambda host, s: s, settings={"key": Setting(str, secret_env="ANCHOR_TEST_KEY")})

    host.plugins.register_module(SecretOutput())
    host.plugins.collect(host)
    raw = make_profile(outputs={"s": {"use": "secretive", "key": "oops"}})
    with pytest.raises(ProfileError, match="secrets never go in a profile: set the environment variable ANCHOR_TEST_KEY"):
        host.load_profile(None, raw=raw)
    raw = make_profile(outputs={"s": {"use": "secretive"}})
    with pytest.raises(ProfileError, match="outputs.s.key: set the environment variable ANCHOR_TEST_KEY"):
        host.load_profile(None, raw=raw)
    monkeypatch.setenv("ANCHOR_TEST_KEY", "s3cret")
    assert host.load_profile(None, raw=raw).outputs["s"].settings["key"] == "s3cret"


def test_set_overrides_by_dotted_path(host: Host) -> None:
    overrides = [parse_assignment("stream.fps=30"), parse_assignment("scheduler.overrun=idle"),
                 parse_assignment("stream.width = 640"), parse_assignment("stream.height=360")]
    profile = host.load_profile(bundled_profiles()["default"], overrides=overrides)
    assert profile.stream.fps == 30 and profile.scheduler.overrun == "idle"
    assert (profile.stream.width, profile.stream.height) == (640, 360)
    assert parse_assignment("stream.fps=29.97")[1] == 29.97
    assert host.load_profile(None, raw=make_profile(stream={"fps": 29.97})).stream.fps == Fraction(30000, 1001)
    assert parse_assignment('source.text=Good evening, "world"')[1] == 'Good evening, "world"'
    with pytest.raises(ProfileError, match="KEY=VALUE"):
        parse_assignment("stream.fps")
    raw: dict = {"stream": 3}
    with pytest.raises(ProfileError, match="stream is a value"):
        apply_assignment(raw, "stream.fps", 30)


def test_unknown_profile_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ProfileError, match="no such profile") as caught:
        find_profile("nonexistent-profile")
    assert "default" in (caught.value.hint or "")


def test_profile_check_cli(tmp_path: Path) -> None:
    good = subprocess.run([sys.executable, "-m", "anchorcast", "profile", "check", "default"],
                          capture_output=True, text=True, timeout=120)
    assert good.returncode == 0 and "ok" in good.stdout
    bad = write(tmp_path, '[source]\nuse = "script"\ntext = "x"\n[engine]\nuse = "visme"\n[outputs.file]\n')
    result = subprocess.run([sys.executable, "-m", "anchorcast", "profile", "check", str(bad)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert str(bad) in result.stderr and "engine.use" in result.stderr and "viseme" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_profile_that_is_not_utf8_is_a_clear_error(host: Host, tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("# café\n[source]\nuse = 'script'\n".encode("latin-1"))
    assert "not UTF-8" in problems(host, path)


@pytest.mark.parametrize("name", sorted(bundled_profiles()))
def test_every_bundled_profile_validates(host: Host, name: str) -> None:
    profile = host.load_profile(bundled_profiles()[name])
    assert profile.outputs and profile.engine.use in {"viseme", "wav2lip", "face3d"}
