"""Proxy-training throughput: images/s of the amateur stage, and of a bare training step.

    python benchmarks/training.py [--resolution 64] [--steps 12] [--batch-size 32] [--budget 300M]

Measures the amateur stage (one 300M candidate) on the embedded digits and on a generated
ImageFolder (PNG files decoded per step by the loaders, 3 classes x 120 images; the decode-once cache is
measured by benchmarks/data_loading.py), with the candidate in
NCHW or channels-last layout and folder loaders with or without worker processes; then a bare
forward/backward step in fp32 and under CPU bf16 autocast. On a GPU (when one is present) the
bare step also runs at 224 px in bf16; otherwise the script says there is none.
"""
import argparse
import random
import tempfile
import time
from pathlib import Path


def amateur_rate(spec, data, steps: int, batch: int, channels_last: bool, devices: int = 1) -> float:
    import metanet.evaluate.candidate as stages_module
    from metanet.evaluate.candidate import evaluate_candidate
    from metanet.train.loop import place
    if not channels_last:
        stages_module.place = lambda model, device: model.to(device)
    try:
        t0 = time.perf_counter()
        result = evaluate_candidate(spec, ["amateur"], data, config={"amateur": {
            "max_steps": steps, "batch_size": batch, "contrastive_weight": 0.0}}, accelerator="cpu", devices=devices)
        seconds = time.perf_counter() - t0
    finally:
        stages_module.place = place
    assert result.status == "ok", result.error
    return steps * batch * len(data.sources) / seconds


def step_rate(spec, resolution: int, batch: int, device: str, dtype) -> float:
    import torch
    import torch.nn.functional as F

    from metanet.search_spaces.metanet import MetaNet
    from metanet.train.loop import place
    model = place(MetaNet(spec, num_classes=10, img_size=resolution), device)
    opt = torch.optim.AdamW(model.parameters())
    x = torch.randn(batch, 3, resolution, resolution, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    for i in range(8):
        if i == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        with torch.autocast(device_type=device, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return 5 * batch / (time.perf_counter() - t0)


def make_folder(root: Path, per_class: int = 120) -> None:
    import torch
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for c in ("a", "b", "c"):
        for part in ("upstream/shapes", "downstream/pets"):
            folder = root / part / c
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                Image.fromarray((torch.rand(96, 128, 3, generator=g) * 255).byte().numpy()).save(folder / f"{i}.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolution", type=int, default=64)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--budget", default="300M")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import torch

    import metanet.data.images as data_module
    from metanet.budget import parse_flops
    from metanet.data import load_data
    from metanet.plugin.manager import registry
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE

    bspace = budget_space(DEFAULT_SPACE, parse_flops(args.budget), (0.9, 1.0), 224)
    rng = random.Random(args.seed)
    while True:  # the first in-band proposal of the budget-centred space
        spec = bspace.decode(bspace.random_sample(rng))
        if bspace.lo <= bspace.flops(spec) <= bspace.hi:
            break
    print(f"candidate: {spec.describe()}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; amateur stage, {args.steps} steps of "
          f"{args.batch_size} images per source at {args.resolution} px (contrastive views off)")
    pm = registry()
    rows = []
    digits = load_data(pm, "digits", args.resolution, 0)
    amateur_rate(spec, digits, 2, args.batch_size, True)  # warm-up: first-call costs stay out of the figures
    for cl in (False, True):
        rows.append(("digits", "-", "channels-last" if cl else "NCHW",
                     amateur_rate(spec, digits, args.steps, args.batch_size, cl)))
    # data parallel inside the trial (--devices 2): two CPU ranks share the cores (process start included)
    rows.append(("digits", "-", "channels-last, 2 ranks", amateur_rate(spec, digits, args.steps, args.batch_size,
                                                                       True, devices=2)))
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp))
        default_workers = data_module.FOLDER_WORKERS
        for workers in sorted({0, 1, 2, data_module.folder_workers()}):
            data_module.FOLDER_WORKERS = workers
            folder = load_data(pm, f"folder:{tmp}", args.resolution, 0, cache=False)  # decoded per step
            for cl in (False, True):
                rows.append(("folder (PNG)", str(folder.sources["shapes"].train.workers),
                             "channels-last" if cl else "NCHW",
                             amateur_rate(spec, folder, args.steps, args.batch_size, cl)))
        data_module.FOLDER_WORKERS = default_workers
    base = {d: r for d, w, layout, r in rows if layout == "NCHW" and w in ("-", "0")}
    print(f"{'data':<14} {'workers':>7} {'layout':<22} {'images/s':>9} {'vs NCHW, no workers':>20}")
    for d, w, layout, r in rows:
        print(f"{d:<14} {w:>7} {layout:<22} {r:>9.1f} {r / base[d]:>19.2f}x")
    print(f"bare training step, batch {args.batch_size} at {args.resolution} px on CPU:")
    fp32 = step_rate(spec, args.resolution, args.batch_size, "cpu", None)
    bf16 = step_rate(spec, args.resolution, args.batch_size, "cpu", torch.bfloat16)
    print(f"  fp32 {fp32:.1f} images/s, bf16 autocast {bf16:.1f} images/s ({bf16 / fp32:.2f}x)")
    if torch.cuda.is_available():
        for res in (args.resolution, 224):
            rate = step_rate(spec, res, 128, "cuda", torch.bfloat16)
            print(f"  GPU {torch.cuda.get_device_name()}: bf16 autocast, batch 128 at {res} px: {rate:.0f} images/s")
    else:
        print("  no GPU here: the 224 px bf16 figure needs one")


if __name__ == "__main__":
    main()
