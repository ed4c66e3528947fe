"""Multi-fidelity search: spend training where it pays (successive halving, Hyperband, ASHA).

``--fidelity MIN:MAX`` makes the training steps of the training stages (those registered with
``fidelity=True``: amateur, expert, generalist) the resource, on a ladder of rungs ``MAX / eta^k`` down to
``MIN`` (``20:180`` with ``--eta 3``: 20, 60, 180 steps). Every trial starts at a rung and is *continued*
to the next one from its checkpoint (model, optimiser, schedule position, data stream and random
generators; :class:`metanet.train.loop.StageTrainer`), never restarted. The learning-rate schedule is
defined over MAX, so with one training stage a trial continued to a rung equals one trained straight to
it; in a chain (amateur, expert, generalist) each stage continues its own training, so the later ones
started from the earlier rung's weights.

Schedulers (Li et al.; the conventions of Optuna's ``SuccessiveHalvingPruner`` / ``HyperbandPruner`` and Ray
Tune's ``ASHAScheduler``):

* ``sh`` (default on the sequential engine): brackets of ``eta^s`` candidates (``s`` rungs above the first,
  the last bracket smaller); all start at the first rung, and the best ``max(1, n // eta^k)`` of rung ``k-1``
  are continued to rung ``k``. ``--trials 9 --fidelity 20:180 --eta 3``: 9 trials at 20 steps, 3 continued to
  60, 1 to 180.
* ``hyperband``: brackets ``s = s_max .. 0`` in turn, bracket ``s`` starting ``ceil((s_max+1)/(s+1) eta^s)``
  candidates at rung ``s_max - s`` (many cheap ones, then fewer at higher rungs), each halved as above.
* ``asha`` (default on the training-service engine): asynchronous; each trial decides alone after each rung
  whether to go on: it continues if its score is at or above the ``1 - 1/eta`` quantile of the scores that
  rung has recorded so far (so the first trials at a rung go on), else it stops there.

The strategy receives the score of the highest rung a trial reached: for sh and hyperband once its bracket
is complete (a middleware holds the trial's result back until then), for asha at the end of the trial.
The highest rung is the most faithful estimate the search paid for, and promoted trials are the ones that
were best at the rungs below, so the order a strategy sees is the order the ladder found; a rung-0 score
for every trial would throw that away. Every rung is stored (``rungs`` in ``results --json``), and the best
of a budget is the best trial among those at the highest rung reached.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from metanet.errors import ConfigError

SCHEDULERS = ("sh", "hyperband", "asha")
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Ladder:
    """The rungs of a multi-fidelity search: cumulative training steps, ``max_steps / eta^k`` down to
    ``min_steps`` (``20:180``, eta 3: 20, 60, 180)."""

    min_steps: int
    max_steps: int
    eta: int = 3

    @property
    def rungs(self) -> list[int]:
        s = max(0, int(math.floor(math.log(self.max_steps / self.min_steps, self.eta) + 1e-9)))
        out = sorted({max(1, round(self.max_steps / self.eta ** (s - k))) for k in range(s + 1)})
        return out

    @property
    def top(self) -> int:
        return len(self.rungs) - 1

    def kept(self, n: int, rung: int, start: int = 0) -> int:
        """Trials of a bracket of ``n`` (started at rung ``start``) that reach ``rung``."""
        return n if rung <= start else max(1, n // self.eta ** (rung - start))

    def describe(self) -> str:
        return ", ".join(f"{r}" for r in self.rungs) + " steps"


def brackets(ladder: Ladder, scheduler: str) -> Iterator[tuple[int, int]]:
    """Endless (start rung, candidates) of the brackets ``scheduler`` runs, in order."""
    s_max = ladder.top
    if scheduler == "hyperband":
        while True:
            for s in range(s_max, -1, -1):
                yield s_max - s, int(math.ceil((s_max + 1) / (s + 1) * ladder.eta ** s))
    else:
        while True:
            yield 0, ladder.eta ** s_max


def asha_continues(score: float, recorded: list[float], eta: int) -> bool:
    """ASHA's stop-or-continue rule (as Ray Tune's): go on if ``score`` is at or above the ``1 - 1/eta``
    quantile of the scores recorded at the rung (``recorded`` includes it)."""
    import numpy as np
    values = [v for v in recorded if v is not None and math.isfinite(v)]
    if not values:
        return True
    return score >= float(np.percentile(values, 100 * (1 - 1 / eta)))


def default_scheduler(engine: str) -> str:
    return "asha" if engine == "ts" else "sh"


def check(cfg, pm) -> None:
    """Fidelity options that cannot work, before anything is written."""
    if cfg.fidelity is None:
        if cfg.scheduler is not None:
            raise ConfigError("scheduler: needs --fidelity MIN:MAX (the training steps the ladder spends)",
                              param="scheduler")
        return
    scheduler = cfg.scheduler or default_scheduler(cfg.engine)
    if scheduler in ("sh", "hyperband") and cfg.engine == "ts":
        raise ConfigError(f"scheduler: {scheduler} waits for whole brackets, which the training-service engine's "
                          "parallel trials do not; use --scheduler asha (its default) or --engine sequential",
                          param="scheduler")
    if cfg.engine == "ts" and cfg.training_service != "local":
        raise ConfigError("fidelity: ASHA's trials read each other's rung scores in the run's store, which remote "
                          "machines do not see; use the local training service or the sequential engine",
                          param="fidelity")
    if cfg.repeats > 1:
        raise ConfigError("fidelity: --repeats > 1 is not supported with --fidelity (a ladder continues one "
                          "seed's training)", param="repeats")
    stages = [s for s in cfg.stages if pm.stage(s).fidelity]
    if not stages:
        raise ConfigError(f"fidelity: none of the stages {','.join(cfg.stages)} trains in steps (amateur, expert "
                          "and generalist do)", param="fidelity")


def settings(cfg) -> dict[str, Any] | None:
    """What a trial needs to know of the ladder (JSON)."""
    if cfg.fidelity is None:
        return None
    ladder = Ladder(*cfg.fidelity, cfg.eta)
    return {"min": cfg.fidelity[0], "max": cfg.fidelity[1], "eta": cfg.eta, "rungs": ladder.rungs,
            "scheduler": cfg.scheduler or default_scheduler(cfg.engine)}


def ladder_of(s: dict[str, Any]) -> Ladder:
    f = s["fidelity"]
    return Ladder(f["min"], f["max"], f["eta"])


def checkpoint_path(run_dir, trial_id: int) -> Path:
    return Path(run_dir) / CHECKPOINTS / f"trial_{trial_id}.pt"


def save_checkpoint(run_dir, trial_id: int, rung: int, steps: int, resume: dict) -> None:
    """The states a trial continues from at its next rung, replaced atomically (one file per trial: its
    latest rung)."""
    import torch

    from metanet.atomic import replace_atomically
    path = checkpoint_path(run_dir, trial_id)
    path.parent.mkdir(exist_ok=True)
    replace_atomically(path, lambda p: torch.save({"rung": rung, "steps": steps, "resume": resume}, p))


def load_checkpoint(run_dir, trial_id: int) -> dict | None:
    import torch
    path = checkpoint_path(run_dir, trial_id)
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)  # tensors, numbers, strings only
    except Exception:
        return None


def drop_checkpoint(run_dir, trial_id: int) -> None:
    checkpoint_path(run_dir, trial_id).unlink(missing_ok=True)


def rung_reached(row: dict[str, Any]) -> int:
    """The index of the highest rung a trial finished (-1: none)."""
    done = [r for r in (row.get("rungs") or []) if r.get("score") is not None]
    return max((r["rung"] for r in done), default=-1)


def rung_score(row: dict[str, Any], rung: int) -> float | None:
    for r in row.get("rungs") or []:
        if r["rung"] == rung and r.get("score") is not None:
            return r["score"]
    return None


def ladder_table(rows: list[dict[str, Any]]) -> str:
    """How many trials each rung held, per budget: what ``results`` prints under its table."""
    from metanet.budget import format_flops
    lines = []
    for budget in sorted({r["budget"] for r in rows}):
        mine = [r for r in rows if r["budget"] == budget and r.get("rungs")]
        if not mine:
            continue
        steps: dict[int, int] = {}
        count: dict[int, int] = {}
        for r in mine:
            for rung in r["rungs"]:
                if rung.get("score") is not None:
                    steps[rung["rung"]] = rung["steps"]
                    count[rung["rung"]] = count.get(rung["rung"], 0) + 1
        ladder = ", ".join(f"{count[k]} at {steps[k]} steps" for k in sorted(count))
        total = sum(rung.get("trained", 0) for r in mine for rung in r["rungs"] if rung.get("score") is not None)
        lines.append(f"ladder {format_flops(budget)}: {ladder} ({total:,} training steps in all)")
    return "\n".join(lines)


class Handoff:
    """Between the middleware and the trial it submits: the sequential engine evaluates a submitted model
    inside ``submit_models``, on the network it builds from it (not the object the middleware holds), so the
    bracket goes in and the trial's id comes out here, for the length of that call."""

    bracket: tuple[int, int] | None = None
    trial: int | None = None
    replayed: bool = False


HANDOFF = Handoff()
