"""Triton attention vs PyTorch SDPA on MetaNet-typical shapes (a GPU benchmark, not a test).

    python benchmarks/attention.py [--out attention.json] [--dtypes bf16,fp16] [--quick]

For N in {49, 196, 784, 3136} tokens, head dims {32, 48, 64}, B*H sized to fill the GPU, and the
LG-DSM case (Nq = N/4), it times forward and forward+backward of:
  triton+bias  - metanet's fused kernel with a (H, Nq, Nk) bias (gradient included)
  sdpa+bias    - SDPA with the same bias as attn_mask, on the backend SDPA picks (reported)
  sdpa         - SDPA without bias on its flash backend (the no-bias target)
  eager+bias   - q k^T * scale + bias, softmax, @ v in plain torch
and prints time, TFLOP/s and the ratios the targets are written in. Without a GPU it says so and
exits 0; ``--smoke`` runs two tiny shapes on CPU through Triton's interpreter to check the script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="attention_bench.json", help="JSON file for the results")
    ap.add_argument("--dtypes", default="bf16,fp16")
    ap.add_argument("--quick", action="store_true", help="fewer shapes (N in {196, 784}, D = 32/64)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on CPU through the interpreter")
    return ap.parse_args()


def main() -> int:
    args = _parse()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import torch.nn.functional as F

    from metanet.kernels import HAS_TRITON, attention
    if not args.smoke and not torch.cuda.is_available():
        print("benchmarks/attention.py: no CUDA GPU on this machine; nothing to measure (use a GPU, or --smoke)")
        return 0
    if not HAS_TRITON:
        print("benchmarks/attention.py: Triton is not importable; nothing to measure")
        return 0
    device = "cpu" if args.smoke else "cuda"
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    wanted = ["fp32"] if args.smoke else args.dtypes.split(",")

    if args.smoke:
        cases = [(49, 49, 32, 4), (49, 13, 48, 2)]
    else:
        ns = (196, 784) if args.quick else (49, 196, 784, 3136)
        ds = (32, 64) if args.quick else (32, 48, 64)
        cases = []
        for n in ns:
            for d in ds:
                bh = max(16, int(2 ** 23 // (n * d)))  # about 8M elements per q tensor
                cases.append((n, n, d, bh))
                cases.append((max(1, n // 4), n, d, bh))  # LG-DSM: queries from the strided map

    def timeit(fn, reps: int) -> float:
        if device == "cuda":
            from triton.testing import do_bench
            return do_bench(fn, warmup=10, rep=50) / 1e3
        fn()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps

    def sdpa_choice(q, k, v, mask) -> str:
        try:
            idx = torch._C._fused_sdp_choice(q, k, v, mask, 0.0, False)
            return {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}.get(int(idx), str(idx))
        except Exception:
            return "unknown"

    def eager(q, k, v, bias, scale):
        return ((q @ k.transpose(-2, -1)) * scale + bias).softmax(-1) @ v

    rows = []
    for name in wanted:
        dtype = dtypes[name]
        for nq, nk, d, bh in cases:
            h = 8 if bh % 8 == 0 else 1
            b = bh // h
            scale = 1 / math.sqrt(d)
            mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, requires_grad=True)  # noqa: E731
            q, k, v = mk(b, h, nq, d), mk(b, h, nk, d), mk(b, h, nk, d)
            bias = mk(h, nq, nk)
            mask4 = bias.unsqueeze(0)
            grad = torch.randn(b, h, nq, d, device=device, dtype=dtype)
            picked = sdpa_choice(q, k, v, mask4.expand(b, -1, -1, -1)) if device == "cuda" else "math"
            variants = {
                "triton+bias": lambda: attention(q, k, v, bias, scale, backend="triton"),
                "sdpa+bias": lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, scale=scale),
                "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, scale=scale),
                "eager+bias": lambda: eager(q, k, v, bias, scale),
            }
            if device == "cuda":
                from torch.nn.attention import SDPBackend, sdpa_kernel
                flash_ok = dtype != torch.float32
                plain, biased = variants["sdpa"], variants["sdpa+bias"]
                variants["sdpa"] = (lambda: _pinned(sdpa_kernel, SDPBackend.FLASH_ATTENTION, plain)) if flash_ok else plain
                pick = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                        "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}.get(picked)
                if pick is not None:  # pin what SDPA picks by default, so every repetition runs the same kernel
                    variants["sdpa+bias"] = lambda: _pinned(sdpa_kernel, pick, biased)
            fwd_flops = 4 * b * h * nq * nk * d
            row = {"dtype": name, "Nq": nq, "Nk": nk, "D": d, "B": b, "H": h, "sdpa_bias_backend": picked}
            for label, fn in variants.items():
                try:
                    t_f = timeit(lambda: fn(), reps=3)
                    t_fb = timeit(lambda: fn().backward(grad), reps=3)
                except Exception as exc:  # e.g. a backend that refuses a shape: record, keep going
                    row[label] = {"error": str(exc).splitlines()[0][:120]}
                    continue
                row[label] = {"fwd_ms": t_f * 1e3, "fwdbwd_ms": t_fb * 1e3,
                              "fwd_tflops": fwd_flops / t_f / 1e12, "fwdbwd_tflops": 3.5 * fwd_flops / t_fb / 1e12}
            rows.append(row)
            _print_row(row)
    with open(args.out, "w") as fh:
        json.dump({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu-interpreter",
                   "torch": torch.__version__, "rows": rows}, fh, indent=2)
    print(f"wrote {args.out}")
    return 0


def _pinned(sdpa_kernel, backend, fn):
    with sdpa_kernel([backend]):
        return fn()


def _ratio(row, a, b, key):
    try:
        return row[b][key] / row[a][key]
    except (KeyError, TypeError, ZeroDivisionError):
        return float("nan")


def _print_row(row) -> None:
    head = f"{row['dtype']:>4} Nq={row['Nq']:>4} Nk={row['Nk']:>4} D={row['D']:>3} BxH={row['B']}x{row['H']}"
    parts = []
    for label in ("triton+bias", "sdpa+bias", "sdpa", "eager+bias"):
        r = row.get(label, {})
        if "error" in r:
            parts.append(f"{label}: error")
        elif r:
            parts.append(f"{label}: {r['fwd_ms']:.3f}/{r['fwdbwd_ms']:.3f} ms ({r['fwdbwd_tflops']:.1f} TF/s)")
    print(head + f"  [sdpa+bias on {row['sdpa_bias_backend']}]")
    print("    " + " | ".join(parts))
    print(f"    fwd+bwd speed-up vs sdpa+bias: {_ratio(row, 'triton+bias', 'sdpa+bias', 'fwdbwd_ms'):.2f}x; "
          f"fwd vs sdpa(no bias, flash): {_ratio(row, 'triton+bias', 'sdpa', 'fwd_ms'):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
