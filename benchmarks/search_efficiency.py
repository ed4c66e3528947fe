"""Do the learning strategies beat random search? Same cheap deterministic objective, same space and budget.

    python benchmarks/search_efficiency.py [--budget 300M] [--seeds 5] [--trials 100] [--json]

The objective is the naswot zero-cost score of an architecture at a fixed seed (its weights, its
batch): deterministic per architecture, so the strategies are compared on the objective alone.
Every search runs through ``metanet search`` (the budget-centred space, screening with the distance
penalty, the store), with ``--seeds`` seeds per strategy; the table gives the best score found after
25, 50 and 100 finished trials: median over seeds, and the spread (min, max). ``--json`` prints
``{"objective", "budget", "rows": [{"strategy", "trials", "median_best", "min_best", "max_best"}]}``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from metanet import hookimpl

OBJECTIVE = "naswot score at seed 0 (batch of 32 digits at the proxy resolution)"
_cache: dict[str, float] = {}


def objective(context) -> dict:
    """The architecture's naswot score with its weights and batch fixed: a function of the spec alone."""
    import torch

    from metanet.plugins.stages.zero_cost import _naswot
    from metanet.search_spaces.metanet import MetaNet
    key = context.spec.to_json(indent=None)
    if key not in _cache:
        split = next(iter(context.data.sources.values()))
        g = torch.Generator().manual_seed(0)
        idx = torch.randperm(len(split.train), generator=g)[:32]
        x = torch.stack([split.train[int(i)][0] for i in idx])
        torch.manual_seed(0)
        _cache[key] = _naswot(MetaNet(context.spec, num_classes=0, img_size=context.data.resolution), x)
    return {"score": _cache[key]}


@hookimpl
def metanet_register_stages(register):
    register("fixed-naswot", objective, score_metric="score", description=OBJECTIVE)


def best_after(scores: list[float], k: int) -> float:
    return max(scores[:k])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="300M")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--strategies", default="random,evolution,tpe,ppo")
    ap.add_argument("--proxy-resolution", type=int, default=16)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.modules.setdefault("search_efficiency_objective", sys.modules[__name__])

    from metanet.search.driver import run_search
    from metanet.runs.config import SearchConfig
    from metanet.runs.store import OK, TrialStore
    checkpoints = [k for k in (25, 50, 100) if k <= args.trials] or [args.trials]
    root = Path(tempfile.mkdtemp())
    rows, started = [], time.perf_counter()
    for strategy in args.strategies.split(","):
        bests: dict[int, list[float]] = {k: [] for k in checkpoints}
        t0 = time.perf_counter()
        for seed in range(args.seeds):
            out = root / f"{strategy}-{seed}"
            cfg = SearchConfig.from_dict({"out": str(out), "flops": args.budget, "strategy": strategy, "seed": seed,
                                          "stages": "fixed-naswot", "trials": args.trials,
                                          "proxy_resolution": args.proxy_resolution,
                                          "plugins": ["search_efficiency_objective"]})
            run_search(cfg, progress=False, echo=lambda m: None)
            scores = [r["score"] for r in TrialStore(out / "trials.sqlite").trials() if r["status"] == OK]
            for k in checkpoints:
                bests[k].append(best_after(scores, k))
        for k in checkpoints:
            rows.append({"strategy": strategy, "trials": k, "median_best": statistics.median(bests[k]),
                         "min_best": min(bests[k]), "max_best": max(bests[k])})
        if not args.json:
            print(f"{strategy}: {args.seeds} searches in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    shutil.rmtree(root, ignore_errors=True)
    last = checkpoints[-1]
    random_median = next((r["median_best"] for r in rows if r["strategy"] == "random" and r["trials"] == last), None)
    if args.json:
        print(json.dumps({"objective": OBJECTIVE, "budget": args.budget, "rows": rows}))
        return
    print(f"objective: {OBJECTIVE}; budget {args.budget}; {args.seeds} seeds; "
          f"{time.perf_counter() - started:.0f}s in all")
    print(f"{'strategy':<10} {'trials':>6} {'median best':>12} {'min':>10} {'max':>10}")
    for r in rows:
        print(f"{r['strategy']:<10} {r['trials']:>6} {r['median_best']:>12.3f} {r['min_best']:>10.3f} "
              f"{r['max_best']:>10.3f}")
    if random_median is not None:
        for r in rows:
            if r["trials"] == last and r["strategy"] != "random":
                verdict = "beats" if r["median_best"] > random_median else "does NOT beat"
                print(f"{r['strategy']} {verdict} random at {last} trials in median "
                      f"({r['median_best']:.3f} vs {random_median:.3f})")


if __name__ == "__main__":
    main()
