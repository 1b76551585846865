"""Plugin loading through real entry points, policies, failure isolation, and every hook."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from anchorcast import hookspecs
from anchorcast.errors import PluginError
from anchorcast.host import Host
from anchorcast.media import Caption, Cue, Interrupt, Overrun, SpeechEnded, SpeechStarted
from anchorcast.plugin_manager import PluginManager, PluginPolicy
from tests.components import RecordingPlugin
from tests.conftest import make_profile

BUILTINS = {"script", "audio-file", "piper", "espeak", "viseme", "file"}


def make_distribution(root: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]) -> Path:
    """A real installed distribution (dist-info with entry_points.txt) that importlib.metadata finds."""
    root.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[anchorcast]\n{lines}\n")
    return root


GOOD_PLUGIN = """
    from anchorcast import hookimpl

    class NullOutput:
        live = False
        def open(self, fmt): pass
        def write(self, frame, audio): pass
        def close(self): pass

    @hookimpl
    def anchorcast_register_outputs(host, register):
        register("null", lambda host, settings: NullOutput(), summary="discards everything")
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_distribution(
        tmp_path / "site",
        "anchorcast-extras",
        {
            "good_plugin": GOOD_PLUGIN,
            "broken_plugin": "raise RuntimeError('this plugin is broken on purpose')\n",
            "bad_register": """
                from anchorcast import hookimpl

                @hookimpl
                def anchorcast_register_engines(host, register):
                    register("half", object)
                    raise ValueError("registration exploded")
            """,
        },
        {"good": "good_plugin", "broken": "broken_plugin", "badreg": "bad_register"},
    )
    monkeypatch.syspath_prepend(str(root))
    return root


def test_builtin_plugins_load_and_register_the_default_pipeline(host: Host) -> None:
    records = {r.name: r for r in host.plugins.records}
    assert set(records) >= BUILTINS
    assert all(records[name].status == "loaded" and records[name].builtin for name in BUILTINS)
    for kind, name in [("source", "script"), ("source", "audio-file"), ("voice", "piper"), ("voice", "espeak"),
                       ("engine", "viseme"), ("output", "file")]:
        assert host.plugins.component(kind, name) is not None, (kind, name)


def test_plugin_listing_imports_no_heavy_library() -> None:
    code = ("import sys; from anchorcast.host import Host; Host.create(); "
            "heavy = [m for m in ('cv2', 'av', 'piper', 'onnxruntime', 'torch', 'soxr') if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_broken_third_party_plugin_is_skipped_and_listed(third_party: Path) -> None:
    host = Host.create(PluginPolicy())
    records = {r.name: r for r in host.plugins.records}
    assert records["broken"].status == "failed"
    assert "this plugin is broken on purpose" in records["broken"].error
    assert records["broken"].distribution == "anchorcast-extras" and records["broken"].version == "1.2.3"
    assert records["good"].status == "loaded" and records["good"].registers == ["output:null"]
    assert host.plugins.component("output", "null") is not None
    # a plugin whose registration raises is failed and its partial registrations withdrawn
    assert records["badreg"].status == "failed" and "registration exploded" in records["badreg"].error
    assert host.plugins.component("engine", "half") is None
    assert host.plugins.component("engine", "viseme") is not None


def test_strict_mode_makes_a_broken_plugin_fatal(third_party: Path) -> None:
    with pytest.raises(PluginError, match="broken"):
        Host.create(PluginPolicy(strict=True))


def test_allow_and_block_lists(third_party: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    host = Host.create(PluginPolicy(allow=frozenset({"good"}), block=frozenset({"espeak"})))
    records = {r.name: r for r in host.plugins.records}
    assert records["good"].status == "loaded"
    assert records["broken"].status == "not allowed"
    assert records["espeak"].status == "blocked" and host.plugins.component("voice", "espeak") is None
    assert records["script"].status == "loaded"  # built-ins are not subject to the allowlist
    monkeypatch.setenv("ANCHORCAST_PLUGINS_BLOCK", "broken, badreg")
    policy = PluginPolicy.from_sources(block=["good"])
    assert policy.block == {"broken", "badreg", "good"}
    records = {r.name: r for r in Host.create(policy).plugins.records}
    assert {records[n].status for n in ("broken", "badreg", "good")} == {"blocked"}


def test_cli_plugins_lists_a_failed_plugin_and_strict_env_fails(third_party: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{third_party}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "COLUMNS": "200"}
    listing = subprocess.run([sys.executable, "-m", "anchorcast", "plugins"], capture_output=True, text=True,
                             env=env, timeout=120)
    assert listing.returncode == 0, listing.stderr
    assert "broken" in listing.stdout and "failed" in listing.stdout
    assert "output:null" in listing.stdout
    assert "Traceback" not in listing.stdout + listing.stderr
    strict = subprocess.run([sys.executable, "-m", "anchorcast", "plugins"], capture_output=True, text=True,
                            env={**env, "ANCHORCAST_STRICT_PLUGINS": "1"}, timeout=120)
    assert strict.returncode != 0
    assert "broken" in strict.stderr and "Traceback" not in strict.stderr


def test_every_hookspec_is_exercised(host: Host, plugin: RecordingPlugin) -> None:
    """Registration hooks at creation, lifecycle and events during a run, commands through the CLI parser."""
    names = {name for name in dir(hookspecs) if name.startswith("anchorcast_")}
    assert names == {
        "anchorcast_register_sources", "anchorcast_register_voices", "anchorcast_register_engines",
        "anchorcast_register_outputs", "anchorcast_register_commands", "anchorcast_startup",
        "anchorcast_shutdown", "anchorcast_event", "anchorcast_metrics",
    }
    registered = [name for name, _ in plugin.calls]
    for hook in ("register_sources", "register_voices", "register_engines", "register_outputs",
                 "register_commands"):
        assert hook in registered
        assert next(h for name, h in plugin.calls if name == hook) is host
    assert "test-hello" in host.plugins.commands

    profile = host.load_profile(None, raw=make_profile([("first sentence", "Studio"), ("second one", "")]))
    report = host.run(profile)
    calls = [name for name, _ in plugin.calls]
    assert calls.index("startup") < calls.index("event") < calls.index("shutdown")
    assert calls.count("startup") == 1 and calls.count("shutdown") == 1
    kinds = [event.kind for event in plugin.events()]
    assert kinds == ["cue", "caption", "speech_started", "speech_ended", "caption", "speech_started",
                     "speech_ended"]
    assert [e.text for e in plugin.events("caption")] == ["first sentence", "second one"]
    assert plugin.events("cue")[0].name == "Studio"
    metrics = [r for name, r in plugin.calls if name == "metrics"]
    assert metrics and metrics[-1]["frames"] == report["frames"]
    assert plugin.outputs[-1].closed


def test_event_hook_failures_do_not_stop_the_stream(host: Host, plugin: RecordingPlugin) -> None:
    from anchorcast import hookimpl

    class Exploding:
        @hookimpl
        def anchorcast_event(self, host, event):
            raise RuntimeError("side plugin failed")

    host.plugins.register_module(Exploding())
    report = host.run(host.load_profile(None, raw=make_profile()))
    assert report["frames"] > 0 and host.event_failures > 0
    assert plugin.events("speech_started")  # the others still got their events


def test_event_types_have_kinds() -> None:
    events = [SpeechStarted(0.0), SpeechEnded(0.0), Caption(0.0, "x"), Cue(0.0, "s"), Overrun(0.0), Interrupt(0.0)]
    assert [e.kind for e in events] == ["speech_started", "speech_ended", "caption", "cue", "overrun", "interrupt"]


def test_plugin_command_runs_through_the_cli(plugin: RecordingPlugin, monkeypatch: pytest.MonkeyPatch) -> None:
    from anchorcast import cli

    original = Host.create
    monkeypatch.setattr(Host, "create", classmethod(lambda cls, *a, **k: original(*a, extra_plugins=(plugin,), **k)))
    assert cli.main(["test-hello", "--shout"]) == 7
    assert ("command", True) in plugin.calls


def test_invalid_hookimpl_is_reported() -> None:
    from anchorcast import hookimpl

    class Wrong:
        @hookimpl
        def anchorcast_register_outputs(self, host, register, unexpected):
            pass

    manager = PluginManager(PluginPolicy())
    record = manager.register_module(Wrong())
    assert record.status == "failed" and "unexpected" in record.error


def test_a_component_missing_its_package_is_a_clear_error(host: Host, plugin: RecordingPlugin) -> None:
    from anchorcast import hookimpl
    from anchorcast.errors import AnchorcastError

    class NeedsSdk:
        live = False

        def open(self, fmt):
            import vendor_sdk_that_is_not_installed  # noqa: F401

    class SdkPlugin:
        @hookimpl
        def anchorcast_register_outputs(self, host, register):
            register("sdk-out", lambda host, settings: NeedsSdk())

    host.plugins.register_module(SdkPlugin())
    host.plugins.collect(host)
    profile = host.load_profile(None, raw=make_profile(outputs={"sdk": {"use": "sdk-out"}}))
    with pytest.raises(AnchorcastError, match=r"\[outputs.sdk\] output 'sdk-out' .* needs a package that is not "
                                              r"installed: No module named 'vendor_sdk_that_is_not_installed'"):
        host.run(profile)
    assert plugin.outputs[-1].closed  # what was opened before the failure is closed again


def test_a_plugin_with_a_taken_name_fails_without_disabling_the_first() -> None:
    first, second = RecordingPlugin(), RecordingPlugin()
    host = Host.create(PluginPolicy(), extra_plugins=(first, second))
    records = [r for r in host.plugins.records if r.name == "RecordingPlugin"]
    assert [r.status for r in records] == ["loaded", "failed"]
    assert "already registered" in records[1].error
    assert host.plugins.component("source", "test-list") is not None
    assert host.plugins.pm.get_plugin("RecordingPlugin") is first


def test_builtin_means_shipped_by_anchorcast_not_named_like_it(tmp_path: Path, monkeypatch) -> None:
    root = make_distribution(tmp_path / "site", "evil-extras", {"anchorcast_plugins_evil": GOOD_PLUGIN},
                             {"evil": "anchorcast_plugins_evil"})
    monkeypatch.syspath_prepend(str(root))
    host = Host.create(PluginPolicy(allow=frozenset({"viseme"})))
    record = next(r for r in host.plugins.records if r.name == "evil")
    assert not record.builtin and record.status == "not allowed"


def test_a_failing_startup_hook_does_not_stop_the_run(host: Host, plugin: RecordingPlugin) -> None:
    from anchorcast import hookimpl

    class BrokenStartup:
        @hookimpl
        def anchorcast_startup(self, host):
            raise RuntimeError("OBS is not running")

    host.plugins.register_module(BrokenStartup())
    report = host.run(host.load_profile(None, raw=make_profile()))
    assert report["frames"] > 0 and host.event_failures >= 1
    assert ("startup", host) in plugin.calls


def test_cli_messages_keep_square_brackets_and_plugin_commands_explain_missing_packages(
    plugin: RecordingPlugin, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from anchorcast import cli
    from anchorcast.errors import AnchorcastError

    calls = []

    def run(host, args):
        calls.append(1)
        if len(calls) > 1:
            raise AnchorcastError("[engine] weights missing", hint="see [docs]")
        import vendor_sdk_that_is_not_installed  # noqa: F401

    original = Host.create

    def create(cls, *a, **k):
        host = original(*a, extra_plugins=(plugin,), **k)
        command = host.plugins.commands["test-hello"]
        host.plugins.commands["test-hello"] = type(command)(command.name, command.configure, run, "", command.plugin)
        return host

    monkeypatch.setattr(Host, "create", classmethod(create))
    assert cli.main(["test-hello"]) == 1
    err = capsys.readouterr().err
    assert "`anchorcast test-hello`" in err and "vendor_sdk_that_is_not_installed" in err
    assert "anchorcast[wav2lip]" in err and "Traceback" not in err
    assert cli.main(["test-hello"]) == 1
    err = capsys.readouterr().err
    assert "[engine] weights missing" in err and "see [docs]" in err  # printed as written, not as markup
