"""Finds plugins through the ``anchorcast`` entry-point group, loads them safely and collects what they register.

- Built-in plugins (the ``anchorcast`` distribution's own) always load unless blocked; third-party plugins load
  when allowed (an empty allowlist allows all) and not blocked.
- Allow/block lists come from the profile's ``[plugins]`` table and from the environment variables
  ``ANCHORCAST_PLUGINS_ALLOW`` / ``ANCHORCAST_PLUGINS_BLOCK`` (comma-separated entry-point names).
- A plugin that raises on import or registration is reported and skipped; in strict mode
  (``strict = true`` or ``ANCHORCAST_STRICT_PLUGINS=1``) it is a :class:`~anchorcast.errors.PluginError`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pluggy

from anchorcast import PROJECT_NAME, hookspecs
from anchorcast.components import ComponentKind, Factory, Schema
from anchorcast.errors import PluginError

if TYPE_CHECKING:
    from anchorcast.host import Host

log = logging.getLogger(__name__)

ENV_ALLOW = "ANCHORCAST_PLUGINS_ALLOW"
ENV_BLOCK = "ANCHORCAST_PLUGINS_BLOCK"
ENV_STRICT = "ANCHORCAST_STRICT_PLUGINS"

_REGISTRATION_HOOKS: dict[ComponentKind, str] = {
    "source": "anchorcast_register_sources",
    "voice": "anchorcast_register_voices",
    "engine": "anchorcast_register_engines",
    "output": "anchorcast_register_outputs",
}


@dataclass
class PluginRecord:
    """What ``anchorcast plugins`` shows for one entry point."""

    name: str
    value: str
    distribution: str
    version: str
    builtin: bool
    status: str = "pending"  # loaded | failed | blocked | not allowed
    error: str = ""
    import_ms: float = 0.0
    registers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Component:
    """A registered factory: ``kind`` and ``name`` as profiles write them."""

    kind: ComponentKind
    name: str
    factory: Factory
    settings: Schema
    summary: str
    plugin: str


@dataclass(frozen=True)
class Command:
    name: str
    configure: Callable[[Any], None]
    run: Callable[[Any, Any], int]
    summary: str
    plugin: str


@dataclass(frozen=True)
class PluginPolicy:
    allow: frozenset[str] = frozenset()
    block: frozenset[str] = frozenset()
    strict: bool = False

    @classmethod
    def from_sources(
        cls, allow: Iterable[str] = (), block: Iterable[str] = (), strict: bool = False
    ) -> PluginPolicy:
        """Merges profile settings with the environment (the environment adds to both lists)."""
        env_allow = _split(os.environ.get(ENV_ALLOW, ""))
        env_block = _split(os.environ.get(ENV_BLOCK, ""))
        env_strict = os.environ.get(ENV_STRICT, "").lower() in {"1", "true", "yes", "on"}
        return cls(frozenset(allow) | env_allow, frozenset(block) | env_block, strict or env_strict)

    def verdict(self, name: str, builtin: bool) -> str | None:
        """None when the plugin may load, else the status to record."""
        if name in self.block:
            return "blocked"
        if self.allow and not builtin and name not in self.allow:
            return "not allowed"
        return None


def _split(value: str) -> frozenset[str]:
    return frozenset(part.strip() for part in value.split(",") if part.strip())


class PluginManager:
    """Owns the pluggy manager, the plugin records and the component registry."""

    def __init__(self, policy: PluginPolicy | None = None) -> None:
        self.policy = policy or PluginPolicy.from_sources()
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []
        self.components: dict[tuple[ComponentKind, str], Component] = {}
        self.commands: dict[str, Command] = {}
        self._modules: dict[str, ModuleType] = {}

    @property
    def hook(self) -> Any:
        return self.pm.hook

    # --- loading -------------------------------------------------------------------------------------------

    def load_entry_points(self, group: str = PROJECT_NAME) -> None:
        found = sorted(entry_points(group=group), key=lambda ep: (not _is_builtin(ep), ep.name))
        for entry_point in found:
            self._load_entry_point(entry_point)

    def _load_entry_point(self, entry_point: EntryPoint) -> None:
        dist = entry_point.dist
        record = PluginRecord(
            name=entry_point.name,
            value=entry_point.value,
            distribution=dist.metadata["Name"] if dist else "?",
            version=dist.version if dist else "?",
            builtin=_is_builtin(entry_point),
        )
        self.records.append(record)
        verdict = self.policy.verdict(record.name, record.builtin)
        if verdict:
            record.status = verdict
            return
        started = time.perf_counter()
        try:
            module = entry_point.load()
        except Exception as error:  # any failure inside third-party code must not take the host down
            record.import_ms = (time.perf_counter() - started) * 1000
            self._fail(record, f"import failed: {type(error).__name__}: {error}", error)
            return
        record.import_ms = (time.perf_counter() - started) * 1000
        self.register_module(module, record)

    def register_module(self, module: ModuleType | object, record: PluginRecord | None = None) -> PluginRecord:
        """Registers an already-imported plugin object (tests and embedding applications use this too)."""
        if record is None:
            name = getattr(module, "__name__", type(module).__name__)
            record = PluginRecord(name, name, "(in process)", "", builtin=False)
            self.records.append(record)
        if record.name in self._modules:
            self._fail(record, f"another plugin is already registered as {record.name!r}", PluginError(record.name))
            return record
        try:
            self.pm.register(module, name=record.name)
        except Exception as error:  # pluggy validates hookimpl names and signatures here
            self._fail(record, f"invalid plugin: {error}", error)
            return record
        record.status = "loaded"
        self._modules[record.name] = module  # type: ignore[assignment]
        return record

    def _fail(self, record: PluginRecord, message: str, error: BaseException) -> None:
        was_loaded = record.status == "loaded"
        record.status = "failed"
        record.error = message
        if was_loaded:  # only ever unregister this record's own plugin, never another of the same name
            self.pm.unregister(name=record.name)
            del self._modules[record.name]
        if self.policy.strict:
            raise PluginError(f"plugin {record.name!r} ({record.value}): {message}") from error
        log.warning("plugin %r skipped: %s", record.name, message)

    # --- registration --------------------------------------------------------------------------------------

    def collect(self, host: Host) -> None:
        """Calls every registration hook, plugin by plugin, so a failure is pinned on its plugin."""
        records = {r.name: r for r in self.records if r.status == "loaded"}
        for kind, hook_name in _REGISTRATION_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls()[::-1]:
                record = records.get(impl.plugin_name)
                if record is None or record.status != "loaded":
                    continue

                def register(
                    name: str,
                    factory: Factory,
                    *,
                    settings: Schema | None = None,
                    summary: str = "",
                    _kind: ComponentKind = kind,
                    _record: PluginRecord = record,
                ) -> None:
                    self._add_component(Component(_kind, name, factory, settings or {}, summary, _record.name))
                    _record.registers.append(f"{_kind}:{name}")

                self._call_impl(impl, record, host=host, register=register)
        for impl in self.pm.hook.anchorcast_register_commands.get_hookimpls()[::-1]:
            record = records.get(impl.plugin_name)
            if record is None or record.status != "loaded":
                continue

            def register_command(
                name: str, configure: Any, run: Any, *, summary: str = "", _record: PluginRecord = record
            ) -> None:
                if name in self.commands:
                    log.warning("command %r from %s ignored: %s has it", name, _record.name, self.commands[name].plugin)
                    return
                self.commands[name] = Command(name, configure, run, summary, _record.name)
                _record.registers.append(f"command:{name}")

            self._call_impl(impl, record, host=host, register=register_command)

    def _call_impl(self, impl: Any, record: PluginRecord, **kwargs: Any) -> None:
        try:
            impl.function(**{name: kwargs[name] for name in impl.argnames})
        except Exception as error:  # a broken plugin is reported and skipped, its registrations withdrawn
            for key in [k for k, c in self.components.items() if c.plugin == record.name]:
                del self.components[key]
            record.registers.clear()
            self._fail(record, f"registration failed: {type(error).__name__}: {error}", error)

    def _add_component(self, component: Component) -> None:
        key = (component.kind, component.name)
        existing = self.components.get(key)
        if existing is not None:
            log.warning(
                "%s %r from plugin %s ignored: already registered by %s",
                component.kind, component.name, component.plugin, existing.plugin,
            )
            return
        self.components[key] = component

    def component(self, kind: ComponentKind, name: str) -> Component | None:
        return self.components.get((kind, name))

    def names(self, kind: ComponentKind) -> list[str]:
        return sorted(name for k, name in self.components if k == kind)


def _is_builtin(entry_point: EntryPoint) -> bool:
    """Shipped in the anchorcast distribution itself (a module name alone proves nothing)."""
    return entry_point.dist is not None and entry_point.dist.metadata["Name"] == PROJECT_NAME
