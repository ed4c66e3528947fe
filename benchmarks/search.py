"""Search throughput: estimator screening rate, zero-cost trials per second, toolkit overhead vs bare NNI.

    python benchmarks/search.py [--trials 20] [--proxy-resolution 16] [--budget 400M]

1. proposals screened per second from the analytic estimator, and the share of uniform proposals in
   the band: the budget-centred space vs the absolute unified space;
2. trials per second of ``metanet search`` with the zero-cost stage on the sequential engine;
3. a bare NNI sequential experiment doing the same zero-cost work on the same proposals (same space,
   same strategy and seed, the same band screen as a plain ``Filter``), and the toolkit's overhead
   per trial (store, proposal records, registry, trial hooks) against it.
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--proxy-resolution", type=int, default=16)
    ap.add_argument("--budget", default="400M")
    args = ap.parse_args()

    from metanet.budget import parse_flops
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.estimate import estimate
    from metanet.search_spaces.unified import DEFAULT_SPACE
    budget = parse_flops(args.budget)
    space = budget_space(DEFAULT_SPACE, budget)
    rng = random.Random(0)
    samples = [space.random_sample(rng) for _ in range(2000)]
    t0 = time.perf_counter()
    inside = sum(space.distance(estimate(space.decode(s), 224).flops) == 0 for s in samples)
    screen_rate = len(samples) / (time.perf_counter() - t0)
    absolute = [DEFAULT_SPACE.random_spec(rng) for _ in range(2000)]
    inside_abs = sum(0.9 * budget <= estimate(s, 224).flops <= budget for s in absolute)
    print(f"estimator screening: {screen_rate:,.0f} proposals/s ({1e6 / screen_rate:.0f} us each); uniform proposals "
          f"in the {args.budget} band: {inside / len(samples):.1%} of the budget-centred space, "
          f"{inside_abs / len(absolute):.1%} of the absolute space")

    from metanet.search.driver import run_search
    from metanet.runs.config import SearchConfig
    root = Path(tempfile.mkdtemp())
    from metanet.data import load_digits_bundle
    # both runs start with the data loaded (validation carved) and imports done
    data = load_digits_bundle(args.proxy_resolution).with_validation()

    def toolkit(trials: int, name: str) -> float:
        cfg = SearchConfig.from_dict({"out": str(root / name), "trials": trials, "stages": ["zero-cost"],
                                      "flops": [budget], "proxy_resolution": args.proxy_resolution})
        t0 = time.perf_counter()
        run_search(cfg, progress=False, echo=lambda m: None)
        return time.perf_counter() - t0

    from metanet.quiet import quiet
    with quiet():
        import nni
        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.experiment import NasExperiment, NasExperimentConfig
        from nni.nas.strategy import Random
        from nni.nas.strategy.middleware import Chain, Deduplication, Filter
    import torch

    from metanet.plugin.manager import registry
    from metanet.search_spaces.nni_space import BudgetModelSpace
    from metanet.evaluate.candidate import StageContext, run_stage
    pm = registry()
    stage = pm.stage("zero-cost")

    def bare(model):
        # the same zero-cost work, called directly: no store, no records, no trial hooks
        torch.manual_seed(0)
        ctx = StageContext(model, model.spec, data, stage.config(), {}, torch.device("cpu"))
        nni.report_final_result(run_stage(pm, stage, ctx)["score"])

    def in_band(model) -> bool:
        return space.distance(space.flops(space.decode(model.sample))) == 0

    def plain(trials: int) -> float:
        config = NasExperimentConfig("sequential", "simplified")
        config.max_trial_number = trials
        strategy = Chain(Random(seed=0 + budget % 9973), Deduplication("replay"),  # the seed metanet's run uses
                         Filter(in_band, metric_for_invalid=-1.0, patience=100000, retain_history=False))
        t0 = time.perf_counter()
        with quiet():
            NasExperiment(BudgetModelSpace(space, num_classes=0, img_size=args.proxy_resolution, seed=0),
                          FunctionalEvaluator(bare), strategy, config=config).run()
        return time.perf_counter() - t0

    toolkit(2, "warm-up")  # first calls of torch kernels, NNI and the store: paid by neither measurement
    plain(2)
    ours, bare_s = min(toolkit(args.trials, "a"), toolkit(args.trials, "b")), min(plain(args.trials), plain(args.trials))
    print(f"metanet search (zero-cost, sequential): {args.trials / ours:.2f} trials/s "
          f"({ours / args.trials * 1e3:.0f} ms/trial)")
    print(f"bare NNI sequential (same proposals, same zero-cost work): {args.trials / bare_s:.2f} trials/s "
          f"({bare_s / args.trials * 1e3:.0f} ms/trial)")
    print(f"toolkit overhead per trial: {(ours - bare_s) / args.trials * 1e3:+.0f} ms "
          f"({(ours / bare_s - 1):+.1%} of the bare run's time; each best of two runs)")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
