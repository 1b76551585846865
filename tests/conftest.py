"""Shared fixtures: hosts with the recording test plugin, and profile tables for it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from anchorcast.host import Host
from anchorcast.plugin_manager import PluginPolicy
from tests import pulse as pulse_module
from tests.components import RecordingPlugin
from tests.pulse import PulseAudio


@pytest.fixture
def plugin() -> RecordingPlugin:
    return RecordingPlugin()


@pytest.fixture
def host(plugin: RecordingPlugin) -> Host:
    """A host with the built-in plugins (entry points) and the recording plugin."""
    return Host.create(PluginPolicy(), extra_plugins=(plugin,))


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseAudio]:
    """A private PulseAudio server with a loopback microphone (skips where PulseAudio is missing)."""
    if pulse_module.available() is not None:
        pytest.skip(str(pulse_module.available()))
    server = PulseAudio()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def make_profile(lines: list[tuple[str, str]] | None = None, **tables: Any) -> dict[str, Any]:
    """A profile table using the test components; keyword tables are merged over it."""
    raw: dict[str, Any] = {
        "stream": {"width": 64, "height": 48, "fps": 25, "sample_rate": 16000},
        "scheduler": {"lead_in_ms": 200, "tail_ms": 200, "pause_ms": 100},
        "source": {"use": "test-list", "lines": [list(x) for x in (lines or [("hello there", "")])]},
        "voice": {"use": "test-tone"},
        "engine": {"use": "test-level"},
        "outputs": {"collect": {"use": "test-collect"}},
    }
    for name, table in tables.items():
        raw.setdefault(name, {}).update(table)
    return raw


