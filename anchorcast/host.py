"""The host: loads plugins, builds a profile's components, runs the scheduler and relays lifecycle and events.

Every hook receives the host, so new needs become attributes here instead of new hook arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from anchorcast.components import LipEngine, Output, Source, Voice
from anchorcast.errors import AnchorcastError
from anchorcast.media import Event, StreamFormat, VoiceFailed
from anchorcast.plugin_manager import PluginManager, PluginPolicy
from anchorcast.profile import Profile, Stage, load_profile, plugin_settings
from anchorcast.scheduler import Scheduler

log = logging.getLogger(__name__)


class Host:
    """One anchorcast process: the plugin manager, the registry and (while running) the current stream.

    Attributes plugins may read: ``plugins`` (the :class:`PluginManager`), ``profile`` and ``format`` of the
    current run, ``scheduler`` while a run is in progress, ``last_report`` (the latest metrics report),
    ``session`` (the studio server's session id when this host runs one, else None: a session stays on air, so
    components may behave as for a long broadcast, e.g. an idle anchor that blinks).
    """

    def __init__(self, manager: PluginManager) -> None:
        self.plugins = manager
        self.profile: Profile | None = None
        self.format: StreamFormat | None = None
        self.scheduler: Scheduler | None = None
        self.last_report: dict[str, Any] = {}
        self.event_failures = 0
        self.component_names: dict[int, str] = {}
        """The profile's name (``stage.use``) of each component this host built, by ``id``: what events call it."""
        self._built: list[Any] = []
        self.session: str | None = None
        self.overlay: dict[str, Any] | None = None
        """A studio-server session's overlay page: ``{"url", "width", "height"}``."""

    @classmethod
    def create(
        cls,
        policy: PluginPolicy | None = None,
        *,
        entry_points: bool = True,
        extra_plugins: tuple[object, ...] = (),
    ) -> Host:
        """A host with plugins loaded from entry points (and ``extra_plugins`` registered in process)."""
        manager = PluginManager(policy)
        if entry_points:
            manager.load_entry_points()
        for plugin in extra_plugins:
            manager.register_module(plugin)
        host = cls(manager)
        manager.collect(host)
        return host

    @classmethod
    def for_profile(cls, path: Path | None, raw: dict[str, Any] | None = None, **kwargs: Any) -> Host:
        """A host whose plugin policy comes from the profile's ``[plugins]`` table and the environment."""
        settings = plugin_settings(path, raw)
        policy = PluginPolicy.from_sources(settings["allow"], settings["block"], settings["strict"])
        return cls.create(policy, **kwargs)

    @property
    def hook(self) -> Any:
        return self.plugins.hook

    def load_profile(
        self, path: Path | None, *, raw: dict[str, Any] | None = None, overrides: list[tuple[str, Any]] | None = None
    ) -> Profile:
        return load_profile(path, self.plugins, raw=raw, overrides=overrides or [])

    # --- building components -------------------------------------------------------------------------------

    def build(self, stage: Stage) -> Any:
        """Makes the component a profile stage names (this is where heavy imports happen)."""
        component = self.plugins.component(stage.kind, stage.use)
        if component is None:  # validated profiles never get here
            raise AnchorcastError(f"[{stage.table}] unknown {stage.kind} {stage.use!r}")
        with _missing_packages_explained(stage, component.plugin):
            built = component.factory(self, dict(stage.settings))
        self._built.append(built)  # held, so that no other object takes its id while this host names it
        self.component_names[id(built)] = stage.use
        return built

    # --- events --------------------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Calls every ``anchorcast_event`` implementation; one that raises is logged, never fatal."""
        self._call_guarded("anchorcast_event", {"host": self, "event": event})

    def post_event(self, event: Event) -> None:
        """Queues an event from any thread; during a run it is dispatched with the next frame to air."""
        if self.scheduler is not None:
            self.scheduler.post_event(event)
        else:
            self.emit(event)

    @property
    def next_pts(self) -> float:
        """Media time at which an event posted now airs (0 outside a run)."""
        return self.scheduler.next_pts if self.scheduler is not None else 0.0

    def _report_metrics(self, report: dict[str, Any]) -> None:
        self.last_report = report
        self._call_guarded("anchorcast_metrics", {"host": self, "report": report})

    def _call_guarded(self, hook_name: str, kwargs: dict[str, Any]) -> None:
        """Calls each implementation of a lifecycle or event hook on its own: a side plugin that raises is
        logged and the others still run (the stream must not die because of one of them)."""
        for impl in getattr(self.hook, hook_name).get_hookimpls():
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception:
                self.event_failures += 1
                log.exception("plugin %s failed in %s", impl.plugin_name, hook_name)

    # --- running -------------------------------------------------------------------------------------------

    def run(
        self,
        profile: Profile,
        *,
        on_progress: Callable[[int, int | None], None] = lambda aired, total: None,
        on_metrics: Callable[[dict[str, Any]], None] = lambda report: None,
        on_ready: Callable[[Scheduler], None] = lambda scheduler: None,
        source: Source | None = None,
        voice: Voice | None = None,
        engine: LipEngine | None = None,
        extra_outputs: Sequence[tuple[str, Output]] = (),
    ) -> dict[str, Any]:
        """Runs the profile's stream to its end (or until the scheduler is stopped); returns the metrics report.

        ``source``, ``voice`` and ``engine`` replace the profile's (the studio server's sessions are fed by the
        API and share their engines);
        ``extra_outputs`` run beside the profile's. Given components are opened and closed here like the
        profile's own. Outputs are always closed, so an interrupted file output is still playable.
        """
        self.profile = profile
        fmt = self.format = profile.stream
        opened: list[Any] = []
        scheduler: Scheduler | None = None
        try:
            if source is not None:
                self._open_given(source, fmt, opened)
            else:
                source = self._open(profile.source, fmt, opened)
            voice_fallback = self._open(profile.voice_fallback, fmt, opened) if profile.voice_fallback else None
            voice_failed: VoiceFailed | None = None
            if voice is not None:
                self._open_given(voice, fmt, opened)
            elif profile.voice:
                try:
                    voice = self._open(profile.voice, fmt, opened)
                except AnchorcastError as error:  # a model that will not load: the fallback reads the script
                    if voice_fallback is None:
                        raise
                    fallback_name = profile.voice_fallback.use if profile.voice_fallback else ""
                    log.error("the voice %s did not open (%s); %s reads instead", profile.voice.use, error,
                              fallback_name)
                    voice_failed = VoiceFailed(0.0, profile.voice.use, fallback_name, str(error))
                    voice = voice_fallback
            # outputs are built (not opened) first: whether one is live decides the pacing the engine opens for
            built_outputs = [(label, stage, self.build(stage)) for label, stage in profile.outputs.items()]
            live = profile.pace == "realtime" or (
                profile.pace == "auto"
                and any(o.live for o in [*(o for _, _, o in built_outputs), *(o for _, o in extra_outputs)])
            )
            if engine is not None:
                self._open_given(engine, fmt, opened)
            else:
                engine = self._open(profile.engine, fmt, opened, live=live)
            fallback: LipEngine | None = (
                self._open(profile.fallback, fmt, opened, live=live) if profile.fallback else None
            )
            outputs: list[tuple[str, Output]] = [
                (label, self._open(stage, fmt, opened, built=output)) for label, stage, output in built_outputs
            ]
            for label, output in extra_outputs:
                self._open_given(output, fmt, opened)
                outputs.append((label, output))
            config = replace(profile.scheduler, live=live)

            def metrics(report: dict[str, Any]) -> None:
                self._report_metrics(report)
                on_metrics(report)

            scheduler = self.scheduler = Scheduler(
                fmt, config, source, voice, engine, outputs,
                fallback=fallback, voice_fallback=voice_fallback, names=self.component_names, emit=self.emit, on_metrics=metrics, on_progress=on_progress,
            )
            if voice_failed is not None:
                scheduler.post_event(voice_failed)
            self._call_guarded("anchorcast_startup", {"host": self})
            on_ready(scheduler)
            return scheduler.run()
        finally:
            # outputs the scheduler closed itself, and components a stage that never ended still uses, are not
            # closed here
            skip = [*scheduler.closed_outputs(), *scheduler.busy_components()] if scheduler is not None else []
            self._close_all([c for c in opened if not any(c is done for done in skip)])
            if scheduler is not None:
                self.last_report = scheduler.report()
            # from now on an event posted to this host is emitted at once, not queued for a run that is over
            self.scheduler = None
            self._call_guarded("anchorcast_shutdown", {"host": self})

    def stop(self) -> None:
        """Ends the current run after the frame on air; outputs are closed as usual."""
        if self.scheduler is not None:
            self.scheduler.stop()

    def interrupt(self, reason: str = "") -> None:
        """Drops queued speech and frames; the anchor is idle from the next frame (plugins may call this)."""
        if self.scheduler is not None:
            self.scheduler.interrupt(reason)

    @staticmethod
    def _open_given(component: Any, fmt: StreamFormat, opened: list[Any]) -> None:
        component.open(fmt)
        opened.append(component)

    def _open(
        self, stage: Stage, fmt: StreamFormat, opened: list[Any], *, live: bool | None = None, built: Any = None
    ) -> Any:
        component = built if built is not None else self.build(stage)
        set_pacing = getattr(component, "set_pacing", None)
        if live is not None and callable(set_pacing):
            set_pacing(live)
        started = time.perf_counter()
        with _missing_packages_explained(stage, self.plugins.components[(stage.kind, stage.use)].plugin):
            component.open(fmt)
        opened.append(component)
        log.debug("%s %s opened in %.0f ms", stage.kind, stage.use, (time.perf_counter() - started) * 1000)
        return component

    @staticmethod
    def _close_all(opened: list[Any]) -> None:
        for component in reversed(opened):
            try:
                component.close()
            except AnchorcastError as error:  # a problem it explains itself (a full disk): no traceback
                log.error("%s", error)
            except Exception:  # closing the rest matters more: an output left open loses the file
                log.exception("closing %s failed", type(component).__name__)


@contextmanager
def _missing_packages_explained(stage: Stage, plugin: str) -> Iterator[None]:
    """A component whose optional dependency is not installed is a user-facing problem, not a crash."""
    try:
        yield
    except ImportError as error:
        raise AnchorcastError(
            f"[{stage.table}] {stage.kind} {stage.use!r} (plugin {plugin}) needs a package that is not "
            f"installed: {error}",
            hint="optional parts are extras: pip install 'anchorcast[wav2lip]' (torch) or 'anchorcast[live]' "
            "(microphone, virtual camera, OBS, vosk); `anchorcast doctor` shows what is present",
        ) from error
