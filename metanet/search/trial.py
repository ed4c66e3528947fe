"""One trial: evaluate an architecture with the stage plugins and write it to the run's store.

This is what NNI runs for every frozen model, in the search process (sequential engine) or in a
trial process of a training service; everything it needs travels as JSON-serialisable settings.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from metanet.data.load import absolute_data, load_cached
from metanet.search.fidelity import settings as fidelity_settings
from metanet.runs.store import FAILED, OK, spec_key



def trial_settings(cfg, run_dir: Path, budget: int) -> dict[str, Any]:
    """What a trial needs, JSON-serialisable so NNI can ship it to a trial process."""
    # absolute paths: a trial may start in another working directory (NNI's training services)
    return {"run_dir": str(Path(run_dir).resolve()), "budget": budget, "stages": cfg.stages,
            # the second phase's stages take their own settings (metanet.search.proxy_check)
            "settings": {k: v for k, v in cfg.settings.items() if k in cfg.stages},
            "score": cfg.score, "data": absolute_data(cfg.data), "proxy_resolution": cfg.proxy_resolution,
            "data_dir": os.path.abspath(cfg.data_dir) if cfg.data_dir else None,
            "downstream": [os.path.abspath(d) for d in cfg.downstream], "cache": cfg.cache,
            # decoded images the search process wrote for the trial processes of a local training service
            "data_cache": str(data_cache_dir(run_dir)) if cfg.engine == "ts" and cfg.training_service == "local"
            and cfg.cache else None,
            "resolution": cfg.resolution, "seed": cfg.seed, "plugins": cfg.plugins,
            "val_fraction": cfg.val_fraction, "min_val_images": cfg.min_val_images, "repeats": cfg.repeats,
            "accelerator": cfg.accelerator,
            "precision": cfg.precision, "devices": cfg.devices, "compile": cfg.compile,
            "deterministic": cfg.deterministic,
            "invalid_score": cfg.invalid_score, "budget_mode": cfg.budget_mode, "soft_weight": cfg.soft_weight,
            "fidelity": fidelity_settings(cfg),
            # trial processes share the cores: oversubscribed OpenMP threads spin and crawl
            "threads": max(1, (os.cpu_count() or 1) // cfg.concurrency) if cfg.engine == "ts" else None,
            "engine": cfg.engine}


def data_cache_dir(run_dir) -> Path:
    """Where a search writes the decoded images its trial processes map: ``RUN/data-cache``."""
    from metanet.data.decoded import CACHE_DIR
    return Path(run_dir).resolve() / CACHE_DIR


def settings_data(pm, s: dict[str, Any]):
    """The data of a trial's settings, loaded once per process (:func:`metanet.data.load.load_cached`)."""
    from metanet.data import DEFAULT_VAL_FRACTION
    return load_cached(pm, s["data"], s["proxy_resolution"], s["seed"], s.get("val_fraction", DEFAULT_VAL_FRACTION),
                      data_dir=s.get("data_dir"), downstream=s.get("downstream") or (), cache=s.get("cache", True),
                      cache_dir=s.get("data_cache"), min_val_images=s.get("min_val_images"))


def soft_reward(score: float, flops: float, budget: float, weight: float) -> float:
    """MnasNet's soft constraint: ``score * (flops / budget) ** weight`` (for a positive score)."""
    return score * (flops / budget) ** weight


def rewritten_count(proposed: dict[str, Any] | None, evaluated: dict[str, Any]) -> int | None:
    """How many choices of the evaluated spec differ from the architecture the proposal stands for."""
    if proposed is None:
        return None
    return sum(proposed.get(k) != v for k, v in evaluated.items())


def _evaluate(spec, s: dict[str, Any], model=None, trial_id: int | None = None, store=None,
              fidelity: tuple[int, int] | None = None, resume: dict | None = None) -> dict[str, Any]:
    """Run the stages on ``spec``: the outcome as the store records it, and the result (None if it failed
    before the stages ran)."""
    from metanet.plugin.manager import registry
    from metanet.evaluate.candidate import evaluate_repeated

    from metanet.data import decoded
    from metanet.evaluate import candidate
    start = time.perf_counter()
    result, data_info, repro = None, None, None
    if trial_id is not None and store is not None:  # the row says which stage it is in, should the process die there
        candidate.STAGE_PROGRESS = lambda stage, plugin: store.set_stage(trial_id, stage, plugin)
    try:
        pm = registry(s["plugins"])
        before = decoded.decoded_images
        data = settings_data(pm, s)
        data_info = {**decoded.describe(data), "decoded_here": decoded.decoded_images - before,
                     "seconds": round(time.perf_counter() - start, 3)}
        from metanet.evaluate.record import record
        repro = record(pm, s, data)
        result = evaluate_repeated(spec, s["stages"], data, config=s["settings"], pm=pm,
                                   score_weights=s["score"], seed=s["seed"], repeats=s.get("repeats", 1),
                                   trial={"id": trial_id, "budget": s["budget"]}, model=model,
                                   accelerator=s.get("accelerator", "auto"), precision=s.get("precision", "32"),
                                   devices=s.get("devices", 1), compile=s.get("compile", False),
                                   deterministic=s.get("deterministic", False), fidelity=fidelity,
                                   resume=resume)
        status, metrics, score, error = result.status, result.metrics, result.score, None
        if result.error:
            error = f"stage {result.error['stage']} (plugin {result.error['plugin']}): {result.error['message']}"
        if status == OK and (score is None or not math.isfinite(score)):
            status, error = FAILED, f"score is {score}"
    except Exception as exc:  # data or plugin trouble outside the stages: this trial fails, the search goes on
        status, metrics, score, error = FAILED, {}, None, f"{type(exc).__name__}: {exc}"
    finally:
        candidate.STAGE_PROGRESS = None
    return {"status": status, "metrics": metrics, "score": score if status == OK else None,
            "test_score": result.test_score if status == OK else None, "error": error,
            "seconds": time.perf_counter() - start, "result": result, "data": data_info, "repro": repro}


def _reward(outcome: dict[str, Any], flops: int, s: dict[str, Any]) -> float | None:
    if outcome["status"] != OK:
        return None
    if s.get("budget_mode") == "soft":
        return soft_reward(outcome["score"], flops, s["budget"], s["soft_weight"])
    return outcome["score"]


def evaluate_spec(spec, s: dict[str, Any], proposal: dict | None = None,
                  proposed_spec: dict | None = None, model=None, bracket: tuple[int, int] | None = None
                  ) -> tuple[float, dict]:
    """Evaluate one architecture and record it; returns (reward for the strategy, row).

    ``proposal`` is what the strategy proposed (its own choices) and ``proposed_spec`` the
    architecture that proposal stands for before anything else touched it; both are stored, with
    the number of choices in which the evaluated spec differs (0 unless the walk rewrote it).

    In a multi-fidelity search (``fidelity`` in the settings) the trial is evaluated at its first rung
    (``bracket`` = (bracket id, start rung) for sh/hyperband, whose middleware continues the bracket's best
    later), and under asha continued rung by rung for as long as :func:`metanet.search.fidelity.asha_continues`
    says; the reward is that of the highest rung reached.

    With a ``run_dir`` in the settings the trial writes the run's store itself (and keeps the weights
    of the best); without one (remote machines, which need not see the run directory) the row is
    returned whole, for NNI to carry back to the search process, which writes it (:func:`nni_trial`).
    """
    from metanet.search_spaces.estimate import estimate

    spec_dict = spec.to_dict()
    rewritten = rewritten_count(proposed_spec, spec.to_sample())
    if s.get("run_dir") is None:
        est = estimate(spec, s["resolution"])
        outcome = _evaluate(spec, s, model)
        result = outcome.pop("result")
        reward = _reward(outcome, est.flops, s)
        row = {**outcome, "budget": s["budget"], "spec": spec_dict, "flops": est.flops, "params": est.params,
               "seed": s["seed"], "proposal": proposal, "rewritten": rewritten, "reward": reward}
        if outcome["status"] == OK and result is not None and result.backbone_stage:
            row["weights"] = leave_weights(result, s)
        return (reward if reward is not None else s["invalid_score"]), row

    from metanet.runs.directory import RunDir
    run = RunDir(s["run_dir"])
    store = run.store
    seen = store.lookup(s["budget"], spec_key(spec_dict))
    if seen is not None:  # the same architecture again (another proposal projected onto it)
        store.bump(s["budget"], "duplicates")
        replay = seen["reward"] if seen["reward"] is not None else seen["score"]
        return (replay if seen["status"] == OK else s["invalid_score"]), {**seen, "replayed": True}
    est = estimate(spec, s["resolution"])
    trial_id = store.start(s["budget"], spec_dict, est.flops, est.params, s["seed"], proposal, rewritten)
    if s.get("fidelity"):
        reward, outcome = _ladder(run, trial_id, spec, s, est.flops, model, bracket)
    else:
        outcome = _evaluate(spec, s, model, trial_id, store)
        reward = _reward(outcome, est.flops, s)
        commit_trial(run, trial_id, outcome, reward, s)
    row = {"id": trial_id, "status": outcome["status"], "score": outcome["score"], "reward": reward,
           "test_score": outcome.get("test_score"), "metrics": outcome.get("metrics"), "flops": est.flops,
           "params": est.params}
    return (reward if reward is not None else s["invalid_score"]), row


def ui_metrics(reward: float, row: dict[str, Any]) -> dict[str, float]:
    """The final metric NNI shows for a trial: its reward as ``default`` (what the strategy maximises), and the
    numbers metanet records beside it (score, test score, MFLOPs, M params, every numeric stage metric)."""
    shown = {"default": float(reward)}
    for key, value in (("score", row.get("score")), ("test_score", row.get("test_score")),
                       ("mflops", row["flops"] / 1e6 if row.get("flops") else None),
                       ("mparams", row["params"] / 1e6 if row.get("params") else None),
                       *sorted((row.get("metrics") or {}).items())):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            shown[key] = float(value)
    return shown


def leave_weights(result, s: dict[str, Any]) -> dict[str, Any]:
    """A remote trial's trained backbone, left in its NNI output folder for the search to fetch over SSH if it
    keeps it (weights are far too large for NNI's metric channel); returns where they are."""
    import socket
    from safetensors.torch import save_file
    folder = Path(os.environ.get("NNI_OUTPUT_DIR") or ".").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "metanet-backbone.safetensors"
    save_file({k: v.contiguous() for k, v in result.backbone_weights.items()}, str(path),
              metadata={"stage": result.backbone_stage, "img_size": str(s["proxy_resolution"])})
    return {"path": str(path), "host": socket.gethostname(), "stage": result.backbone_stage,
            "img_size": s["proxy_resolution"]}


def _ladder(run, trial_id: int, spec, s: dict[str, Any], flops: int, model=None,
            bracket: tuple[int, int] | None = None) -> tuple[float | None, dict]:
    """A new trial of a multi-fidelity search: its first rung, then (asha) the rungs it earns."""
    from metanet import fidelity
    start = bracket[1] if bracket else 0
    outcome, rungs = run_rung(run, trial_id, spec, s, start, flops, model=model,
                              bracket=bracket[0] if bracket else None)
    if s["fidelity"]["scheduler"] == "asha":
        ladder, k = fidelity.ladder_of(s), start
        while outcome["status"] == OK and k < ladder.top:
            recorded = [fidelity.rung_score(r, k) for r in run.store.trials(s["budget"])]
            go_on = fidelity.asha_continues(outcome["score"], recorded, ladder.eta)
            rungs = _decided(rungs, go_on)
            run.store.set_rungs(trial_id, rungs)
            if not go_on:
                break
            resume = outcome["result"].resume if outcome["result"] is not None else None
            outcome, rungs = run_rung(run, trial_id, spec, s, k + 1, flops, resume=resume, prior=rungs)
            if outcome["status"] != OK:
                break
            k += 1
        fidelity.drop_checkpoint(run.path, trial_id)
    row = next(r for r in run.store.trials(s["budget"]) if r["id"] == trial_id)
    return row["reward"], {**outcome, "status": row["status"], "score": row["score"]}


def _decided(rungs: list[dict], go_on: bool) -> list[dict]:
    """``rungs`` with asha's decision on the last one (a resumed search continues the ones marked to go on)."""
    return [*rungs[:-1], {**rungs[-1], "continue": go_on}]


def run_rung(run, trial_id: int, spec, s: dict[str, Any], k: int, flops: int, model=None, resume: dict | None = None,
             prior: list[dict] | None = None, bracket: int | None = None) -> tuple[dict, list[dict]]:
    """Evaluate trial ``trial_id`` at rung ``k`` (continued from ``resume``, the states of rung ``k-1``, or
    trained straight to it without), store the rung and its checkpoint; returns (outcome, rungs).

    The row takes the rung's metrics and score when it finishes; a continuation that fails leaves the row
    at the rung below, with the failure recorded in its rung."""
    from metanet import fidelity
    ladder = fidelity.ladder_of(s)
    steps = ladder.rungs[k]
    outcome = _evaluate(spec, s, model, trial_id, run.store, fidelity=(steps, ladder.max_steps), resume=resume)
    continued = resume is not None and k > 0
    entry = {"rung": k, "steps": steps, "trained": steps - (ladder.rungs[k - 1] if continued else 0),
             "score": outcome["score"], "test_score": outcome["test_score"],
             "score_se": (outcome["metrics"] or {}).get("score_se"), "seconds": round(outcome["seconds"], 3)}
    if outcome["status"] != OK:
        entry["error"] = outcome["error"]
    rungs = [*(prior or []), entry]
    if outcome["status"] == OK and k < ladder.top and outcome["result"] is not None:
        fidelity.save_checkpoint(run.path, trial_id, k, steps, outcome["result"].resume)
    if prior and outcome["status"] != OK:  # keep the finished rungs as the trial's result
        run.store.set_rungs(trial_id, rungs)
        return outcome, rungs
    outcome = {**outcome, "seconds": sum(r["seconds"] for r in rungs)}
    commit_trial(run, trial_id, outcome, _reward(outcome, flops, s), s, rungs=rungs, bracket=bracket)
    return outcome, rungs


def continue_trial(run, row: dict[str, Any], k: int, s: dict[str, Any]) -> dict:
    """Trial ``row`` continued to rung ``k`` from its checkpoint (trained straight to the rung if the
    checkpoint is gone: with the schedule over the ladder's maximum, the same numbers at a higher cost)."""
    from metanet import fidelity
    from metanet.search_spaces.spec import ArchSpec
    ckpt = fidelity.load_checkpoint(run.path, row["id"])
    resume = ckpt["resume"] if ckpt is not None and ckpt.get("rung") == k - 1 else None
    outcome, _ = run_rung(run, row["id"], ArchSpec.from_dict(row["spec"]), s, k, row["flops"], resume=resume,
                          prior=row.get("rungs") or [])
    return outcome


def commit_trial(run, trial_id: int, outcome: dict[str, Any], reward: float | None, s: dict[str, Any],
                 rungs: list[dict] | None = None, bracket: int | None = None) -> None:
    """Weights first (atomically), then the row: a process killed in between leaves the trial
    ``running``, which resume evaluates again, never an ``ok`` row whose kept weights are missing."""
    result = outcome["result"]
    steps = rungs[-1]["steps"] if rungs else 0
    if outcome["status"] == OK and result is not None and result.backbone_stage \
            and trial_id in run.kept(s["budget"], trial_id, outcome["score"], steps):
        run.save_weights(trial_id, result.backbone_weights, result.backbone_stage, s["proxy_resolution"])
    run.store.finish(trial_id, outcome["status"], outcome["metrics"], outcome["score"], outcome["error"],
                     outcome["seconds"], reward, outcome["test_score"], outcome["data"], outcome["repro"],
                     rungs=rungs, bracket=bracket)
    if outcome["status"] == OK:
        run.drop_weights(s["budget"])


def repair_weights(run, row: dict[str, Any], s: dict[str, Any]) -> bool:
    """Evaluate a finished trial again to restore kept weights a killed process never wrote; its row
    takes the new outcome. Returns whether the weights are back."""
    from metanet.search_spaces.spec import ArchSpec
    fidelity = None
    if s.get("fidelity") and row.get("rungs"):  # trained straight to its highest rung: the same weights
        done = [r for r in row["rungs"] if r.get("score") is not None]
        fidelity = (done[-1]["steps"], s["fidelity"]["max"]) if done else None
    outcome = _evaluate(ArchSpec.from_dict(row["spec"]), s, trial_id=row["id"], store=run.store, fidelity=fidelity)
    result = outcome["result"]
    if outcome["status"] == OK and result is not None and result.backbone_stage:
        run.save_weights(row["id"], result.backbone_weights, result.backbone_stage, s["proxy_resolution"])
    run.store.finish(row["id"], outcome["status"], outcome["metrics"], outcome["score"], outcome["error"],
                     outcome["seconds"], _reward(outcome, row["flops"], s), outcome["test_score"], outcome["data"],
                     outcome["repro"], rungs=row.get("rungs"), bracket=row.get("bracket"))
    return run.weights_path(row["id"]).exists()


def nni_trial(model, settings: dict[str, Any]) -> None:
    """The function NNI's FunctionalEvaluator calls with each frozen model (in-process or in a trial process)."""
    import nni
    if settings.get("threads"):
        import torch
        torch.set_num_threads(settings["threads"])
    # the model NNI built is used as is when it was initialised as the stages would (same seed)
    built = model if getattr(model, "built_seed", None) == settings["seed"] else None
    from metanet.search.fidelity import HANDOFF
    reward, row = evaluate_spec(model.spec, settings, getattr(model, "proposal", None),
                                getattr(model, "proposed_spec", None), model=built, bracket=HANDOFF.bracket)
    HANDOFF.trial, HANDOFF.replayed = row.get("id"), bool(row.get("replayed"))  # for the fidelity middleware
    if settings.get("engine", "ts") == "sequential":  # no manager, no UI: the strategy's events carry the reward
        nni.report_final_result(float(reward))
        return
    shown = ui_metrics(reward, row)  # NNI's UI shows these; strategies read the default (model.metric)
    if settings.get("run_dir") is None:  # the search process writes the row (metanet.search.nni_adapter.trial_keeper)
        shown["metanet_row"] = row
    nni.report_final_result(shown)
