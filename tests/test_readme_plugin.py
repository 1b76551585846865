"""The README's "write a plugin" example, taken from the README itself, installed as a real distribution."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from anchorcast.host import Host
from anchorcast.plugin_manager import PluginPolicy
from tests.components import RecordingPlugin
from tests.conftest import make_profile
from tests.test_plugins import make_distribution

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_example() -> tuple[dict, str]:
    text = README.read_text()
    section = text[text.index("## Write a plugin"):]
    pyproject = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    module = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert pyproject and module
    return tomllib.loads(pyproject[1]), module[1]


def test_readme_plugin_installs_registers_and_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pyproject, source = readme_example()
    entry_points = pyproject["project"]["entry-points"]["anchorcast"]
    (name, module), = entry_points.items()
    root = make_distribution(tmp_path / "site", pyproject["project"]["name"], {module: source}, entry_points)
    monkeypatch.syspath_prepend(str(root))

    recorder = RecordingPlugin()
    host = Host.create(PluginPolicy(), extra_plugins=(recorder,))
    record = next(r for r in host.plugins.records if r.name == name)
    assert record.status == "loaded" and record.registers == ["output:tally"]

    raw = make_profile([("tally this", "")], outputs={"tally": {"every": 10}})
    report = host.run(host.load_profile(None, raw=raw))
    printed = capsys.readouterr().out
    assert f"tally: {report['frames']} frames in all" in printed
    assert "tally: 10 frames" in printed and "tally: speech_started at" in printed
    assert recorder.outputs  # the recording output ran beside it
