"""Running evaluation stages on a candidate: the context stages receive, and the trial loop.

A stage is registered by a plugin (``metanet_register_stages``) with its runner and capabilities;
``metanet_run_stage`` may override the runner. :func:`evaluate_candidate` runs the stages a user picked, in order, on one
architecture, turns their metrics into the score the search optimises, and reports the trial to the
observer hooks. A stage that raises never takes the caller down: the trial is marked failed with the
stage, the plugin whose code raised and the error.
"""
from __future__ import annotations

import copy
import math
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from metanet.data import DataBundle
from metanet.errors import ConfigError
from metanet.evaluate import FAILED, OK
from metanet.plugin.manager import PluginManager, registry
from metanet.plugin.registered import Stage
from metanet.train.loop import compile_candidate, place


@dataclass
class StageContext:
    """What a stage gets: the candidate, its data, its configuration and what earlier stages left."""

    model: nn.Module          # the candidate backbone (classifier removed), already on ``device``
    spec: Any                 # its ArchSpec
    data: DataBundle
    config: dict[str, Any]    # the stage's defaults merged with the user's settings
    state: dict[str, dict]    # per earlier stage: {"metrics": {...}, "weights": state_dict, ...}
    device: torch.device
    seed: int = 0
    runtime: Any = None       # the evaluation's metanet.train.runtime.Runtime (its Fabric: device and precision)
    stage: str = ""           # the name this stage runs under (what its seeds derive from)
    # a rung of a multi-fidelity search (metanet.train.loop.Fidelity) for a stage registered with fidelity=True;
    # None: the stage trains as its settings say
    fidelity: Any = None

    def trainer(self, modules: dict[str, nn.Module], n_examples: int, key: str = "", generators=None,
                lr: float | None = None):
        """The step loop of this stage's training (:class:`metanet.train.loop.StageTrainer`): its settings'
        steps, or the search's rung continued from the previous rung's state under ``key``."""
        from metanet.train.loop import StageTrainer
        return StageTrainer(modules, self.config, n_examples, self.fidelity, lr=lr, generators=generators, key=key)

    def keep(self, key: str, trainer) -> None:
        """Leave ``trainer``'s state for the next rung of a multi-fidelity search (nothing without one)."""
        if self.fidelity is not None:
            self.state.setdefault(self.stage, {}).setdefault("resume", {})[key] = trainer.state()

    def seed_for(self, *names) -> int:
        """A seed for one purpose of this stage (``"batches", source``, ``"head", task`` ...), derived from
        the trial's seed, the stage and the names: independent of other stages, sources and tasks."""
        from metanet.seeds import derive
        return derive(self.seed, self.stage, *names)

    def generator(self, *names) -> torch.Generator:
        """A CPU generator seeded with :meth:`seed_for` (``names``)."""
        return torch.Generator().manual_seed(self.seed_for(*names))

    def seeded(self, *names):
        """A block in which library code drawing from the global generators (weight initialisation of a
        head, dropout) draws from :meth:`seed_for` (``names``); the generators are restored after it."""
        from metanet.seeds import seeded
        return seeded(self.seed_for(*names), self.device)

    def fresh_model(self) -> nn.Module:
        """A new, randomly initialised copy of the candidate (for from-scratch baselines)."""
        from metanet.search_spaces.metanet import MetaNet

        from metanet.seeds import seeded
        with seeded(self.seed):  # initialised as the candidate itself was
            model = MetaNet(self.spec, num_classes=0, img_size=self.data.resolution)
        model = place(model, self.device)
        return compile_candidate(model) if self.runtime is not None and self.runtime.compile else model

    def model_from(self, *stages: str) -> tuple[nn.Module, str]:
        """A copy of the candidate with the weights of the first of ``stages`` that ran, else as built."""
        model = copy.deepcopy(self.model)
        for name in stages:
            weights = self.state.get(name, {}).get("weights")
            if weights is not None:
                model.load_state_dict(weights)
                return model, name
        return model, "init"


@dataclass
class TrialResult:
    status: str                      # OK or FAILED (metanet.runs.store)
    metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None       # from validation metrics: what the search optimises
    error: dict[str, Any] | None = None
    state: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    backbone_stage: str | None = None  # the last stage that left trained backbone weights
    test_score: float | None = None  # the same combination of the test-split metrics: reported, never optimised

    @property
    def resume(self) -> dict[str, dict]:
        """What the fidelity stages left to continue from at the next rung: {stage: {key: state}}."""
        return {name: st["resume"] for name, st in self.state.items() if isinstance(st, dict) and "resume" in st}

    @property
    def backbone_weights(self) -> dict | None:
        return self.state[self.backbone_stage]["weights"] if self.backbone_stage else None


def default_score_weights(stages: list[str], pm: PluginManager | None = None) -> dict[str, float]:
    """The score metric of the last stage that declares one (downstream accuracy by default)."""
    pm = pm or registry()
    for name in reversed(stages):
        metric = pm.stage(name).score_metric
        if metric:
            return {f"{name}.{metric}": 1.0}
    raise ConfigError(f"score: none of the stages {', '.join(stages)} declares a score metric; give --score")


def parse_score(text: str | dict | None) -> dict[str, float] | None:
    """``downstream.acc=1,zero-cost.score=0.01`` (or a mapping) -> weights; a bare name has weight 1."""
    if not text:
        return None
    parts = text.items() if isinstance(text, dict) else \
        [(name, weight) for name, _, weight in (p.partition("=") for p in str(text).split(","))]
    weights = {}
    for name, weight in parts:
        name = str(name).strip()
        if not name:
            raise ConfigError(f"score: empty metric name in {text!r}")
        if name in weights:  # two weights for one metric: which did the user mean?
            raise ConfigError(f"score: metric {name!r} is given twice in {text!r}")
        try:
            if isinstance(weight, bool):
                raise TypeError(weight)
            weights[name] = float(weight) if weight not in ("", None) else 1.0
        except (TypeError, ValueError):
            raise ConfigError(f"score: weight of {name!r} is not a number: {weight!r}") from None
        if not math.isfinite(weights[name]):
            raise ConfigError(f"score: weight of {name!r} must be a finite number, got {weight!r}")
    if weights and not any(weights.values()):
        # every candidate would score 0: the strategy would learn nothing and the "best" would be arbitrary
        raise ConfigError(f"score: every weight is 0 in {text!r}; give at least one metric a weight")
    return weights


def check_score_stages(weights: dict[str, float], stages: list[str]) -> None:
    """Every metric of a score must come from one of ``stages`` (``STAGE.METRIC``), or every evaluation
    would fail when its score is computed: checked before any work."""
    for key in weights:
        if "." not in key or key.split(".", 1)[0] not in stages:
            raise ConfigError(f"score: metric {key!r} comes from no stage of this run (write STAGE.METRIC, "
                              f"stages: {','.join(stages)})", param="score")


def combine_score(metrics: dict[str, float], weights: dict[str, float]) -> float:
    missing = [k for k in weights if k not in metrics]
    if missing:
        raise ConfigError(f"score: metric {missing[0]!r} was not produced (have: {', '.join(sorted(metrics))})")
    return float(sum(metrics[k] * w for k, w in weights.items()))


def combine_se(metrics: dict[str, float], weights: dict[str, float]) -> float | None:
    """The score's standard error from its metrics' (``METRIC_se``, e.g. binomial over validation images),
    taken as independent: ``sqrt(sum (w se)^2)``; None when no metric of the score has one."""
    import math
    ses = [(w, metrics.get(f"{k}_se")) for k, w in weights.items()]
    if all(se is None for _, se in ses):
        return None
    return math.sqrt(sum((w * se) ** 2 for w, se in ses if se is not None))


def test_metric(name: str) -> str:
    """The test-split counterpart of a validation metric: ``downstream.task.acc`` -> ``downstream.task.test_acc``."""
    head, dot, last = name.rpartition(".")
    return f"{head}{dot}test_{last}"


def combine_test_score(metrics: dict[str, float], weights: dict[str, float]) -> float | None:
    """The score's formula over the test-split counterparts of its metrics (metrics without one, such as a
    zero-cost score, enter as they are); None when no metric of the score has a test counterpart."""
    if not any(test_metric(k) in metrics for k in weights):
        return None
    return float(sum(metrics.get(test_metric(k), metrics[k]) * w for k, w in weights.items()))


def check_stages(pm: PluginManager, stages: list[str], config: dict[str, dict] | None) -> dict[str, dict]:
    """Each stage's merged settings; unknown stages or settings are errors raised before any work."""
    config = config or {}
    unknown = [k for k in config if k not in stages]
    if unknown:
        raise ConfigError(f"settings: stage {unknown[0]!r} is not among the stages {','.join(stages)}")
    return {name: pm.stage(name).config(config.get(name)) for name in stages}


def check_stage_data(pm: PluginManager, stages: list[str], configs: dict[str, dict], data: DataBundle) -> None:
    """Settings that name the data's sources or tasks (``amateur.sources``, ``downstream.tasks``), against the
    data the stages will read: an unknown name fails here, not in every trial."""
    from metanet.plugin.settings import check_data_names
    for name in stages:
        check_data_names(name, pm.stage(name).schema, configs[name], data)


def step_size(pm: PluginManager, stages: list[str], configs: dict[str, dict]) -> tuple[int, bool]:
    """The largest batch a step of these stages takes, and whether any trains (for the memory check)."""
    batch = max([int(c["batch_size"]) for c in configs.values() if isinstance(c.get("batch_size"), int)] or [1])
    return batch, any(pm.stage(s).trains_backbone or pm.stage(s).fidelity for s in stages)


def preflight_stages(pm: PluginManager, stages: list[str], configs: dict[str, dict], setup: dict[str, Any]) -> None:
    """Each stage's own check of what the run is set up with (see ``Stage.preflight``)."""
    for name in stages:
        pm.stage(name).preflight(configs[name], setup)


# Where an evaluation says which stage it has entered (set by a search's trial process, which records it in the
# trial's row): a process that dies inside a stage (os._exit, a crash, the OOM killer) is then named by its stage.
STAGE_PROGRESS: Callable[[str, str | None], None] | None = None


def _entered(stage: Stage) -> None:
    if STAGE_PROGRESS is not None:
        try:
            STAGE_PROGRESS(stage.name, stage.plugin)
        except Exception:  # progress is a courtesy: never the reason a trial fails
            pass


class _StageFailed(Exception):
    def __init__(self, plugin: str | None):
        self.plugin = plugin


def run_stage(pm: PluginManager, stage: Stage, ctx: StageContext) -> dict[str, float]:
    """A ``metanet_run_stage`` override if one answers, else the stage's registered runner.

    Whatever raises is attributed to the plugin that registered the code that ran.
    """
    for impl in reversed(pm.hook.metanet_run_stage.get_hookimpls()):
        try:
            result = impl.function(stage=stage.name, context=ctx)
        except (Exception, SystemExit) as exc:
            raise _StageFailed(impl.plugin_name) from _exit_as_error(exc)
        if result is not None:
            return _checked(result, stage.name, impl.plugin_name)
    if stage.ref is None:
        raise _StageFailed(stage.plugin) from RuntimeError(
            f"no plugin ran stage {stage.name!r} (it was registered without run= and no metanet_run_stage answered)")
    try:
        result = stage.obj(ctx)
    except (Exception, SystemExit) as exc:
        raise _StageFailed(stage.plugin) from _exit_as_error(exc)
    return _checked(result, stage.name, stage.plugin)


def _exit_as_error(exc: BaseException) -> BaseException:
    """A stage that calls ``sys.exit`` fails its trial; it does not end the search."""
    if isinstance(exc, SystemExit):
        return RuntimeError(f"the stage called sys.exit({exc.code!r})")
    return exc


def _checked(result, name: str, plugin: str | None) -> dict:
    """A stage's metrics must be a dict. NaN and infinities pass: zero-cost proxies legitimately reach -inf, a
    score that is not finite fails its trial later ("score is nan"), and --json prints the others as null."""
    if not isinstance(result, dict):
        raise _StageFailed(plugin) from TypeError(f"stage {name!r} returned {type(result).__name__}, "
                                                  "not a dict of metrics")
    return result


def evaluate_candidate(spec, stages: list[str], data: DataBundle, *, config: dict[str, dict] | None = None,
                       pm: PluginManager | None = None, score_weights: dict[str, float] | None = None,
                       seed: int = 0, device: str | torch.device | None = None,
                       trial: dict[str, Any] | None = None, model: nn.Module | None = None,
                       accelerator: str = "auto", precision: str = "32", devices: int = 1,
                       compile: bool = False, deterministic: bool = False,
                       fidelity: tuple[int, int] | None = None, resume: dict[str, dict] | None = None) -> TrialResult:
    """Run ``stages`` in order on ``spec``; never raises for a failing stage (the result says failed).

    ``model``: the backbone already built from ``spec`` (no classifier, at the data's resolution, just
    after ``torch.manual_seed(seed)``), to save building it again. ``accelerator``, ``devices`` and
    ``precision`` (``32``, ``bf16-mixed``, ``16-mixed``) set the evaluation's Fabric (:mod:`metanet.train.runtime`):
    with ``devices > 1`` the stages run data-parallel in that many processes; ``compile`` runs the stages'
    forward passes through ``torch.compile``; ``deterministic`` asks GPUs for deterministic kernels (CPUs always
    use them). ``fidelity`` = (steps, max_steps): a rung of a multi-fidelity search for the stages registered
    with ``fidelity=True``, continued from ``resume`` (the result's :attr:`TrialResult.resume` of the previous
    rung). ``device``, when given, overrides the accelerator. Every stage draws its randomness from
    generators seeded by (``seed``, stage, and its own names: source, task, purpose), so the same call gives
    the same metrics, and a stage's numbers do not depend on the stages before it (:mod:`metanet.seeds`).
    """
    from metanet.train.runtime import Runtime
    from metanet.search_spaces.metanet import MetaNet

    pm = pm or registry()
    configs = check_stages(pm, stages, config)  # the caller's errors: raised before any work
    data = data.with_validation()  # a bundle built by hand: carve the validation sets stages score on
    weights = score_weights or default_score_weights(stages, pm)
    if device is not None:
        accelerator = torch.device(device).type
    runtime = Runtime.create(accelerator, precision, devices, compile, deterministic)
    trial = dict(trial or {})
    trial.setdefault("id", 0)
    trial.update(spec=spec.to_dict(), stages=list(stages))
    pm.notify_trial("metanet_trial_started", trial=trial)

    start = time.perf_counter()
    if model is None:
        from metanet.seeds import seeded
        with seeded(seed):  # the initialisation is a function of the seed alone; the caller's generators stay
            model = MetaNet(spec, num_classes=0, img_size=data.resolution)
    try:
        state, metrics, backbone, error = runtime.launch(_run_stages, pm, stages, configs, model, spec, data, seed,
                                                         fidelity, resume)
    except ConfigError as exc:  # the ranks could not start
        state, metrics, backbone, error = {}, {}, None, _error_record(None, None, exc)
    if error is None:
        try:
            score = combine_score(metrics, weights)
        except ConfigError as exc:
            error = _error_record(None, None, exc)
    if error is not None:
        result = TrialResult(FAILED, metrics, None, error, state, time.perf_counter() - start)
        pm.notify_trial("metanet_trial_failed", trial=trial, error=error)
        return result
    test_score = combine_test_score(metrics, weights)
    metrics["score"] = score
    se = combine_se(metrics, weights)
    if se is not None:
        metrics["score_se"] = se
    if test_score is not None:
        metrics["test_score"] = test_score
    result = TrialResult(OK, metrics, score, None, state, time.perf_counter() - start, backbone, test_score)
    pm.notify_trial("metanet_trial_finished", trial=trial, metrics=metrics)
    return result


def _error_record(stage: str | None, plugin: str | None, exc: BaseException) -> dict[str, Any]:
    return {"stage": stage, "plugin": plugin, "message": f"{type(exc).__name__}: {exc}",
            "traceback": "".join(traceback.format_exception(exc, limit=8))}


def _run_stages(pm: PluginManager, stages: list[str], configs: dict[str, dict], model: nn.Module, spec,
                data: DataBundle, seed: int, fidelity: tuple[int, int] | None = None,
                resume: dict[str, dict] | None = None) -> tuple[dict, dict, str | None, dict | None]:
    """The stage loop, in the evaluation's process or in each of its ranks (under the current runtime):
    (state, metrics, the last stage that trained the backbone, error or None)."""
    from metanet.train.runtime import current
    runtime = current()
    device = runtime.device
    model = place(model, device)
    if runtime.compile:
        compile_candidate(model)
    state: dict[str, dict] = {}
    metrics: dict[str, float] = {}
    current_stage, backbone = None, None
    from metanet.seeds import derive, deterministic_algorithms, seeded
    try:
        for current_stage in stages:
            stage = pm.stage(current_stage)
            rung = None
            if fidelity is not None and stage.fidelity:
                from metanet.train.loop import Fidelity
                rung = Fidelity(fidelity[0], fidelity[1], (resume or {}).get(current_stage))
            ctx = StageContext(model, spec, data, configs[current_stage], state, device, seed, runtime, current_stage,
                               rung)
            # each stage draws from generators seeded by (seed, stage): what ran before it cannot change its numbers
            _entered(stage)
            with runtime.active(), seeded(derive(seed, "stage", current_stage), device), \
                    deterministic_algorithms(runtime.deterministic or device.type == "cpu"):
                result = run_stage(pm, stage, ctx)
            state.setdefault(current_stage, {})["metrics"] = dict(result)
            metrics.update({f"{current_stage}.{k}": float(v) for k, v in result.items()})
            if stage.trains_backbone and state[current_stage].get("weights") is not None:
                backbone = current_stage
    except (_StageFailed, ConfigError) as failure:
        exc = failure.__cause__ if isinstance(failure, _StageFailed) else failure
        plugin = failure.plugin if isinstance(failure, _StageFailed) else None
        return state, metrics, None, _error_record(current_stage, plugin, exc)
    return state, metrics, backbone, None


def evaluate_repeated(spec, stages: list[str], data: DataBundle, *, repeats: int = 1, seed: int = 0,
                      model: nn.Module | None = None, trial: dict[str, Any] | None = None, **kwargs) -> TrialResult:
    """:func:`evaluate_candidate` with seeds ``seed .. seed+repeats-1`` (same data split); the result holds
    each metric's mean, ``score_std``/``test_score_std`` (sample standard deviations) and ``repeats``.

    The backbone weights kept are those of the first seed; the first failure fails the whole.
    """
    results = []
    for r in range(repeats):
        result = evaluate_candidate(spec, stages, data, seed=seed + r, model=model if r == 0 else None,
                                    trial={**(trial or {}), "repeat": r}, **kwargs)
        results.append(result)
        if result.status != OK:
            return result
    if repeats == 1:
        return results[0]
    first = results[0]
    keys = [k for k in first.metrics if all(k in r.metrics for r in results)]
    metrics = {k: sum(r.metrics[k] for r in results) / repeats for k in keys}
    for name, values in (("score", [r.score for r in results]), ("test_score", [r.test_score for r in results])):
        if all(v is not None for v in values):
            mean = sum(values) / repeats
            metrics[f"{name}_std"] = (sum((v - mean) ** 2 for v in values) / (repeats - 1)) ** 0.5
    if "score_std" in metrics:  # across seeds: the standard error of their mean
        metrics["score_se"] = metrics["score_std"] / repeats ** 0.5
    metrics["repeats"] = float(repeats)
    return TrialResult(OK, metrics, metrics["score"], None, first.state, sum(r.seconds for r in results),
                       first.backbone_stage, metrics.get("test_score"))
