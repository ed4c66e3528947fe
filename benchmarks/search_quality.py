"""Does the score a search maximises rank architectures as longer training does, on real images?

    python benchmarks/search_quality.py [--data ../shared/data/cifar10-subset.tar.gz] [--budget 100M]
        [--resolution 32] [--archs 16] [--ref-steps 400] [--ladder 12:108] [--selection-draws 200]
        [--out benchmarks/results/search_quality] [--only evaluate|report]

On the shared CIFAR-10 subset (plain ImageFolder: 10 classes, 10,000 training images of which 2,000 are carved
out for validation, 3,000 test images), read through metanet's own loader, on one budget-centred space:
``--archs`` in-band architectures of the space drawn uniformly, plus the space's base (UniNet-B1's layout
scaled to the budget, the hand-designed network a search has to beat). 100M at 32 px is the largest budget
whose reference fits the 2-hour, 2-core envelope (about 4 amateur steps/s); at 32 px stages 3-5 see 2x2
tokens or fewer, so the space's attention choices are ranked at a resolution where they can degenerate
(the same limit every proxy here shares).

What is evaluated (each result a small JSON file under ``--out``, written when it ends, so a killed run
resumes where it stopped):

* the **reference**: the amateur stage trained ``--ref-steps`` steps (its own cosine schedule), 2 seeds
  (10, 11: neither the proxies' initialisations nor their validation splits); the reference accuracy of an
  architecture is its *test* accuracy, averaged over the seeds;
* **proxies**, 2 seeds each (0, 1): amateur at 1%, 3% and 10% of the reference's steps (each with its own
  schedule); the rungs of a successive-halving ladder (``--ladder``, eta 3, one run continued rung to rung,
  the schedule over the ladder's top); zero-cost naswot and grad_norm; the number of parameters (the
  baseline zero-cost proxies often fail to beat); a weight-sharing supernet trained on this data and
  scoring each architecture with inherited weights;
* for each: Kendall's tau against the reference with a 95% bootstrap interval over architectures, and its
  noise ceiling (seed 0 against seed 1), the reference's own included;
* **successive halving against random search at equal training steps**: over ``--selection-draws`` draws,
  each picks 9 of the architectures and a proxy seed; SH climbs the ladder (9 at the first rung, 3 continued,
  1 to the top); random search spends the same steps on 2 architectures trained to the ladder's top, or on
  6 at 10% of the reference's steps; each pick is scored by its reference accuracy, beside the scaled base,
  the pool's best and its mean.

Prints the tables, and writes ``summary.json`` and ``fidelity.png`` (tau against proxy steps) under ``--out``.
"""
import argparse
import json
import math
import random
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-subset.tar.gz"
REF_SEEDS, PROXY_SEEDS = (10, 11), (0, 1)
ZERO_COST = ("naswot", "grad_norm")


def unpack(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    return roots[0] if len(roots) == 1 else dest


def architectures(budget: int, n: int, resolution: int) -> tuple[list, object]:
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    space = budget_space(DEFAULT_SPACE, budget, (0.9, 1.0), 224)
    rng, specs, seen = random.Random(0), [], set()
    while len(specs) < n:
        spec = space.decode(space.random_sample(rng))
        key = spec.to_json(indent=None)
        if space.lo <= space.flops(spec) <= space.hi and key not in seen:
            seen.add(key)
            specs.append(spec)
    return specs + [space.decode(space.base_sample())], space


class Cache:
    """One JSON file per evaluation: what a resumed run does not compute again."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str):
        p = self.path(key)
        return json.loads(p.read_text()) if p.is_file() else None

    def put(self, key: str, value) -> None:
        tmp = self.path(key).with_suffix(".tmp")
        tmp.write_text(json.dumps(value, indent=1))
        tmp.replace(self.path(key))


def amateur(spec, data, steps: int, seed: int, fidelity=None, resume=None):
    from metanet.evaluate.candidate import evaluate_candidate
    result = evaluate_candidate(spec, ["amateur"], data, seed=seed, accelerator="cpu",
                                config={"amateur": {"max_steps": steps, "epochs": float("inf")}},
                                fidelity=fidelity, resume=resume)
    assert result.status == "ok", result.error
    m = result.metrics
    return {"acc": m["amateur.acc"], "test_acc": m["amateur.test_acc"], "acc_se": m.get("amateur.acc_se"),
            "steps": m["amateur.train_steps"], "seconds": round(result.seconds, 1)}, result


def evaluate_all(args, specs, cache: Cache, pm, folder: str, echo) -> None:
    from metanet.data import load_data
    from metanet.search.fidelity import Ladder
    from metanet.evaluate.candidate import evaluate_candidate
    data = {s: load_data(pm, folder, args.resolution, seed=s) for s in (*PROXY_SEEDS, *REF_SEEDS)}
    ladder = Ladder(*args.ladder, 3)
    proxies = sorted({max(1, round(args.ref_steps * f)) for f in (0.01, 0.03, 0.10)})
    t0 = time.time()
    for i, spec in enumerate(specs):
        for seed in PROXY_SEEDS:
            for steps in proxies:
                key = f"amateur-{steps}-a{i}-s{seed}"
                if cache.get(key) is None:
                    cache.put(key, amateur(spec, data[seed], steps, seed)[0])
            key = f"ladder-{ladder.max_steps}-a{i}-s{seed}"
            if cache.get(key) is None:
                rungs, resume = [], None
                for r in ladder.rungs:
                    out, result = amateur(spec, data[seed], r, seed, fidelity=(r, ladder.max_steps), resume=resume)
                    rungs.append({**out, "rung_steps": r})
                    resume = result.resume
                cache.put(key, rungs)
            for proxy in ZERO_COST:
                key = f"{proxy}-a{i}-s{seed}"
                if cache.get(key) is None:
                    r = evaluate_candidate(spec, ["zero-cost"], data[seed], seed=seed, accelerator="cpu",
                                           config={"zero-cost": {"proxy": proxy}})
                    cache.put(key, {"score": r.metrics["zero-cost.score"], "seconds": round(r.seconds, 2)})
        for seed in REF_SEEDS:
            key = f"reference-{args.ref_steps}-a{i}-s{seed}"
            if cache.get(key) is None:
                cache.put(key, amateur(spec, data[seed], args.ref_steps, seed)[0])
        echo(f"architecture {i + 1}/{len(specs)} done ({time.time() - t0:.0f} s this run)")


def supernet_scores(args, specs, cache: Cache, folder: str, echo) -> None:
    """A supernet over the budget's space trained on this data, then every architecture scored with it."""
    import metanet.train.supernet_training as sn
    from metanet.plugin.manager import registry
    key = f"supernet-{args.supernet_steps}"
    out = cache.root / key
    if not (out / sn.WEIGHTS).is_file() or json.loads((out / sn.INFO).read_text())["step"] < args.supernet_steps:
        settings = sn.SupernetSettings(flops=[args.budget], proxy_resolution=args.resolution, data=folder,
                                       steps=args.supernet_steps, accelerator="cpu", seed=0)
        t0 = time.time()
        sn.train(settings, out, resume=(out / sn.INFO).is_file(), echo=lambda m: None)
        cache.put(f"{key}-training", {"seconds": round(time.time() - t0, 1)})
        echo(f"supernet trained ({args.supernet_steps} steps)")
    from metanet.data import load_data
    from metanet.evaluate.candidate import evaluate_candidate
    pm = registry()
    for seed in PROXY_SEEDS:
        data = load_data(pm, folder, args.resolution, seed=seed)
        for i, spec in enumerate(specs):
            k = f"{key}-a{i}-s{seed}"
            if cache.get(k) is None:
                r = evaluate_candidate(spec, ["supernet"], data, seed=seed, accelerator="cpu",
                                       config={"supernet": {"path": str(out)}})
                assert r.status == "ok", r.error
                cache.put(k, {"acc": r.metrics["supernet.acc"], "seconds": round(r.seconds, 2)})


def correlations(proxy: list[float], reference: list[float]) -> dict:
    from metanet.search.proxy_check import bootstrap_tau, rank_correlations
    tau, rho = rank_correlations(proxy, reference)
    ci = bootstrap_tau(proxy, reference)
    return {"tau": tau, "rho": rho, "ci": list(ci) if ci else None}


def mean_tau_interval(proxies: list[list[float]], reference: list[float], draws: int = 1000) -> list[float] | None:
    """95% bootstrap interval, over the architectures, of the mean over seeds of each seed's tau."""
    from scipy.stats import kendalltau
    rng, out = random.Random(0), []
    n = len(reference)
    for _ in range(draws):
        idx = [rng.randrange(n) for _ in range(n)]
        ref = [reference[i] for i in idx]
        taus = []
        for p in proxies:
            x = [p[i] for i in idx]
            if len(set(x)) > 1 and len(set(ref)) > 1:
                t = kendalltau(x, ref).statistic
                if math.isfinite(t):
                    taus.append(t)
        if taus:
            out.append(sum(taus) / len(taus))
    if len(out) < draws // 10:
        return None
    out.sort()
    return [out[int(0.025 * (len(out) - 1))], out[int(0.975 * (len(out) - 1))]]


def report(args, specs, space, cache: Cache) -> dict:
    from metanet.search_spaces.counter import count_params
    from metanet.search.fidelity import Ladder
    from metanet.search_spaces.metanet import MetaNet
    n = len(specs)
    ladder = Ladder(*args.ladder, 3)
    proxies = sorted({max(1, round(args.ref_steps * f)) for f in (0.01, 0.03, 0.10)})
    ref = {s: [cache.get(f"reference-{args.ref_steps}-a{i}-s{s}") for i in range(n)] for s in REF_SEEDS}
    reference = [sum(ref[s][i]["test_acc"] for s in REF_SEEDS) / len(REF_SEEDS) for i in range(n)]
    rows = {}

    def add(name: str, steps, per_seed: dict[int, list[float]], cost: float | None = None):
        seeds = list(per_seed)
        vs_ref = [correlations(per_seed[s], reference) for s in seeds]
        ceiling = correlations(per_seed[seeds[0]], per_seed[seeds[1]]) if len(seeds) > 1 else None
        taus = [c["tau"] for c in vs_ref if c["tau"] is not None]
        ci = mean_tau_interval([per_seed[s] for s in seeds], reference)
        rows[name] = {"steps": steps, "tau": sum(taus) / len(taus) if taus else None, "ci": ci, "per_seed": vs_ref,
                      "ceiling": ceiling, "seconds_per_arch": cost}

    add("reference (itself, seed 10 vs 11)", args.ref_steps,
        {s: [r["test_acc"] for r in ref[s]] for s in REF_SEEDS},
        sum(r["seconds"] for s in REF_SEEDS for r in ref[s]) / (n * len(REF_SEEDS)))
    itself = rows["reference (itself, seed 10 vs 11)"]
    seed_a, seed_b = ([r["test_acc"] for r in ref[s]] for s in REF_SEEDS)
    itself.update(tau=itself["ceiling"]["tau"], ci=mean_tau_interval([seed_a], seed_b))
    for steps in proxies:
        got = {s: [cache.get(f"amateur-{steps}-a{i}-s{s}") for i in range(n)] for s in PROXY_SEEDS}
        add(f"amateur {steps} steps ({steps / args.ref_steps:.0%})", steps, {s: [g["acc"] for g in v] for s, v in got.items()},
            sum(g["seconds"] for v in got.values() for g in v) / (n * 2))
    lad = {s: [cache.get(f"ladder-{ladder.max_steps}-a{i}-s{s}") for i in range(n)] for s in PROXY_SEEDS}
    for k, r in enumerate(ladder.rungs):
        add(f"ladder rung {k}: {r} of {ladder.max_steps} steps", r, {s: [g[k]["acc"] for g in v] for s, v in lad.items()})
    for proxy in ZERO_COST:
        got = {s: [cache.get(f"{proxy}-a{i}-s{s}")["score"] for i in range(n)] for s in PROXY_SEEDS}
        add(f"zero-cost {proxy}", 0, got)
    params = [count_params(MetaNet(spec, num_classes=0, img_size=args.resolution)) for spec in specs]
    rows["#params"] = {"steps": 0, "tau": correlations(params, reference)["tau"],
                       "ci": mean_tau_interval([params], reference), "per_seed": [correlations(params, reference)],
                       "ceiling": None, "seconds_per_arch": 0}
    sup = {s: [cache.get(f"supernet-{args.supernet_steps}-a{i}-s{s}") for i in range(n)] for s in PROXY_SEEDS}
    if all(v is not None for vs in sup.values() for v in vs):
        add(f"supernet ({args.supernet_steps} steps, shared)", 0, {s: [g["acc"] for g in v] for s, v in sup.items()},
            sum(g["seconds"] for v in sup.values() for g in v) / (n * 2))

    # successive halving against random search at equal training steps, picks scored by the reference
    pool = list(range(n - 1))  # the sampled architectures; the base is the yardstick
    base = n - 1
    r0, r1, top = ladder.rungs
    sh_cost = 9 * r0 + 3 * (r1 - r0) + 1 * (top - r1)
    ten = max(1, round(args.ref_steps * 0.10))
    k_top, k_ten = min(len(pool), max(1, sh_cost // top)), min(len(pool), max(1, sh_cost // ten))
    picks = {"successive halving (9 -> 3 -> 1)": [], f"random, {k_top} at {top} steps": [],
             f"random, {k_ten} at {ten} steps": []}
    rng = random.Random(1)
    for _ in range(args.selection_draws):
        seed = rng.choice(PROXY_SEEDS)
        nine = rng.sample(pool, 9)
        first = sorted(nine, key=lambda a: -lad[seed][a][0]["acc"])[:3]
        best = max(first, key=lambda a: lad[seed][a][1]["acc"])
        picks["successive halving (9 -> 3 -> 1)"].append(reference[best])
        two = rng.sample(pool, k_top)
        picks[f"random, {k_top} at {top} steps"].append(reference[max(two, key=lambda a: lad[seed][a][2]["acc"])])
        six = rng.sample(pool, k_ten)
        picks[f"random, {k_ten} at {ten} steps"].append(
            reference[max(six, key=lambda a: cache.get(f"amateur-{ten}-a{a}-s{seed}")["acc"])])
    selection = {name: {"mean": sum(v) / len(v), "se": _sd(v) / math.sqrt(len(v)), "draws": len(v)}
                 for name, v in picks.items()}
    selection["scaled base (UniNet-B1 layout)"] = {"mean": reference[base], "se": None, "draws": 0}
    selection["pool best"] = {"mean": max(reference[a] for a in pool), "se": None, "draws": 0}
    selection["pool mean"] = {"mean": sum(reference[a] for a in pool) / len(pool), "se": None, "draws": 0}
    return {"budget": args.budget, "resolution": args.resolution, "architectures": n, "ref_steps": args.ref_steps,
            "ladder": ladder.rungs, "sh_steps": sh_cost, "reference_test_acc": reference, "params": params,
            "specs": [s.to_dict() for s in specs], "proxies": rows, "selection": selection,
            "base_flops": space.flops(specs[-1])}


def _seconds(record) -> float:
    """The wall time an evaluation file records (a ladder: the sum of its rungs)."""
    if isinstance(record, list):
        return sum(r.get("seconds", 0) for r in record)
    return record.get("seconds", 0) if isinstance(record, dict) else 0


def _sd(values):
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / max(1, len(values) - 1))


def print_tables(summary: dict) -> None:
    fmt = (lambda v: "   -  " if v is None else f"{v:+.2f}")
    print(f"\nKendall's tau against the reference ({summary['ref_steps']} steps, test accuracy, mean of seeds "
          f"{REF_SEEDS}), {summary['architectures']} architectures of the {summary['budget'] / 1e6:.0f}M space at "
          f"{summary['resolution']} px; tau is the mean over the proxy's 2 seeds, with a 95% bootstrap interval over "
          "the architectures; noise ceiling = the proxy against "
          "itself (seed 0 vs 1)")
    print(f"{'proxy':<40} {'steps':>6} {'tau':>6} {'95% CI':>15} {'ceiling':>8} {'s/arch':>7}")
    for name, r in summary["proxies"].items():
        ci = r.get("ci")
        ci_s = f"[{ci[0]:+.2f},{ci[1]:+.2f}]" if ci else "-"
        ceiling = r["ceiling"]["tau"] if r["ceiling"] else None
        cost = f"{r['seconds_per_arch']:.1f}" if r.get("seconds_per_arch") is not None else "-"
        print(f"{name:<40} {r['steps']:>6} {fmt(r['tau']):>6} {ci_s:>15} {fmt(ceiling):>8} {cost:>7}")
    print(f"\nsuccessive halving against random search at equal training steps ({summary['sh_steps']} per search), "
          "reference test accuracy of the pick (mean over draws +- standard error)")
    for name, r in summary["selection"].items():
        se = f" +- {r['se']:.4f}" if r["se"] is not None else ""
        print(f"  {name:<40} {r['mean']:.4f}{se}")


def plot(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for prefix, marker, label in (("amateur", "o", "amateur, own schedule"), ("ladder", "s", "ladder rung")):
        pts = [(r["steps"], r["tau"], r.get("ci")) for n, r in summary["proxies"].items()
               if n.startswith(prefix) and r["tau"] is not None]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            err = [[max(0.0, y - (p[2][0] if p[2] else y)) for p, y in zip(pts, ys)],
                   [max(0.0, (p[2][1] if p[2] else y) - y) for p, y in zip(pts, ys)]]
            ax.errorbar(xs, ys, yerr=err, marker=marker, capsize=3, label=label)
    ref = summary["proxies"].get("reference (itself, seed 10 vs 11)")
    if ref and ref["tau"] is not None:
        ax.scatter([ref["steps"]], [ref["tau"]], marker="*", s=120, color="black", label="reference vs itself")
    for name, style in (("zero-cost naswot", ":"), ("zero-cost grad_norm", "-."), ("#params", "--")):
        r = summary["proxies"].get(name)
        if r and r["tau"] is not None:
            ax.axhline(r["tau"], ls=style, color="grey", lw=1, label=name)
    sup = next((r for n, r in summary["proxies"].items() if n.startswith("supernet")), None)
    if sup and sup["tau"] is not None:
        ax.axhline(sup["tau"], ls="-", color="tab:red", lw=1, label="supernet")
    ax.axhline(0.6, color="green", lw=0.8, alpha=0.5)
    ax.set_xscale("log")
    ax.set_xlabel("training steps of the proxy (log)")
    ax.set_ylabel("Kendall's tau vs the reference")
    ax.set_title(f"CIFAR-10 subset, {summary['budget'] / 1e6:.0f}M space at {summary['resolution']} px, "
                 f"{summary['architectures']} architectures")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--budget", default="100M")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--archs", type=int, default=16)
    ap.add_argument("--ref-steps", type=int, default=400)
    ap.add_argument("--ladder", default="12:108")
    ap.add_argument("--supernet-steps", type=int, default=400)
    ap.add_argument("--selection-draws", type=int, default=200)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "search_quality")
    ap.add_argument("--only", choices=("evaluate", "report"), default=None)
    args = ap.parse_args()
    from metanet.budget import parse_flops
    from metanet.runs.config import parse_fidelity
    from metanet.plugin.manager import registry
    args.budget = parse_flops(args.budget)
    args.ladder = parse_fidelity(args.ladder)
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    specs, space = architectures(args.budget, args.archs, args.resolution)
    cache = Cache(args.out / "evaluations")
    t0 = time.time()
    if args.only != "report":
        if not args.data.is_file():
            raise SystemExit(f"{args.data}: not found (the shared CIFAR-10 subset; give --data)")
        with tempfile.TemporaryDirectory() as tmp:
            folder = str(unpack(args.data, Path(tmp)))
            evaluate_all(args, specs, cache, registry(), folder, print)
            supernet_scores(args, specs, cache, folder, print)
        print(f"evaluations: {time.time() - t0:.0f} s this run")
    if args.only == "evaluate":
        return
    summary = report(args, specs, space, cache)
    seconds = sum(_seconds(json.loads(p.read_text())) for p in cache.root.glob("*.json"))
    summary["compute_seconds"] = round(seconds)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(summary, args.out / "fidelity.png")
    print_tables(summary)
    print(f"\ncompute in all (sum of the evaluations' wall times): {seconds / 3600:.2f} h; "
          f"written: {args.out / 'summary.json'}, {args.out / 'fidelity.png'}")


if __name__ == "__main__":
    main()
