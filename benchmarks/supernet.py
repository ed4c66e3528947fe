"""One-shot search on digits: supernet training, scoring speed against the amateur stage, rank fidelity.

    python benchmarks/supernet.py [--flops 600M] [--steps 400] [--reuse DIR] [--archs 12]
                                  [--standalone-steps N] [--search-trials 200] [--json]

1. Trains a supernet with ``metanet supernet train``'s defaults (or reuses ``--reuse DIR``): wall time,
   steps/s and images/s (every image of a step is seen by 2 + random_subnets sub-networks).
2. Draws ``--archs`` distinct in-band architectures of the budget and scores each (a) with the
   ``supernet`` stage and (b) with the ``amateur`` stage at its search defaults, at the same proxy
   resolution: seconds per candidate and their ratio.
3. Kendall's tau and Spearman's rho between the supernet's validation accuracies and stand-alone
   training's (the ``amateur`` stage from scratch on the supernet's label source: its search defaults, or
   ``--standalone-steps`` steps); with ``--noise-ceiling`` also stand-alone against itself with another seed.
4. Runs a ``--search-trials`` regularized-evolution search scored by the supernet: wall time.

``--json`` prints one JSON object on the last line.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _score(spec, stage, data, config, pm, metric, seed=0):
    from metanet.evaluate.candidate import evaluate_candidate
    start = time.perf_counter()
    result = evaluate_candidate(spec, [stage], data, config={stage: config}, pm=pm, seed=seed, accelerator="cpu")
    if result.error:
        raise SystemExit(f"{stage} failed on {spec.describe()}: {result.error['message']}")
    return result.metrics[f"{stage}.{metric}"], time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flops", default="600M")
    ap.add_argument("--steps", type=int, default=None, help="supernet training steps (default: the CLI's)")
    ap.add_argument("--reuse", default=None, help="a trained supernet directory: skip training")
    ap.add_argument("--archs", type=int, default=12)
    ap.add_argument("--standalone-steps", type=int, default=0,
                    help="stand-alone training steps (default 0: the amateur stage's search defaults, 40 steps)")
    ap.add_argument("--search-trials", type=int, default=200)
    ap.add_argument("--noise-ceiling", action="store_true",
                    help="also train each stand-alone with seed 1: Kendall's tau of stand-alone against itself")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from metanet import supernet as sn
    from metanet.budget import parse_flops
    from metanet.plugin.manager import registry
    from metanet.search.proxy_check import rank_correlations
    from metanet.search.driver import run_search
    from metanet.runs.config import SearchConfig
    from metanet.search_spaces.supernet_model import sample_specs
    from metanet.data.load import load_cached

    report: dict = {}
    budget = parse_flops(args.flops)
    work = Path(tempfile.mkdtemp(prefix="metanet-supernet-bench-"))
    if args.reuse:
        path = Path(args.reuse)
        report["training"] = {"reused": str(path), "step": sn.SupernetDir(path).info()["step"]}
    else:
        path = work / "supernet"
        settings = sn.SupernetSettings(flops=[budget], accelerator="cpu")
        if args.steps:
            settings.steps = args.steps
        t0 = time.perf_counter()
        summary = sn.train(settings, path, echo=lambda m: print(m, file=sys.stderr))
        report["training"] = {"wall_s": round(time.perf_counter() - t0, 1), "steps": summary["step"],
                              "steps_per_s": summary["steps_per_second"],
                              "images_per_s": summary["images_per_second"],
                              "shared_parameters": summary["shared_parameters"]}
    print(f"training: {report['training']}", file=sys.stderr)

    net = sn.load(path)
    settings = net.settings
    budget = settings.flops[0]
    pm = registry()
    data = load_cached(pm, settings.data, settings.proxy_resolution, 0, settings.val_fraction)
    rng = random.Random(args.seed)
    specs, seen = [], set()
    while len(specs) < args.archs:
        spec = sample_specs(net.spaces[0], rng)
        if spec.to_json() not in seen:
            seen.add(spec.to_json())
            specs.append(spec)

    supernet_cfg = {"path": str(path)}
    source = net.info["source"]
    # stand-alone: the amateur stage (its search defaults) trains the candidate from scratch; its accuracy on
    # the supernet's label source is compared
    amateur_default = {}
    standalone = {"sources": source, "max_steps": args.standalone_steps, "epochs": 1000}
    rows = []
    for i, spec in enumerate(specs):
        sn_acc, sn_s = _score(spec, "supernet", data, supernet_cfg, pm, "acc")
        am_acc, am_s = _score(spec, "amateur", data, amateur_default, pm, f"{source}.acc")
        if args.standalone_steps:
            sa_acc, sa_s = _score(spec, "amateur", data, standalone, pm, f"{source}.acc")
        else:
            sa_acc, sa_s = am_acc, am_s
        again = _score(spec, "amateur", data, standalone if args.standalone_steps else amateur_default, pm,
                       f"{source}.acc", seed=1)[0] if args.noise_ceiling else None
        rows.append({"standalone_seed1_acc": again, "spec": spec.describe(), "flops": net.spaces[0].flops(spec), "supernet_acc": sn_acc,
                     "supernet_s": round(sn_s, 3), "amateur_default_s": round(am_s, 2),
                     "standalone_acc": sa_acc, "standalone_s": round(sa_s, 1)})
        print(f"[{i + 1}/{len(specs)}] supernet {sn_acc:.3f} in {sn_s:.2f}s | amateur (search default) {am_acc:.3f} "
              f"in {am_s:.1f}s | stand-alone ({args.standalone_steps or 'default'} steps) {sa_acc:.3f}", file=sys.stderr)
    # the first scoring loads the supernet; the median is what each further candidate costs
    sn_med = statistics.median(r["supernet_s"] for r in rows)
    am_med = statistics.median(r["amateur_default_s"] for r in rows)
    tau, rho = rank_correlations([r["supernet_acc"] for r in rows], [r["standalone_acc"] for r in rows])
    report["scoring"] = {"supernet_median_s": round(sn_med, 3), "amateur_median_s": round(am_med, 2),
                         "speedup": round(am_med / sn_med, 1)}
    report["fidelity"] = {"archs": len(rows), "standalone_steps": args.standalone_steps,
                          "kendall_tau": None if tau is None else round(tau, 3),
                          "spearman_rho": None if rho is None else round(rho, 3),
                          "standalone_range": [min(r["standalone_acc"] for r in rows),
                                               max(r["standalone_acc"] for r in rows)], "rows": rows}
    if args.noise_ceiling:
        # stand-alone training against itself with another seed: the most any proxy can agree with it here
        ceiling, _ = rank_correlations([r["standalone_acc"] for r in rows], [r["standalone_seed1_acc"] for r in rows])
        report["fidelity"]["noise_ceiling_tau"] = None if ceiling is None else round(ceiling, 3)
    print(f"scoring: {report['scoring']}", file=sys.stderr)
    print(f"fidelity: tau {report['fidelity']['kendall_tau']}, rho {report['fidelity']['spearman_rho']}",
          file=sys.stderr)

    if args.search_trials:
        cfg = SearchConfig.from_dict({
            "flops": [budget], "band": list(settings.band), "strategy": "evolution", "trials": args.search_trials,
            "stages": ["supernet"], "settings": {"supernet": supernet_cfg}, "proxy_resolution": settings.proxy_resolution,
            "out": str(work / "search"), "accelerator": "cpu"})
        t0 = time.perf_counter()
        summary = run_search(cfg, progress=False, echo=lambda m: None)
        wall = time.perf_counter() - t0
        report["search"] = {"strategy": "evolution", "trials": summary.trials, "failed": summary.failed,
                            "wall_s": round(wall, 1), "best_score": summary.best[budget]["score"]}
        print(f"search: {report['search']}", file=sys.stderr)

    print(f"{'':<34}{'value':>12}")
    t = report["training"]
    if "wall_s" in t:
        print(f"{'supernet training wall time':<34}{t['wall_s']:>10.0f} s  ({t['steps']} steps, target < 600 s)")
        print(f"{'training throughput':<34}{t['images_per_s']:>10.1f} images/s ({t['steps_per_s']:.2f} steps/s)")
    s = report["scoring"]
    print(f"{'score a candidate: supernet':<34}{s['supernet_median_s']:>10.2f} s  (target < 1 s)")
    print(f"{'score a candidate: amateur':<34}{s['amateur_median_s']:>10.2f} s")
    print(f"{'speed-up':<34}{s['speedup']:>10.1f} x  (target >= 20x)")
    f = report["fidelity"]
    print(f"{'Kendall tau vs stand-alone':<34}{f['kendall_tau'] if f['kendall_tau'] is not None else 'n/a':>10}"
          f"    ({f['archs']} archs, target >= 0.4)")
    if "noise_ceiling_tau" in f:
        print(f"{'tau stand-alone vs another seed':<34}{f['noise_ceiling_tau'] if f['noise_ceiling_tau'] is not None else 'n/a':>10}"
              "    (the noise ceiling)")
    if "search" in report:
        print(f"{'evolution search':<34}{report['search']['wall_s']:>10.0f} s  ({report['search']['trials']} trials, "
              "target < 300 s)")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
