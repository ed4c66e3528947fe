"""The plugin manager: built-in plugins register exactly like external ones.

Sources of plugins, in load order:
1. the built-ins, :data:`DEFAULT_PLUGINS` (module paths, imported and registered like any other);
2. installed distributions with an entry point in the group ``metanet`` (skipped when the
   environment variable ``METANET_DISABLE_PLUGIN_AUTOLOAD`` is set);
3. module paths in ``METANET_PLUGINS`` (comma-separated) and the CLI's ``-p/--plugin``.

A hook implementation with a misspelt ``metanet_`` name fails loudly (``check_pending``); a plugin
that cannot be imported raises :class:`PluginError` naming it.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs

ENTRY_POINT_GROUP = "metanet"
ENV_PLUGINS = "METANET_PLUGINS"
ENV_DISABLE_AUTOLOAD = "METANET_DISABLE_PLUGIN_AUTOLOAD"

DEFAULT_PLUGINS = (
    "metanet.plugins.spaces",
    "metanet.plugins.datasets",
    "metanet.plugins.strategies",
    "metanet.plugins.zero_cost",
    "metanet.plugins.amateur",
    "metanet.plugins.expert",
    "metanet.plugins.generalist",
    "metanet.plugins.downstream",
)

COLLECTIONS = {
    "search_spaces": "metanet_register_search_spaces",
    "operators": "metanet_register_operators",
    "strategies": "metanet_register_strategies",
    "datasets": "metanet_register_datasets",
    "stages": "metanet_register_stages",
    "exporters": "metanet_register_exporters",
}


class PluginError(Exception):
    """A plugin could not be loaded or one of its hooks failed; the message names the plugin."""

    def __init__(self, message: str, plugin: str | None = None):
        super().__init__(message)
        self.plugin = plugin


@dataclass
class Registered:
    name: str
    obj: Any
    plugin: str
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PluginInfo:
    name: str
    source: str  # "built-in", "entry point <dist> <version>", "module path"
    version: str | None
    hooks: list[str]


class _Manager(pluggy.PluginManager):
    def parse_hookimpl_opts(self, plugin, name):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("metanet_"):
            # Like pytest: an unmarked metanet_* function is an implementation, so a misspelt
            # one reaches check_pending() instead of being silently ignored.
            method = getattr(plugin, name, None)
            if callable(method):
                opts = {}
        return opts


class PluginManager:
    """Loads plugins and holds what they registered (operators, stages, datasets ...)."""

    def __init__(self, plugins: tuple[str, ...] | list[str] = (), autoload: bool | None = None,
                 builtins: bool = True):
        self.pm = _Manager("metanet")
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, tuple[str, str | None]] = {}
        self.registry: dict[str, dict[str, Registered]] = {kind: {} for kind in COLLECTIONS}
        if builtins:
            for path in DEFAULT_PLUGINS:
                self._load_module(path, source="built-in")
        if autoload is None:
            autoload = not os.environ.get(ENV_DISABLE_AUTOLOAD)
        if autoload:
            self._load_entry_points()
        env = [p.strip() for p in os.environ.get(ENV_PLUGINS, "").split(",") if p.strip()]
        for path in [*env, *plugins]:
            if path not in self._sources:
                self._load_module(path, source="module path")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            raise PluginError(f"plugin '{name}': {exc}", name) from None
        self._collect()

    # -- loading ---------------------------------------------------------------------------
    def _load_module(self, path: str, source: str, version: str | None = None, name: str | None = None) -> None:
        name = name or path
        try:
            module = importlib.import_module(path)
        except Exception as exc:
            raise PluginError(f"plugin '{name}' failed to import: {type(exc).__name__}: {exc}", name) from None
        self._register(module, name, source, version)

    def _register(self, plugin, name: str, source: str, version: str | None) -> None:
        if self.pm.is_registered(plugin) or self.pm.get_plugin(name) is not None:
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}': {exc}", name) from None
        self._sources[name] = (source, version)

    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else None
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"plugin '{ep.name}' (entry point of {dist_name}) failed to import: "
                                  f"{type(exc).__name__}: {exc}", ep.name) from None
            self._register(plugin, ep.name, f"entry point of {dist_name}", version)

    def _collect(self) -> None:
        # Called per implementation so each registration is attributed to its plugin.
        for kind, hookname in COLLECTIONS.items():
            for impl in reversed(getattr(self.pm.hook, hookname).get_hookimpls()):
                def register(name, obj=None, _plugin=impl.plugin_name, _kind=kind, **options):
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"plugin '{_plugin}' registered a {_kind[:-1]} without a name", _plugin)
                    self.registry[_kind][name] = Registered(name, obj, _plugin, options)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin '{impl.plugin_name}': {hookname} raised "
                                      f"{type(exc).__name__}: {exc}", impl.plugin_name) from None
        if self.registry["operators"]:
            from metanet.search_spaces.operators import register_operator
            for reg in self.registry["operators"].values():
                register_operator(reg.name, reg.obj, **reg.options)
        if self.registry["search_spaces"]:
            from metanet.search_spaces.unified import SPACES
            for reg in self.registry["search_spaces"].values():
                SPACES[reg.name] = reg.obj

    # -- queries ---------------------------------------------------------------------------
    @property
    def hook(self):
        return self.pm.hook

    def get(self, kind: str, name: str) -> Registered:
        table = self.registry[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            raise KeyError(f"unknown {kind[:-1].replace('_', ' ')} {name!r} (known: {known})")
        return table[name]

    def plugins(self) -> list[PluginInfo]:
        out = []
        for name, plugin in self.pm.list_name_plugin():
            source, version = self._sources.get(name, ("registered", None))
            if source == "built-in":
                from metanet import __version__
                version = __version__
            hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
            out.append(PluginInfo(name, source, version, hooks))
        return out

    def blame(self, hookname: str, exc: BaseException) -> str | None:
        """The plugin whose implementation of ``hookname`` raised ``exc`` (innermost frame wins)."""
        codes = {impl.function.__code__: impl.plugin_name
                 for impl in getattr(self.pm.hook, hookname).get_hookimpls()}
        name, tb = None, exc.__traceback__
        while tb is not None:
            name = codes.get(tb.tb_frame.f_code, name)
            tb = tb.tb_next
        return name

    def notify(self, hookname: str, **kwargs) -> list[str]:
        """Call an observer hook; a raising observer is reported, never fatal. Returns the messages."""
        problems = []
        for impl in reversed(getattr(self.pm.hook, hookname).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except Exception as exc:
                problems.append(f"plugin '{impl.plugin_name}': {hookname} raised {type(exc).__name__}: {exc}")
        return problems


_default: PluginManager | None = None


def get_plugin_manager(plugins: tuple[str, ...] | list[str] = (), refresh: bool = False) -> PluginManager:
    """The process-wide manager (built on first use); ``plugins`` adds module paths."""
    global _default
    if _default is None or refresh or any(p not in _default._sources for p in plugins):
        _default = PluginManager(plugins=tuple(plugins))
    return _default

