"""Running evaluation stages on a candidate: the context stages receive, and the trial loop.

A stage is registered by a plugin (``metanet_register_stages``) and run through the
``metanet_run_stage`` hook. :func:`evaluate_candidate` runs the stages a user picked, in order, on one
architecture, turns their metrics into the score the search optimises, and reports the trial to the
observer hooks. A stage that raises never takes the caller down: the trial is marked failed with the
stage, the plugin whose code raised and the error.
"""
from __future__ import annotations

import copy
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from .data import DataBundle
from .plugin_manager import PluginManager, get_plugin_manager


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

    def fresh_model(self) -> nn.Module:
        """A new, randomly initialised copy of the candidate (for from-scratch baselines)."""
        from metanet.search_spaces.metanet import MetaNet
        torch.manual_seed(self.seed)
        return MetaNet(self.spec, num_classes=0, img_size=self.data.resolution).to(self.device)

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
    status: str                      # "finished" or "failed"
    metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None
    error: dict[str, Any] | None = None
    state: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def default_score_weights(stages: list[str]) -> dict[str, float]:
    """Downstream accuracy; the zero-cost score when that is the only stage; else the last stage's acc."""
    if "downstream" in stages:
        return {"downstream.acc": 1.0}
    if stages == ["zero-cost"]:
        return {"zero-cost.score": 1.0}
    return {f"{stages[-1]}.acc": 1.0}


def parse_score(text: str | None) -> dict[str, float] | None:
    """``downstream.acc=1,zero-cost.score=0.01`` -> weights; a bare name has weight 1."""
    if not text:
        return None
    weights = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        try:
            weights[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"score: weight of {name.strip()!r} is not a number: {weight!r}") from None
        if not name.strip():
            raise ValueError(f"score: empty metric name in {text!r}")
    return weights


def combine_score(metrics: dict[str, float], weights: dict[str, float]) -> float:
    missing = [k for k in weights if k not in metrics]
    if missing:
        raise KeyError(f"score: metric {missing[0]!r} was not produced (have: {', '.join(sorted(metrics))})")
    return float(sum(metrics[k] * w for k, w in weights.items()))


def stage_config(pm: PluginManager, stage: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    reg = pm.get("stages", stage)
    defaults = dict(reg.options.get("defaults") or {})
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in defaults]
    if unknown:
        raise KeyError(f"stage {stage!r}: unknown setting {unknown[0]!r} (settings: {', '.join(defaults)})")
    return {**defaults, **overrides}


def evaluate_candidate(spec, stages: list[str], data: DataBundle, *, config: dict[str, dict] | None = None,
                       pm: PluginManager | None = None, score_weights: dict[str, float] | None = None,
                       seed: int = 0, device: str | torch.device | None = None,
                       trial: dict[str, Any] | None = None) -> TrialResult:
    """Run ``stages`` in order on ``spec``; never raises for a failing stage (the result says failed)."""
    from metanet.search_spaces.metanet import MetaNet

    pm = pm or get_plugin_manager()
    config = config or {}
    for name in stages:  # bad stage names or settings are the caller's error: raise before any work
        stage_config(pm, name, config.get(name))
    unknown = [k for k in config if k not in stages]
    if unknown:
        raise KeyError(f"settings for stage {unknown[0]!r}, which is not among the stages {stages}")
    weights = score_weights or default_score_weights(stages)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    trial = dict(trial or {})
    trial.setdefault("id", 0)
    trial.update(spec=spec.to_dict(), stages=list(stages))
    for problem in pm.notify("metanet_trial_started", trial=trial):
        trial.setdefault("warnings", []).append(problem)

    start = time.perf_counter()
    torch.manual_seed(seed)
    model = MetaNet(spec, num_classes=0, img_size=data.resolution).to(device)
    state: dict[str, dict] = {}
    metrics: dict[str, float] = {}
    current = None
    try:
        for current in stages:
            ctx = StageContext(model, spec, data, stage_config(pm, current, config.get(current)), state, device, seed)
            result = pm.hook.metanet_run_stage(stage=current, context=ctx)
            if result is None:
                raise RuntimeError(f"no plugin ran stage {current!r} (is the plugin that implements it loaded?)")
            state.setdefault(current, {})["metrics"] = dict(result)
            metrics.update({f"{current}.{k}": float(v) for k, v in result.items()})
        score = combine_score(metrics, weights)
    except Exception as exc:
        plugin = pm.blame("metanet_run_stage", exc)
        error = {"stage": current, "plugin": plugin, "message": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc(limit=8)}
        result = TrialResult("failed", metrics, None, error, state, time.perf_counter() - start)
        pm.notify("metanet_trial_failed", trial=trial, error=error)
        return result
    metrics["score"] = score
    result = TrialResult("finished", metrics, score, None, state, time.perf_counter() - start)
    pm.notify("metanet_trial_finished", trial=trial, metrics=metrics)
    return result
