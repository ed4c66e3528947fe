"""Data seconds per trial and training images/s on real images, decoded per step (before) or once per search.

    python benchmarks/data_loading.py [--data ../shared/data/cifar10-subset.tar.gz] [--resolution 64]
                                      [--steps 40] [--batch-size 32] [--budget 300M]

On the shared CIFAR-10 subset (plain ImageFolder, 10,000 train + 3,000 test JPEGs at 32x32, unpacked to a
temporary folder) with the search's defaults (64 px; 40 amateur steps of 32 images, as the demo trains them; validation
carved as 20% of train). Two pipelines: "per step" is what every trial did before the cache (and what
``--no-cache`` does): each image decoded from its JPEG and transformed by timm's PIL transforms whenever it
is used; "decoded once" resizes and centre-crops every image once per search and augments the cached
tensors. For each: the data work of one trial without a model (loading the bundle in a trial, drawing the
amateur stage's batches, one pass over the validation and test sets, as the score and test score take),
and the amateur stage on one candidate of the budget, images/s with its data. The one-off decode a search
pays is printed too.
"""
import argparse
import random
import tarfile
import tempfile
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset.tar.gz"


def unpack(tarball: Path, dest: Path) -> Path:
    with tarfile.open(tarball) as tf:
        tf.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if p.is_dir()]
    return roots[0] if len(roots) == 1 else dest


def candidate(budget: str, seed: int):
    from metanet.budget import parse_flops
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    bspace = budget_space(DEFAULT_SPACE, parse_flops(budget), (0.9, 1.0), 224)
    rng = random.Random(seed)
    while True:  # the first in-band proposal of the budget-centred space
        spec = bspace.decode(bspace.random_sample(rng))
        if bspace.lo <= bspace.flops(spec) <= bspace.hi:
            return spec


def data_seconds(pm, folder: str, resolution: int, steps: int, batch: int, cache: bool) -> dict:
    """The data work of one trial, after the search's own load: (load, stream, eval) seconds."""
    import torch

    from metanet.data import load_data
    from metanet.train.loop import batches, loader_options
    t0 = time.perf_counter()
    data = load_data(pm, folder, resolution, seed=0, cache=cache)  # the trial's load (the search's is warm)
    load = time.perf_counter() - t0
    split = next(iter(data.sources.values()))
    t0 = time.perf_counter()
    stream = batches(split.train, batch, 0, "cpu")
    for _ in range(steps):
        next(stream)
    drawn = time.perf_counter() - t0
    t0 = time.perf_counter()
    seen = 0
    for part in (split.val, split.test):
        for x, _ in torch.utils.data.DataLoader(part, batch_size=256, **loader_options(part)):
            seen += len(x)
    measured = time.perf_counter() - t0
    return {"load": load, "stream": drawn, "eval": measured, "eval_images": seen}


def amateur_rate(spec, pm, folder: str, resolution: int, steps: int, batch: int, cache: bool) -> float:
    from metanet.data import load_data
    from metanet.evaluate.candidate import evaluate_candidate
    data = load_data(pm, folder, resolution, seed=0, cache=cache)
    t0 = time.perf_counter()
    result = evaluate_candidate(spec, ["amateur"], data, config={"amateur": {"max_steps": steps, "batch_size": batch}},
                                accelerator="cpu")
    seconds = time.perf_counter() - t0
    assert result.status == "ok", result.error
    return steps * batch / seconds, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", default="300M")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    from metanet.data import decoded, load_data
    from metanet.plugin.manager import registry

    if not args.data.is_file():
        raise SystemExit(f"{args.data}: not found (the shared CIFAR-10 subset; give --data)")
    pm = registry()
    spec = candidate(args.budget, args.seed)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.data.name} at {args.resolution} px, "
          f"amateur {args.steps} steps x {args.batch_size} images; candidate {spec.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = str(unpack(args.data, Path(tmp)))
        t0 = time.perf_counter()
        data = load_data(pm, folder, args.resolution, seed=0, cache=True)  # what the search process pays, once
        once = time.perf_counter() - t0
        images = decoded.describe(data)["images"]
        print(f"decoded once per search: {images:,} images in {once:.1f} s "
              f"({images * 3 * args.resolution ** 2 / 1e6:.0f} MB)")
        load_data(pm, folder, args.resolution, seed=0, cache=False)  # warm the listing for the per-step row
        rows = {}
        for name, cache in (("per step (before)", False), ("decoded once (after)", True)):
            d = data_seconds(pm, folder, args.resolution, args.steps, args.batch_size, cache)
            rate, seconds = amateur_rate(spec, pm, folder, args.resolution, args.steps, args.batch_size, cache)
            rows[name] = (d, rate, seconds)
        print(f"{'pipeline':<22} {'load s':>7} {'batches s':>10} {'val+test s':>11} {'data s/trial':>13} "
              f"{'amateur s':>10} {'train img/s':>12}")
        for name, (d, rate, seconds) in rows.items():
            total = d["load"] + d["stream"] + d["eval"]
            print(f"{name:<22} {d['load']:>7.2f} {d['stream']:>10.2f} {d['eval']:>11.2f} {total:>13.2f} "
                  f"{seconds:>10.1f} {rate:>12.1f}")
        (b, rb, _), (a, ra, _) = rows.values()
        before, after = (sum(x[k] for k in ("load", "stream", "eval")) for x in (b, a))
        print(f"data seconds per trial: {before:.2f} -> {after:.2f} ({before / max(after, 1e-9):.0f}x less); "
              f"training images/s: {rb:.1f} -> {ra:.1f} ({ra / rb:.2f}x); "
              f"val+test pass over {b['eval_images']:,} images: {b['eval']:.2f} s -> {a['eval']:.2f} s")


if __name__ == "__main__":
    main()
