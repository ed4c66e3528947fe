"""Triton attention vs PyTorch SDPA on MetaNet-typical shapes (a GPU benchmark, not a test).

    python benchmarks/attention.py [--out attention.json] [--dtypes bf16] [--smoke]

Explicit (B, H, N, D) shapes: (64,8,784,32), (32,4,3136,32), (128,8,196,32), (256,16,49,32),
(64,8,784,64), (64,8,784,48), each with an (H, N, N) bias shared by the batch and a (B, H, N, N) one.
Per shape and bias, forward and forward+backward (``do_bench`` medians, gradients reset between
repetitions with ``grad_to_none``) of:
  triton+bias   metanet's fused kernel, gradient into the bias
  sdpa+bias     SDPA with the same bias as attn_mask requiring grad, on the backend SDPA picks (recorded)
  triton        metanet's kernel without bias
  sdpa          SDPA without bias pinned to flash (the no-bias target)
  sdpa+bias:inf SDPA with a bias that needs no grad (cuDNN when SDPA picks it), forward only: inference
  eager+bias    q k^T * scale + bias, softmax, @ v in plain torch
with the peak memory of one fwd+bwd above the inputs, a correctness check of every variant against an
fp32 reference (max relative error of out and dq), and the ratios the targets are written in. Finishes in
a few minutes on an H200. Without a GPU it says so and exits 0; ``--smoke`` runs two tiny shapes on CPU
through Triton's interpreter to check the script.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

SHAPES = [(64, 8, 784, 32), (32, 4, 3136, 32), (128, 8, 196, 32), (256, 16, 49, 32), (64, 8, 784, 64),
          (64, 8, 784, 48)]


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="attention_bench.json", help="JSON file for the results")
    ap.add_argument("--dtypes", default="bf16")
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
    shapes = [(2, 2, 49, 32), (1, 2, 70, 48)] if args.smoke else SHAPES

    def timeit(fn, grads) -> float:
        if device == "cuda":
            from triton.testing import do_bench
            return do_bench(fn, warmup=10, rep=50, grad_to_none=grads, return_mode="median") / 1e3
        for t in grads:
            t.grad = None
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def peak_bytes(fn) -> int | None:
        if device != "cuda":
            return None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    def sdpa_choice(q, k, v, mask) -> str:
        try:
            idx = torch._C._fused_sdp_choice(q, k, v, mask, 0.0, False)
            return {0: "math", 1: "flash", 2: "efficient", 3: "cudnn", 4: "overrideable"}.get(int(idx), str(idx))
        except Exception:
            return "unknown"

    rows = []
    for name in wanted:
        dtype = dtypes[name]
        for b, h, n, d in shapes:
            for bias_kind in ("h", "bh"):
                scale = 1 / math.sqrt(d)
                gen = torch.Generator(device=device).manual_seed(0)
                mk = lambda *s: torch.randn(*s, device=device, dtype=dtype, generator=gen).requires_grad_()  # noqa
                q, k, v = mk(b, h, n, d), mk(b, h, n, d), mk(b, h, n, d)
                bias = mk(h, n, n) if bias_kind == "h" else mk(b, h, n, n)
                mask4 = bias if bias.dim() == 4 else bias.unsqueeze(0)
                fixed = mask4.detach()
                grad = torch.randn(b, h, n, d, device=device, dtype=dtype, generator=gen)
                picked = sdpa_choice(q, k, v, mask4.expand(b, -1, -1, -1)) if device == "cuda" else "math"
                picked_inf = sdpa_choice(q.detach(), k.detach(), v.detach(), fixed.expand(b, -1, -1, -1)) \
                    if device == "cuda" else "math"
                variants = {
                    "triton+bias": (lambda: attention(q, k, v, bias, scale, backend="triton"), True),
                    "sdpa+bias": (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask4, scale=scale), True),
                    "triton": (lambda: attention(q, k, v, None, scale, backend="triton"), False),
                    "sdpa": (lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), False),
                    "sdpa+bias:inf": (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=fixed, scale=scale),
                                      True),
                    "eager+bias": (lambda: ((q @ k.transpose(-2, -1)) * scale + bias).softmax(-1) @ v, True),
                }
                if device == "cuda":
                    from torch.nn.attention import SDPBackend, sdpa_kernel
                    backends = {"math": SDPBackend.MATH, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                                "cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION}
                    for label, backend in (("sdpa+bias", backends.get(picked)),
                                           ("sdpa+bias:inf", backends.get(picked_inf)),
                                           ("sdpa", SDPBackend.FLASH_ATTENTION if dtype != torch.float32 else None)):
                        if backend is not None:  # pinned: every repetition runs the same kernel
                            fn, biased = variants[label]
                            variants[label] = ((lambda fn=fn, backend=backend: _pinned(sdpa_kernel, backend, fn)),
                                               biased)
                # the fp32 reference every variant is checked against
                ref_in = [t.detach().float().requires_grad_() for t in (q, k, v, mask4)]
                ref_out = F.scaled_dot_product_attention(*ref_in[:3], attn_mask=ref_in[3], scale=scale)
                ref_out.backward(grad.float())
                ref_plain = F.scaled_dot_product_attention(*[t.detach().float() for t in (q, k, v)], scale=scale)
                fwd_flops = 4 * b * h * n * n * d
                row = {"dtype": name, "B": b, "H": h, "N": n, "D": d, "bias": bias_kind,
                       "sdpa_bias_backend": picked, "sdpa_bias_inference_backend": picked_inf}
                leaves = [q, k, v, bias]
                for label, (fn, biased) in variants.items():
                    try:
                        for t in leaves:
                            t.grad = None
                        out = fn()
                        want = ref_out if biased else ref_plain
                        err = float((out.float() - want).abs().max() / want.abs().max())
                        entry = {"out_rel_err": err}
                        if label != "sdpa+bias:inf":
                            out.backward(grad)
                            if biased:
                                entry["dq_rel_err"] = float((q.grad.float() - ref_in[0].grad).abs().max()
                                                            / ref_in[0].grad.abs().max())
                        entry["fwd_ms"] = timeit(lambda: fn(), []) * 1e3
                        if label != "sdpa+bias:inf":
                            entry["fwdbwd_ms"] = timeit(lambda: fn().backward(grad), leaves) * 1e3
                            entry["peak_mb"] = (lambda p: None if p is None else p / 2**20)(
                                peak_bytes(lambda: fn().backward(grad)))
                            entry["fwdbwd_tflops"] = 3.5 * fwd_flops / (entry["fwdbwd_ms"] / 1e3) / 1e12
                        row[label] = entry
                    except Exception as exc:  # e.g. a backend that refuses a shape: record, keep going
                        row[label] = {"error": str(exc).splitlines()[0][:120]}
                rows.append(row)
                _print_row(row)
                variants = ref_in = ref_out = ref_plain = None  # free this shape's tensors before the next
                if device == "cuda":
                    torch.cuda.empty_cache()
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
    head = f"{row['dtype']:>4} B={row['B']} H={row['H']} N={row['N']} D={row['D']} bias={row['bias']}"
    print(head + f"  [sdpa+bias on {row['sdpa_bias_backend']}, inference on {row['sdpa_bias_inference_backend']}]")
    for label in ("triton+bias", "sdpa+bias", "triton", "sdpa", "sdpa+bias:inf", "eager+bias"):
        r = row.get(label, {})
        if "error" in r:
            print(f"    {label:<14} error: {r['error']}")
        elif r:
            fb = f"{r['fwdbwd_ms']:8.3f} ms fwd+bwd" if "fwdbwd_ms" in r else " " * 20
            mem = f"{r['peak_mb']:8.1f} MB" if r.get("peak_mb") is not None else ""
            errs = f"err out {r['out_rel_err']:.1e}" + (f" dq {r['dq_rel_err']:.1e}" if "dq_rel_err" in r else "")
            print(f"    {label:<14} {r['fwd_ms']:8.3f} ms fwd {fb} {mem}  {errs}")
    print(f"    fwd+bwd with bias, sdpa+bias / triton+bias: {_ratio(row, 'triton+bias', 'sdpa+bias', 'fwdbwd_ms'):.2f}x;"
          f" no bias, sdpa flash / triton: fwd {_ratio(row, 'triton', 'sdpa', 'fwd_ms'):.2f}x, "
          f"fwd+bwd {_ratio(row, 'triton', 'sdpa', 'fwdbwd_ms'):.2f}x")


if __name__ == "__main__":
    sys.exit(main())
