"""Search throughput: estimator screening rate, zero-cost trials per second, toolkit overhead vs bare NNI.

    python benchmarks/search.py [--trials 8] [--proxy-resolution 16]

1. candidates screened per second by the analytic estimator (random proposals, FLOPs vs a band);
2. trials per second of ``metanet search`` with the zero-cost stage on the sequential engine;
3. a bare NNI sequential experiment on the same space and the same zero-cost work per trial, and
   the toolkit's overhead per trial (store, projection into the band, plugin calls) against it.
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
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--proxy-resolution", type=int, default=16)
    ap.add_argument("--budget", default="400M")
    args = ap.parse_args()

    from metanet.budget import parse_flops
    from metanet.search_spaces.estimate import estimate
    from metanet.search_spaces.unified import DEFAULT_SPACE
    budget = parse_flops(args.budget)
    rng = random.Random(0)
    specs = [DEFAULT_SPACE.random_spec(rng) for _ in range(2000)]
    t0 = time.perf_counter()
    inside = sum(0.9 * budget <= estimate(s, 224).flops <= budget for s in specs)
    screen_rate = len(specs) / (time.perf_counter() - t0)
    print(f"estimator screening: {screen_rate:,.0f} candidates/s ({inside}/{len(specs)} random proposals "
          f"inside the {args.budget} band)")

    from metanet.search import run_search
    from metanet.search_config import SearchConfig
    out = Path(tempfile.mkdtemp()) / "run"
    cfg = SearchConfig.from_dict({"out": str(out), "trials": args.trials, "stages": ["zero-cost"],
                                  "flops": [budget], "proxy_resolution": args.proxy_resolution})
    t0 = time.perf_counter()
    run_search(cfg, progress=False, echo=lambda m: None)
    ours = time.perf_counter() - t0
    print(f"metanet search (zero-cost, sequential): {args.trials / ours:.2f} trials/s "
          f"({ours / args.trials * 1e3:.0f} ms/trial)")

    from metanet.quiet import quiet
    with quiet():
        import nni
        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.experiment import NasExperiment, NasExperimentConfig
        from nni.nas.strategy import Random
    from metanet.data import load_digits_bundle
    from metanet.plugin_manager import registry
    from metanet.search_spaces.nni_space import UnifiedSpace
    from metanet.stages import StageContext, run_stage
    import torch
    pm = registry()
    data = load_digits_bundle(args.proxy_resolution)
    stage = pm.stage("zero-cost")

    def bare(model):
        # the same zero-cost work, called directly: no store, no projection, no trial hooks
        ctx = StageContext(model, model.spec, data, stage.config(), {}, torch.device("cpu"))
        nni.report_final_result(run_stage(pm, stage, ctx)["score"])

    config = NasExperimentConfig("sequential", "simplified")
    config.max_trial_number = args.trials
    space = UnifiedSpace(num_classes=0, img_size=args.proxy_resolution)
    t0 = time.perf_counter()
    with quiet():
        NasExperiment(space, FunctionalEvaluator(bare), Random(seed=0), config=config).run()
    plain = time.perf_counter() - t0
    print(f"bare NNI sequential (same zero-cost work, unconstrained proposals): {args.trials / plain:.2f} trials/s "
          f"({plain / args.trials * 1e3:.0f} ms/trial)")
    print(f"toolkit overhead per trial: {(ours - plain) / args.trials * 1e3:+.0f} ms "
          f"(ratio {ours / plain:.2f}x); note the bare run's architectures are not held to the budget")
    shutil.rmtree(out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
