"""What plugins register: typed entries that carry their own behaviour.

Each collection hook hands plugins a ``register(name, obj, **options)`` callback; the plugin
manager turns every call into one of the classes below, attributed to the plugin that made it.
``obj`` may be the object itself or a ``"module:attribute"`` reference resolved on first use, so
that built-ins whose code needs torch keep the registry (and ``metanet --help``) light.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

from metanet.errors import ConfigError, MetanetError, PluginError
from metanet.plugin.settings import Setting, check_settings, schema


def plugin_failure(exc: BaseException) -> str:
    """What plugin code did, in a line: ``called sys.exit(3)``, ``raised KeyError: 'x'``."""
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = " ".join(str(exc).split())
    return f"raised {type(exc).__name__}" + (f": {text}" if text else "")


def resolve(ref: Any) -> Any:
    """``"package.module:attr"`` -> the attribute; anything else is returned as is."""
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


@dataclass
class Registered:
    """One registration: its name, the object (or a reference to it), the plugin and its options."""

    name: str
    ref: Any
    plugin: str
    options: dict[str, Any] = field(default_factory=dict)
    kind: str = "entry"
    OPTIONS: ClassVar[tuple[str, ...]] = ("description",)

    def __post_init__(self):
        unknown = [k for k in self.options if k not in self.OPTIONS]
        if unknown:
            raise PluginError(f"plugin '{self.plugin}': {self.kind} {self.name!r}: unknown option {unknown[0]!r} "
                              f"(options: {', '.join(self.OPTIONS)})", self.plugin)

    @property
    def obj(self) -> Any:
        """The registered object, imported on first use when registered by reference."""
        if isinstance(self.ref, str):
            try:
                self.ref = resolve(self.ref)
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"plugin '{self.plugin}': {self.kind} {self.name!r}: cannot load {self.ref!r} "
                                  f"({type(exc).__name__}: {exc})", self.plugin) from None
        return self.ref

    @property
    def description(self) -> str:
        return self.options.get("description", "")

    def summary(self) -> dict[str, Any]:
        return {"plugin": self.plugin, "description": self.description}

    def call(self, what: str, fn, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)``, plugin code: whatever it raises, and a ``sys.exit`` in it, becomes one
        :class:`PluginError` naming the plugin, this entry and ``what`` was called (a :class:`MetanetError`
        the plugin raised on purpose keeps its own message)."""
        try:
            return fn(*args, **kwargs)
        except MetanetError:
            raise
        except (Exception, SystemExit) as exc:
            raise self.error(f"{what} {plugin_failure(exc)}") from None

    def error(self, message: str) -> PluginError:
        """A :class:`PluginError` about this entry: ``plugin 'P': kind 'name': message``."""
        return PluginError(f"plugin '{self.plugin}': {self.kind} {self.name!r}: {message}", self.plugin)


@dataclass
class Operator(Registered):
    """A block operator: ``factory(cin, cout, stride, expand, head_dim, drop_path, grid) -> nn.Module``.

    ``cost`` (optional) has the same arguments plus ``hw_in``/``hw_out`` and returns (flops, params);
    without it, one built block is counted with fvcore, once per shape.
    """

    kind: str = "operator"
    OPTIONS: ClassVar[tuple[str, ...]] = ("cost", "attention", "description")

    @property
    def attention(self) -> bool:
        return bool(self.options.get("attention", False))

    def build(self, cin: int, cout: int, stride: int, expand: float, head_dim: int, drop_path: float,
              grid: tuple[int, int]):
        """One block; the factory's failure, or anything but an ``nn.Module``, is a :class:`PluginError`."""
        import torch.nn as nn
        block = self.call(f"factory{(cin, cout, stride, expand)}", self.obj, cin, cout, stride, expand, head_dim,
                          drop_path, grid)
        if not isinstance(block, nn.Module):
            raise self.error(f"factory returned {type(block).__name__}, not a torch.nn.Module")
        return block

    @property
    def cost_formula(self):
        """The registered ``cost`` formula (resolved from ``"module:attr"`` once), or None: then the estimator
        counts a built block (:func:`metanet.search_spaces.estimate.block_cost`)."""
        formula = self.options.get("cost")
        if isinstance(formula, str):  # resolved once: this runs in the FLOP DPs
            formula = self.options["cost"] = resolve(formula)
        return formula

    def cost(self, cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> tuple[int, int]:
        """``(flops, params)`` of one block from the ``cost`` formula: two whole numbers, neither negative (the
        formula's failure, or anything else it returns, is a :class:`PluginError`)."""
        try:  # inline, not self.call: the FLOP DPs call this thousands of times
            result = self.cost_formula(cin, cout, stride, expand, head_dim, hw_in=hw_in, hw_out=hw_out, grid=grid)
        except MetanetError:
            raise
        except (Exception, SystemExit) as exc:
            raise self.error(f"cost formula {plugin_failure(exc)}") from None
        try:
            flops, params = (result.flops, result.params) if hasattr(result, "params") else result
        except (TypeError, ValueError):
            flops = params = None
        if type(flops) is int and type(params) is int and flops >= 0 and params >= 0:
            return flops, params
        import math
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0
                   for v in (flops, params)):
            raise self.error(f"cost formula returned {result!r} for {(cin, cout, stride, expand)}; expected "
                             "(flops, params), two numbers >= 0")
        return int(flops), int(params)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "attention": self.attention, "cost_formula": "cost" in self.options}


@dataclass
class Stage(Registered):
    """An evaluation stage: ``run(context) -> {metric: number}`` with declared capabilities.

    ``defaults``: the settings users override with ``--set stage.key=value``: each a
    :class:`metanet.plugin.settings.Setting` (type, range, choices) or a plain default (typed by itself), all
    checked before any trial. ``trains_backbone``:
    the stage leaves trained backbone weights in ``context.state[name]["weights"]`` (kept for export).
    ``score_metric``: the metric that scores a candidate when this is the last scoring stage (None:
    this stage never provides the default score). A stage registered without ``run`` is run through
    the ``metanet_run_stage`` hook, as before. ``check`` (optional, a callable or ``"module:attr"``):
    ``check(config, setup)`` raises a :class:`metanet.errors.MetanetError` when the stage cannot run on
    what the search or evaluation is set up with (``setup``: data, proxy_resolution, resolution, space,
    flops, band), so the user hears it before any trial, not once per failed trial. ``fidelity``: the stage
    trains in steps a multi-fidelity search sets per rung (``context.fidelity``) and continues across rungs.
    """

    kind: str = "stage"
    OPTIONS: ClassVar[tuple[str, ...]] = ("defaults", "description", "trains_backbone", "score_metric", "check",
                                          "fidelity")

    def preflight(self, config: dict[str, Any], setup: dict[str, Any]) -> None:
        check = self.options.get("check")
        if check is None:
            return
        if isinstance(check, str):
            try:
                check = self.options["check"] = resolve(check)
            except (ImportError, AttributeError) as exc:
                raise PluginError(f"plugin '{self.plugin}': stage {self.name!r}: cannot load its check "
                                  f"({type(exc).__name__}: {exc})", self.plugin) from None
        check(config, setup)

    @property
    def schema(self) -> dict[str, Setting]:
        """Each setting with its type and range (a plain default typed by itself)."""
        return schema(self.options.get("defaults"))

    @property
    def defaults(self) -> dict[str, Any]:
        """Each setting's default value."""
        return {key: s.default for key, s in self.schema.items()}

    @property
    def trains_backbone(self) -> bool:
        return bool(self.options.get("trains_backbone", False))

    @property
    def score_metric(self) -> str | None:
        return self.options.get("score_metric", "acc")

    @property
    def fidelity(self) -> bool:
        """Whether the stage trains in steps a multi-fidelity search sets per rung (and continues)."""
        return bool(self.options.get("fidelity", False))

    def config(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        """The defaults with ``overrides`` applied; an unknown key or a value its schema refuses is an error."""
        return check_settings(self.name, self.schema, overrides)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "defaults": self.defaults,
                "settings": {key: s.describe() for key, s in self.schema.items()},
                "trains_backbone": self.trains_backbone, "score_metric": self.score_metric, "fidelity": self.fidelity}


def coerce_setting(where: str, value: Any, default: Any) -> Any:
    """A setting's value as a plain default of ``default`` takes it (kept for plugins that called it)."""
    return Setting.of(default).check(where, value)


@dataclass
class SearchSpace(Registered):
    """A :class:`metanet.search_spaces.unified.SpaceConfig` under the name ``--space`` selects."""

    kind: str = "search space"


@dataclass
class Strategy(Registered):
    """``factory(seed=..., **options)`` returns an NNI 3.0 strategy; ``constraints=False`` for HPO-based ones."""

    kind: str = "strategy"
    OPTIONS: ClassVar[tuple[str, ...]] = ("description", "constraints")

    @property
    def constraints(self) -> bool:
        return bool(self.options.get("constraints", True))

    def create(self, seed: int, **options):
        """The NNI strategy; the factory's failure, or anything but an NNI 3.0 strategy, is a
        :class:`PluginError` naming the plugin."""
        from metanet.quiet import quiet
        with quiet():
            from nni.nas.strategy.base import Strategy as NNIStrategy
        strategy = self.call("factory", self.obj, seed=seed, **options)
        if not isinstance(strategy, NNIStrategy):
            raise self.error(f"factory returned {type(strategy).__name__}, not an NNI strategy "
                             "(nni.nas.strategy.base.Strategy)")
        return strategy

    def check_options(self, options: dict) -> None:
        """Refuse, in one line naming the key, an option the factory does not take (a factory with
        ``**options`` takes any: it checks its own)."""
        import inspect
        try:
            params = inspect.signature(self.obj).parameters
        except (TypeError, ValueError):  # a builtin or C callable: nothing to read
            return
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        takes = [n for n, p in params.items() if n != "seed" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        for key in options:
            if key not in takes:
                raise ConfigError(f"strategy_options: strategy {self.name!r} takes no option {key!r} "
                                  f"(it takes: {', '.join(takes) or 'none'})")


@dataclass
class Dataset(Registered):
    """``loader(resolution, seed, **options)`` (``path=True``: ``loader(path, resolution, seed)``) -> DataBundle."""

    kind: str = "dataset"
    OPTIONS: ClassVar[tuple[str, ...]] = ("description", "path")

    @property
    def takes_path(self) -> bool:
        return bool(self.options.get("path", False))

    def load(self, resolution: int, seed: int, path: str | None = None):
        """What the loader returns (:func:`metanet.data.load.load_data` checks it is a ``DataBundle``); its
        failure is a :class:`PluginError` naming the plugin."""
        if self.takes_path:
            return self.call("loader", self.obj, path, resolution=resolution, seed=seed)
        return self.call("loader", self.obj, resolution=resolution, seed=seed)


@dataclass
class Exporter(Registered):
    """``export(model, spec, out_dir, **options)`` writes one format into ``out_dir``; returns the path."""

    kind: str = "exporter"

    def export(self, model, spec, out_dir: str, **options):
        """Write the format into ``out_dir``; returns the path it wrote, which must be a file or folder in
        ``out_dir`` (the export is moved into place as a whole). Anything else is a :class:`PluginError`."""
        import os
        from pathlib import Path
        path = self.call("export", self.obj, model, spec, out_dir, **options)
        if not isinstance(path, (str, os.PathLike)):
            raise self.error(f"returned {type(path).__name__}, not the path it wrote")
        path = Path(path)
        folder = Path(out_dir).resolve()
        if not path.exists() or folder not in path.resolve().parents:
            raise self.error(f"returned {str(path)!r}, which is not a file it wrote in the export folder")
        return path


KINDS: dict[str, tuple[str, type[Registered]]] = {
    "search_spaces": ("metanet_register_search_spaces", SearchSpace),
    "operators": ("metanet_register_operators", Operator),
    "strategies": ("metanet_register_strategies", Strategy),
    "datasets": ("metanet_register_datasets", Dataset),
    "stages": ("metanet_register_stages", Stage),
    "exporters": ("metanet_register_exporters", Exporter),
}

__all__ = ["Registered", "Operator", "Stage", "SearchSpace", "Strategy", "Dataset", "Exporter", "KINDS", "resolve",
           "coerce_setting", "Setting"]
