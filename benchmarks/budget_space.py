"""The budget-centred space per budget: how it is derived, how many uniform proposals land in the band.

    python benchmarks/budget_space.py [--budgets 300M,600M,1.2G,3.2G] [--n 4000] [--searches 3] [--json]

Per budget: the derivation time, the share of uniform proposals that land in the FLOP band as
proposed (no rewriting), the choice values pruned up front, and the operator mix of stages 1-5
among the in-band proposals. With ``--searches N``: ``metanet search --flops B --strategy S --stages
zero-cost --trials N`` for every budget and strategy, checking that every finished trial is its own
proposal (``rewritten == 0``, spec == decoded proposal) and that its FLOPs, recounted by fvcore on the
built model, lie in the band; and a 1.2G random search's share of ``mbconv`` among stage 1-5 operators.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path


def derive(budget: int, n: int) -> dict:
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    t0 = time.perf_counter()
    space = budget_space(DEFAULT_SPACE, budget)
    seconds = time.perf_counter() - t0
    share = space.in_band_share(n, seed=12345)
    rng, ops = random.Random(7), Counter()
    for _ in range(n):
        spec = space.decode(space.random_sample(rng))
        if space.distance(space.flops(spec)) == 0:
            ops.update(spec.ops[1:])
    total = sum(ops.values()) or 1
    return {"budget": budget, "derive_seconds": round(seconds, 2), "in_band": share["in_band"],
            "pruned": len(space.pruned), "labels": len(space.choices()),
            "stage1_5_op_mix": {op: round(c / total, 3) for op, c in ops.most_common()}}


def searches(budgets: list[int], trials: int) -> list[dict]:
    from metanet.search_spaces.counter import count_flops
    from metanet.search.driver import run_search
    from metanet.runs.config import SearchConfig
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.metanet import MetaNet
    from metanet.search_spaces.unified import DEFAULT_SPACE
    from metanet.runs.store import OK, TrialStore
    rows = []
    root = Path(tempfile.mkdtemp())
    for budget in budgets:
        space = budget_space(DEFAULT_SPACE, budget)
        for strategy in ("random", "evolution", "tpe", "ppo"):
            out = root / f"{strategy}-{budget}"
            n = trials * 5 if (strategy == "random" and budget == 1_200_000_000) else trials
            run_search(SearchConfig.from_dict({"out": str(out), "flops": [budget], "strategy": strategy,
                                               "stages": "zero-cost", "trials": n}), progress=False,
                       echo=lambda m: None)
            done = [r for r in TrialStore(out / "trials.sqlite").trials() if r["status"] == OK]
            recounted = [count_flops(MetaNet(r["spec"]), 224).total for r in done]
            ops = Counter(op for r in done for op in (r["spec"][f"s{i}_op"] for i in range(1, 6)))
            rows.append({"budget": budget, "strategy": strategy, "trials": len(done),
                         "rewritten": sum(r["rewritten"] for r in done),
                         "spec_is_proposal": all(space.decode(r["proposal"]).to_dict() == r["spec"] for r in done),
                         "in_band_recounted": all(0.9 * budget * 0.99 <= f <= budget * 1.01 for f in recounted),
                         "mbconv_share_s1_5": round(ops["mbconv"] / max(1, sum(ops.values())), 3)})
    shutil.rmtree(root, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="300M,600M,1.2G,3.2G")
    ap.add_argument("--n", type=int, default=4000, help="uniform proposals per budget")
    ap.add_argument("--searches", type=int, default=0, help="trials per search (0: no searches)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from metanet.budget import format_flops, parse_budgets
    budgets = parse_budgets(args.budgets)
    spaces = [derive(b, args.n) for b in budgets]
    runs = searches(budgets, args.searches) if args.searches else []
    if args.json:
        print(json.dumps({"spaces": spaces, "searches": runs}))
        return
    print(f"{'budget':>7} {'derive':>7} {'in band':>8} {'pruned':>6}  stage 1-5 operators of in-band proposals")
    for r in spaces:
        mix = ", ".join(f"{op} {s:.0%}" for op, s in r["stage1_5_op_mix"].items())
        print(f"{format_flops(r['budget']):>7} {r['derive_seconds']:>6.1f}s {r['in_band']:>8.1%} {r['pruned']:>6}  {mix}")
    for r in runs:
        print(f"search {format_flops(r['budget']):>5} {r['strategy']:<9} trials {r['trials']:>3}  rewritten "
              f"{r['rewritten']}  spec==proposal {r['spec_is_proposal']}  recounted in band "
              f"{r['in_band_recounted']}  mbconv share s1-5 {r['mbconv_share_s1_5']:.0%}")


if __name__ == "__main__":
    main()
