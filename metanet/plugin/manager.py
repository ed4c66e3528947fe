"""The plugin manager and the process-wide registry every consumer asks.

Sources of plugins, in load order:
1. the built-ins, :data:`DEFAULT_PLUGINS` (module paths, imported and registered like any other);
2. installed distributions with an entry point in the group ``metanet`` (skipped when the
   environment variable ``METANET_DISABLE_PLUGIN_AUTOLOAD`` is set);
3. module paths in ``METANET_PLUGINS`` (comma-separated) and the CLI's ``-p/--plugin``.

:func:`registry` builds the manager on first use and keeps it for the process: spec validation,
the model builder, the estimator, the CLI, timm's ``create_model`` and NNI's trial processes all
ask it, so a plugin installed through its entry point is seen everywhere. A hook implementation
with a misspelt ``metanet_`` name fails loudly (``check_pending``); a plugin that cannot be
imported raises :class:`PluginError` naming it; two plugins registering one name is an error.
"""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from metanet import hookspecs
from metanet.errors import PluginError, UnknownName
from metanet.plugin.registered import KINDS, Dataset, Operator, Registered, SearchSpace, Stage, Strategy, plugin_failure

ENTRY_POINT_GROUP = "metanet"
ENV_PLUGINS = "METANET_PLUGINS"
ENV_DISABLE_AUTOLOAD = "METANET_DISABLE_PLUGIN_AUTOLOAD"

DEFAULT_PLUGINS = (
    "metanet.plugins.operators",
    "metanet.plugins.spaces",
    "metanet.plugins.datasets",
    "metanet.plugins.strategies",
    "metanet.plugins.stages",
)


@dataclass
class PluginInfo:
    name: str
    source: str  # "built-in", "entry point of <dist>", "module path"
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
    """Loads plugins and holds what they registered, as typed entries (:mod:`metanet.plugin.registered`)."""

    def __init__(self, plugins: tuple[str, ...] | list[str] = (), autoload: bool | None = None,
                 builtins: bool = True):
        self.pm = _Manager("metanet")
        self.pm.add_hookspecs(hookspecs)
        self._sources: dict[str, tuple[str, str | None]] = {}
        self.registry: dict[str, dict[str, Registered]] = {kind: {} for kind in KINDS}
        if builtins:
            for path in DEFAULT_PLUGINS:
                self._load_module(path, source="built-in")
        if autoload is None:
            autoload = not os.environ.get(ENV_DISABLE_AUTOLOAD)
        if autoload:
            self._load_entry_points()
        env = [p.strip() for p in os.environ.get(ENV_PLUGINS, "").split(",") if p.strip()]
        self.requested = tuple(dict.fromkeys([*env, *plugins]))
        for path in self.requested:
            self._load_module(path, source="module path")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) or repr(exc.plugin)
            raise PluginError(f"plugin '{name}': {exc}", name) from None
        self._collect()

    # -- loading ---------------------------------------------------------------------------
    def _load_module(self, path: str, source: str) -> None:
        if path in self._sources:
            return
        try:
            module = importlib.import_module(path)
        except Exception as exc:
            raise PluginError(f"plugin '{path}' failed to import: {type(exc).__name__}: {exc}", path) from None
        self._register(module, path, source, None)

    def _register(self, plugin, name: str, source: str, version: str | None) -> None:
        if self.pm.is_registered(plugin) or self.pm.get_plugin(name) is not None:
            return
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin '{name}': {exc}", name) from None
        self._sources[name] = (source, version)

    def plugin_version(self, name: str) -> str | None:
        """What identifies the code of plugin ``name``: its distribution's version (entry points), or a digest of
        its module's source (modules named with -p, built-ins); None when neither is known."""
        source, version = self._sources.get(name, (None, None))
        if version is not None:
            return f"dist:{version}"
        plugin = self.pm.get_plugin(name)
        path = getattr(plugin, "__file__", None)
        if not path:
            return None
        import hashlib
        try:
            return "sha256:" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
        except OSError:
            return None

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
        # Called per implementation, in load order (built-ins first), so that each registration is
        # attributed to its plugin and a clash names the plugin that came second.
        for kind, (hookname, cls) in KINDS.items():
            table = self.registry[kind]
            for impl in getattr(self.pm.hook, hookname).get_hookimpls():
                def register(name, obj=None, _plugin=impl.plugin_name, _cls=cls, _table=table, **options):
                    if not isinstance(name, str) or not name:
                        raise PluginError(f"plugin '{_plugin}' registered a {_cls.kind} without a name", _plugin)
                    if name in _table:
                        raise PluginError(f"plugin '{_plugin}' registers {_cls.kind} {name!r}, which plugin "
                                          f"'{_table[name].plugin}' already registered", _plugin)
                    _table[name] = _cls(name, obj, _plugin, options)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as exc:
                    raise PluginError(f"plugin '{impl.plugin_name}': {hookname} raised "
                                      f"{type(exc).__name__}: {exc}", impl.plugin_name) from None

    # -- queries ---------------------------------------------------------------------------
    @property
    def hook(self):
        return self.pm.hook

    def get(self, kind: str, name: str) -> Any:
        """The entry ``name`` of ``kind`` (``stages``, ``operators`` ...); unknown names raise :class:`UnknownName`."""
        table = self.registry[kind]
        if name not in table:
            known = ", ".join(sorted(table)) or "none"
            what = KINDS[kind][1].kind
            raise UnknownName(f"unknown {what} {name!r} (known: {known})")
        return table[name]

    def operator(self, name: str) -> Operator:
        return self.get("operators", name)

    def stage(self, name: str) -> Stage:
        return self.get("stages", name)

    def space(self, name: str):
        entry: SearchSpace = self.get("search_spaces", name)
        return entry.obj

    def strategy(self, name: str) -> Strategy:
        return self.get("strategies", name)

    def dataset(self, name: str) -> Dataset:
        return self.get("datasets", name)

    def names(self, kind: str) -> list[str]:
        return list(self.registry[kind])

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

    def describe(self) -> dict[str, Any]:
        """``metanet plugins --json``: every plugin, and what each registered (name -> plugin)."""
        rows = [{"name": p.name, "source": p.source, "version": p.version, "hooks": p.hooks} for p in self.plugins()]
        registered = {kind: {name: entry.plugin for name, entry in table.items()}
                      for kind, table in self.registry.items()}
        return {"plugins": rows, "registered": registered}

    def notify_trial(self, hookname: str, **kwargs) -> None:
        """:meth:`notify` for the per-trial observers: each distinct problem is printed once per process (on
        stderr, ``warning: ...``), not once per trial."""
        import sys
        for problem in self.notify(hookname, **kwargs):
            if problem not in _REPORTED:
                _REPORTED.add(problem)
                print(f"warning: {problem} (reported once)", file=sys.stderr)

    def notify(self, hookname: str, **kwargs) -> list[str]:
        """Call an observer hook; a raising observer is reported, never fatal. Returns the messages."""
        problems = []
        for impl in reversed(getattr(self.pm.hook, hookname).get_hookimpls()):
            try:
                impl.function(**{k: kwargs[k] for k in impl.argnames})
            except (Exception, SystemExit) as exc:  # an observer that exits ends nothing either
                problems.append(f"plugin '{impl.plugin_name}': {hookname} {plugin_failure(exc)}")
        return problems


_REPORTED: set[str] = set()  # observer problems already printed by this process


def unnamed_plugins(stored, named=()) -> list[str]:
    """The plugin modules in ``stored`` (a run's config file) that this process would not load anyway:
    neither named (``-p``, ``METANET_PLUGINS``), nor built in, nor installed through an entry point."""
    trusted = set(DEFAULT_PLUGINS) | set(named)
    trusted |= {p.strip() for p in os.environ.get(ENV_PLUGINS, "").split(",") if p.strip()}
    if not os.environ.get(ENV_DISABLE_AUTOLOAD):
        trusted |= {ep.module for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    return [p for p in dict.fromkeys(stored) if p not in trusted]


def refuse_unnamed_plugins(stored, named, run_dir, command: str) -> None:
    """A run's config.json is only a file: anyone who can edit it could make a command that reads it import
    their module. Its plugins are loaded only when the user names them again; otherwise one line says how."""
    import shlex
    missing = unnamed_plugins(stored, named)
    if missing:
        flags = " ".join(f"-p {shlex.quote(m)}" for m in missing)
        run = shlex.quote(str(run_dir))
        command = command if run in command.split() else f"{command} {run}"
        raise PluginError(f"{run_dir}: the run's config.json lists plugin module(s) {', '.join(missing)}, which are "
                          f"imported only when named again: metanet {flags} {command} "
                          f"(or metanet --trust-stored-plugins {command})",
                          missing[0])


_default: PluginManager | None = None


def registry(plugins: tuple[str, ...] | list[str] = (), refresh: bool = False) -> PluginManager:
    """The process-wide plugin manager, built on first use; ``plugins`` adds module paths to load.

    Modules named in earlier calls stay loaded: a later call that names a new one rebuilds the
    manager with all of them.
    """
    global _default
    if _default is not None and not refresh and all(p in _default._sources for p in plugins):
        return _default
    keep = _default.requested if _default is not None and not refresh else ()
    _default = PluginManager(plugins=tuple(dict.fromkeys([*keep, *plugins])))
    return _default


def reset_registry() -> None:
    """Forget the process-wide manager (tests; a long-lived process after installing a plugin)."""
    global _default
    _default = None

