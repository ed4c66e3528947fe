"""Wall time of INTERN's five stages on one candidate on the digits default (tiny CPU scale).

    python benchmarks/stages.py [--budget 200M] [--proxy-resolution 24]

Prints the time of each stage and the total for a candidate sampled in the budget band, with the
tiny settings the tests use; the target is under a minute on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import random
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="200M")
    ap.add_argument("--proxy-resolution", type=int, default=24)
    ap.add_argument("--seed", type=int, default=3)
    args = ap.parse_args()
    import torch

    from metanet.budget import parse_flops
    from metanet.data import load_digits_bundle
    from metanet.plugin.manager import registry
    from metanet.search_spaces.metanet import MetaNet
    from metanet.search_spaces.unified import DEFAULT_SPACE, sample_within_budget
    from metanet.evaluate.candidate import StageContext, run_stage

    tiny = {"amateur": {"max_steps": 12, "batch_size": 32}, "expert": {"max_steps": 6, "batch_size": 32},
            "generalist": {"max_steps": 8, "batch_size": 32}, "downstream": {"epochs": 40}}
    pm = registry()
    data = load_digits_bundle(args.proxy_resolution).with_validation()
    spec = sample_within_budget(DEFAULT_SPACE, parse_flops(args.budget), random.Random(args.seed))
    torch.manual_seed(0)
    model = MetaNet(spec, num_classes=0, img_size=args.proxy_resolution)
    state: dict = {}
    total = 0.0
    print(f"candidate: {spec.describe()}")
    for stage in ("zero-cost", "amateur", "expert", "generalist", "downstream"):
        ctx = StageContext(model, spec, data, pm.stage(stage).config(tiny.get(stage)), state, torch.device("cpu"))
        t0 = time.perf_counter()
        metrics = run_stage(pm, pm.stage(stage), ctx)
        dt = time.perf_counter() - t0
        total += dt
        state.setdefault(stage, {})["metrics"] = metrics
        shown = {k: round(v, 3) for k, v in metrics.items() if k in ("score", "acc", "train_loss_first", "train_loss_last")}
        print(f"{stage:<11} {dt:6.2f} s  {shown}")
    print(f"total       {total:6.2f} s (target: under 60 s on 2 CPU cores)")


if __name__ == "__main__":
    main()
