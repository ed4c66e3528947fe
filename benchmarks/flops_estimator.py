"""Analytic FLOP estimator vs the fvcore counter: agreement and speed on random architectures.

    python benchmarks/flops_estimator.py [--n 200] [--resolution 224] [--seed 0]

Prints the worst relative disagreement (FLOPs and params) over the sample, the mean time per spec
of each method and the speed ratio. The counter's time includes building the model.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
import warnings

import torch

from metanet.budget import format_flops
from metanet.search_spaces.counter import count_flops, count_params
from metanet.search_spaces.estimate import estimate
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.unified import DEFAULT_SPACE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--resolution", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_grad_enabled(False)
    rng = random.Random(args.seed)
    specs = [DEFAULT_SPACE.random_spec(rng) for _ in range(args.n)]

    est_times, cnt_times, flop_err, param_err, flops = [], [], [], [], []
    for i, spec in enumerate(specs):
        t0 = time.perf_counter()
        for _ in range(20):
            est = estimate(spec, args.resolution)
        est_times.append((time.perf_counter() - t0) / 20)
        t0 = time.perf_counter()
        model = MetaNet(spec, img_size=args.resolution)
        counted = count_flops(model, args.resolution)
        cnt_times.append(time.perf_counter() - t0)
        flop_err.append(abs(est.flops / counted.total - 1))
        param_err.append(abs(est.params / count_params(model) - 1))
        flops.append(counted.total)
        del model
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{args.n} done", flush=True)

    e, c = statistics.mean(est_times), statistics.mean(cnt_times)
    print(f"architectures: {args.n} random from space 'unified' at {args.resolution}px "
          f"({format_flops(min(flops))} to {format_flops(max(flops))} FLOPs)")
    print(f"max |estimate/count - 1|: FLOPs {max(flop_err):.2e}, params {max(param_err):.2e}")
    print(f"within 1%: {sum(x <= 0.01 for x in flop_err)}/{args.n}")
    print(f"estimator: {e * 1e6:9.1f} us/spec")
    print(f"counter:   {c * 1e6:9.1f} us/spec (build + fvcore trace)")
    print(f"speed ratio counter/estimator: {c / e:.0f}x")


if __name__ == "__main__":
    main()
