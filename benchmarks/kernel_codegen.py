"""What the attention kernels look like to a Hopper compiler, without a GPU.

    python benchmarks/kernel_codegen.py [--json] [--quick] [--dtype bf16] [--autotune-configs]

Compiles every kernel of ``metanet.kernels.attention_triton`` ahead of time for sm_90 (Triton's
``GPUTarget("cuda", 90, 32)`` + ``ASTSource`` + ``triton.compile``, then the bundled ``ptxas -arch=sm_90a
-v``) with the specialisations a real launch of a contiguous bf16 input gets (ints equal to 1 become
constants, pointers and ints divisible by 16 carry ``tt.divisibility``) and the launcher's default
configuration (``_config``, the backward's register cap), for D in {32, 48, 64} and N in {49, 196, 784,
3136}. The kernels: ``fwd``; ``bwd``, the one-launch backward (dK/dV and dQ programs); ``dbias``, the
gradient of a bias broadcast over the batch, compiled with the batch group R the launcher picks at
B=32, H=4 (fp32 partials when R < B). Per kernel and shape it prints registers, spill bytes, shared
memory, blocks per SM (H100/H200: 64K registers, 228 KB shared memory, 64 warps per SM), whether wgmma
and cp.async are used, PTX instructions per score in the main loop (the largest loop's instructions per
thread divided by the scores each thread holds per iteration, BLOCK_M*BLOCK_N/threads: for ``bwd`` the
dK/dV programs' loop, the dQ programs' loop beside it; for ``dbias`` per batch) and the modelled HBM
bytes of one forward+backward at B=32, H=4 (see ``hbm_bytes``: each kernel, or each kind of program,
reads its inputs and writes its outputs once, tiles of one head reused from L2; "today" is the design
the issue started from, which wrote fp32 (B, H, N, N) bias-gradient partials and summed them in torch,
and computed delta in 4 eager kernels).

``--json`` prints one JSON list on its last line, a row per kernel and shape. ``--autotune-configs``
instead compiles every configuration the GPU autotuner may try at N=784.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret

ELEM = {"bf16": 2, "fp16": 2, "fp32": 4}
SM_REGS, SM_SMEM, SM_WARPS = 65536, 228 * 1024, 64


def hbm_bytes(design: str, B: int, H: int, N: int, D: int, e: int, bias: str) -> int:
    """Modelled HBM traffic of forward + backward (bias gradient included) for a (B, H, N, D) input."""
    x = B * H * N * D * e                       # one of q, k, v, o, do, dq, dk, dv
    rows = B * H * N * 4                        # lse or delta (fp32)
    npad = math.ceil(N / 16) * 16 if design == "new" else N
    bias_in = 0 if bias == "none" else (H if bias == "h" else B * H) * N * npad * e
    fwd = 3 * x + bias_in + x + rows            # read q, k, v, bias; write o, lse
    if design == "today":
        delta = B * H * N * D * (2 * e + 24)    # do.float(), o.float(), mul, sum: four eager kernels
        dkdv = 4 * x + 2 * rows + bias_in + 2 * x
        dq = 4 * x + 2 * rows + bias_in + x
        if bias == "h":                         # fp32 (B, H, N, N) partials, summed and cast in torch
            partial = B * H * N * N * 4
            dq += partial
            dbias = partial + H * N * N * 4 + H * N * N * 4 + H * N * N * e
        elif bias == "bh":
            dq += B * H * N * N * e
            dbias = 0
        else:
            dbias = 0
        return fwd + delta + dkdv + dq + dbias
    # one launch: dK/dV programs read q, k, v, o, do, lse, bias and write dk, dv; dQ programs read the same
    # and write dq. delta = rowsum(dO * O) is recomputed from the o and do tiles, never stored.
    dkdv = 5 * x + rows + bias_in + 2 * x
    dq = 5 * x + rows + bias_in + x
    dbias = 0
    if bias == "bh":                            # dS written once, in the bias dtype, by the dQ programs
        dq += B * H * N * npad * e
    elif bias == "h":                           # per (batch group, head, tile): R batches summed in registers
        from metanet.kernels.attention_triton import dbias_batch_group
        groups = math.ceil(B / dbias_batch_group(B, H, N, N))
        dbias = 5 * x + rows + groups * bias_in  # each group reads the bias tile once
        if groups == 1:                         # the gradient written once, in the bias dtype
            dbias += H * N * npad * e
        else:                                   # fp32 partials; torch sums them (fp32) and casts
            dbias += 2 * groups * H * N * npad * 4 + H * N * N * (4 + 4 + e)
    return fwd + dkdv + dq + dbias


def _strides(*shape):
    out, acc = [], 1
    for s in reversed(shape):
        out.append(acc)
        acc *= s
    return list(reversed(out))


def _launches(B, H, N, D, bias, dtype):
    """(kernel, jit function, pointer types, {arg: value}, constexprs, warps, stages, register cap) as the
    launchers call them."""
    from metanet.kernels import attention_triton as at
    bm, bn, bd, warps, stages = at._config(D)
    t = "*" + dtype
    q = _strides(B, H, N, D)
    npad = math.ceil(N / 16) * 16
    bstr = [0, 0, 0, 0] if bias == "none" else ([0, N * npad, npad, 1] if bias == "h" else
                                                [H * N * npad, N * npad, npad, 1])
    base = dict(B=B, H=H, Nq=N, Nk=N, Nkp=npad, D=D)
    tiles = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd)
    has_bias = bias != "none"
    runs = []

    fwd_args = {"Q": t, "K": t, "V": t, "Bias": t, "O": t, "LSE": "*fp32"}
    vals = {**{f"sq{c}": v for c, v in zip("bhmd", q)}, **{f"sk{c}": v for c, v in zip("bhnd", q)},
            **{f"sv{c}": v for c, v in zip("bhnd", q)}, **{f"sb{c}": v for c, v in zip("bhmn", bstr)},
            **{f"so{c}": v for c, v in zip("bhmd", q)}, **base, "qk_scale": 0.1}
    runs.append(("fwd", at._attn_fwd, fwd_args, vals, dict(HAS_BIAS=has_bias, PRECISION="tf32", **tiles), warps,
                 stages, at._default_maxnreg(at.FWD_MAXNREG, D, ELEM[dtype])))
    write_db = bias == "bh"
    dbstr = bstr if write_db else [0, 0, 0, 0]
    bwd_args = {"Q": t, "K": t, "V": t, "Bias": t, "O": t, "DO": t, "LSE": "*fp32", "DQ": t, "DK": t, "DV": t,
                "DB": t}
    vals_bwd = {**vals, **{f"sdo{c}": v for c, v in zip("bhmd", q)}, **{f"sdq{c}": v for c, v in zip("bhmd", q)},
                **{f"sdk{c}": v for c, v in zip("bhnd", q)}, **{f"sdb{c}": v for c, v in zip("bhmn", dbstr)},
                "scale": 0.1}
    runs.append(("bwd", at._attn_bwd, bwd_args, vals_bwd,
                 dict(HAS_BIAS=has_bias, WRITE_DB=write_db, PRECISION="tf32", **tiles), warps, stages,
                 at._default_maxnreg(at.BWD_MAXNREG, D, ELEM[dtype])))
    if bias == "h":  # the batch group the launcher picks at this shape: fp32 partials when G > 1
        R = at.dbias_batch_group(B, H, N, N)
        G = math.ceil(B / R)
        db_args = {"Q": t, "K": t, "V": t, "Bias": t, "O": t, "DO": t, "LSE": "*fp32",
                   "DB": t if G == 1 else "*fp32"}
        vals_db = {**vals_bwd, "sdbg": 0 if G == 1 else H * N * npad, "sdbh": N * npad, "sdbm": npad, "sdbn": 1,
                   "R": R}
        runs.append(("dbias", at._attn_bwd_dbias, db_args, vals_db, dict(PRECISION="tf32", **tiles), warps, stages,
                     None))
    return runs


def compile_one(fn, pointer_types, values, constexprs, warps, stages=3, maxnreg=None):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    target = GPUTarget("cuda", 90, 32)
    backend = triton.compiler.make_backend(target)
    while hasattr(fn, "configs"):  # an autotuned kernel: compile its default configuration (kernels._config)
        fn = fn.fn
    signature, consts, attrs = {}, dict(constexprs), {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointer_types:
            signature[name] = pointer_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            v = values[name]
            if isinstance(v, float):
                signature[name] = "fp32"
            elif v == 1:  # Triton specialises ints equal to 1 into constants
                signature[name] = "constexpr"
                consts[name] = 1
            else:
                signature[name] = "i32"
                if v % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    opts = {"num_warps": warps, "num_stages": stages}
    if maxnreg:
        opts["maxnreg"] = maxnreg
    options = backend.parse_options(opts)
    return triton.compile(src, target=target, options=options.__dict__)


def ptxas_report(ptx: str) -> tuple[int, int]:
    import triton
    ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-arch=sm_90a", "-v", path, "-o", os.devnull], capture_output=True, text=True)
    text = out.stdout + out.stderr
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.findall(r"(\d+) bytes spill (?:stores|loads)", text)
    return (int(regs.group(1)) if regs else -1), sum(int(s) for s in spill)


def loop_instructions(ptx: str) -> list[int]:
    """Instructions of each loop body (a label reached by a backward branch), largest first."""
    lines = [ln.strip() for ln in ptx.splitlines()]
    labels = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"^(\$L__BB\w+):", ln))}
    ends = {}
    for i, ln in enumerate(lines):
        m = re.search(r"bra(?:\.uni)?\s+(\$L__\w+);", ln)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            ends[m.group(1)] = i
    sizes = [sum(1 for b in lines[labels[lab] + 1:i + 1] if b.endswith(";") and not b.startswith(("//", ".", "$")))
             for lab, i in ends.items()]
    return sorted(sizes, reverse=True)


def kernel_instructions(ptx: str) -> int:
    return sum(1 for b in (ln.strip() for ln in ptx.splitlines())
               if b.endswith(";") and not b.startswith(("//", ".", "$")))


def autotune_report(B: int, H: int, args) -> int:
    """Every autotuner candidate (kernels.attention_triton._tile_configs on a GPU, pruned as the autotuner
    prunes at N=784) compiled for sm_90, with an (H, N, N) bias and, for the backward, a (B, H, N, N) one."""
    from metanet.kernels import attention_triton as at
    rows = []
    print(f"{'kernel':<6} {'D':>3} {'bias':>4} {'BM':>4} {'BN':>4} {'warps':>5} {'stages':>6} {'maxnreg':>7} "
          f"{'regs':>5} {'spill':>6} {'smem':>7} {'blk/SM':>6}")
    import torch
    named = {"Nq": 784, "Nk": 784, "Q": torch.empty(0, dtype={"bf16": torch.bfloat16, "fp16": torch.float16,
                                                              "fp32": torch.float32}[args.dtype])}
    for D in (32, 48, 64):
        for bias in ("h", "bh"):
            for name, fn, ptrs, vals, consts, _, _, _ in _launches(B, H, 784, D, bias, args.dtype):
                if bias == "bh" and name != "bwd":  # only the backward's code differs with a per-batch bias
                    continue
                kept = fn.early_config_prune(fn.configs, {**named, "D": D})  # as the autotuner prunes
                for c in kept:
                    ck = compile_one(fn, ptrs, vals, {**consts, **c.kwargs}, c.num_warps, c.num_stages, c.maxnreg)
                    regs, spill = ptxas_report(ck.asm["ptx"])
                    smem = int(ck.metadata.shared)
                    per_sm = min(SM_REGS // max(1, regs * c.num_warps * 32), SM_SMEM // max(1, smem),
                                 SM_WARPS // c.num_warps)
                    rows.append({"kernel": name, "D": D, "bias": bias, **c.kwargs, "num_warps": c.num_warps,
                                 "num_stages": c.num_stages, "maxnreg": c.maxnreg, "regs": regs,
                                 "spill_bytes": spill, "smem_bytes": smem, "blocks_per_sm": per_sm})
                    print(f"{name:<6} {D:>3} {bias:>4} {c.kwargs['BLOCK_M']:>4} {c.kwargs['BLOCK_N']:>4} "
                          f"{c.num_warps:>5} {c.num_stages:>6} {str(c.maxnreg or '-'):>7} {regs:>5} {spill:>6} "
                          f"{smem:>7} {per_sm:>6}", flush=True)
    spills = [r for r in rows if r["spill_bytes"] or r["blocks_per_sm"] == 0]
    print(f"candidates that spill or do not fit: {len(spills)} of {len(rows)}")
    if args.json:
        print(json.dumps(rows))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="one JSON list on the last line")
    ap.add_argument("--quick", action="store_true", help="D=32 and N in {49, 784} only")
    ap.add_argument("--dtype", default="bf16", choices=sorted(ELEM))
    ap.add_argument("--autotune-configs", action="store_true",
                    help="instead: compile every configuration the GPU autotuner may pick (N=784, (H,N,N) bias)")
    args = ap.parse_args()
    import importlib.util
    if importlib.util.find_spec("triton") is None:
        print("benchmarks/kernel_codegen.py: Triton is not importable; nothing to compile")
        return 0
    B, H = 32, 4
    if args.autotune_configs:
        return autotune_report(B, H, args)
    ds, ns = ((32,), (49, 784)) if args.quick else ((32, 48, 64), (49, 196, 784, 3136))
    rows = []
    print(f"{'kernel':<6} {'N':>5} {'D':>3} {'bias':>4} {'regs':>5} {'spill':>6} {'smem':>7} {'blk/SM':>6} "
          f"{'wgmma':>5} {'cp.async':>8} {'instr/score':>11}")
    for D in ds:
        for N in ns:
            for bias in ("none", "h", "bh"):
                for name, fn, ptrs, vals, consts, warps, stages, maxnreg in _launches(B, H, N, D, bias,
                                                                                         args.dtype):
                    ck = compile_one(fn, ptrs, vals, consts, warps, stages, maxnreg)
                    ptx = ck.asm["ptx"]
                    regs, spill = ptxas_report(ptx)
                    smem = int(ck.metadata.shared)
                    threads = warps * 32
                    per_sm = min(SM_REGS // max(1, regs * threads), SM_SMEM // max(1, smem), SM_WARPS // warps)
                    scores = consts["BLOCK_M"] * consts["BLOCK_N"] / threads
                    # the largest loop: the forward's, the dK/dV programs' in bwd (the dQ programs' loop
                    # follows), one batch of dbias; dbias with R = 1 has no loop: its whole body is one batch
                    loops = loop_instructions(ptx) or [kernel_instructions(ptx)]
                    instr = loops[0] / scores
                    row = {"kernel": name, "N": N, "D": D, "bias": bias, "regs": regs, "spill_bytes": spill,
                           "smem_bytes": smem, "blocks_per_sm": per_sm, "num_stages": stages, "maxnreg": maxnreg,
                           "wgmma": "wgmma" in ptx, "cp_async": "cp.async" in ptx, "instr_per_score": round(instr, 2),
                           "hbm_bytes_fwd_bwd": hbm_bytes("new", B, H, N, D, ELEM[args.dtype], bias),
                           "hbm_bytes_fwd_bwd_today": hbm_bytes("today", B, H, N, D, ELEM[args.dtype], bias)}
                    note = ""
                    if name == "bwd" and len(loops) > 1:
                        row["instr_per_score_dq"] = round(loops[1] / scores, 2)
                        note = f"dQ loop {row['instr_per_score_dq']:.2f}"
                    if name == "dbias":
                        row["R"] = vals["R"]
                        row["G"] = math.ceil(B / vals["R"])
                        note = f"R={row['R']} G={row['G']}" + ("" if len(loops) and loop_instructions(ptx) else
                                                               ", no loop: whole kernel")
                    rows.append(row)
                    print(f"{name:<6} {N:>5} {D:>3} {bias:>4} {regs:>5} {spill:>6} {smem:>7} {per_sm:>6} "
                          f"{str(row['wgmma']):>5} {str(row['cp_async']):>8} {instr:>11.2f}  {note}", flush=True)
    print()
    print(f"modelled HBM bytes of fwd+bwd at B={B}, H={H} ({args.dtype}); today = the design of the issue "
          "(fp32 (B, H, N, N) bias-gradient partials summed in torch, delta in 4 eager kernels)")
    for D in ds:
        for N in ns:
            for bias in ("none", "h", "bh"):
                new, old = (hbm_bytes(k, B, H, N, D, ELEM[args.dtype], bias) for k in ("new", "today"))
                print(f"  N={N:<5} D={D:<3} bias={bias:<4} {new / 1e9:8.3f} GB vs {old / 1e9:8.3f} GB  "
                      f"({new / old:.0%})")
    fwd = {(r["N"], r["D"]): r["instr_per_score"] for r in rows if r["kernel"] == "fwd" and r["bias"] == "h"}
    for D in ds:
        if (784, D) in fwd:
            small = [f"N={n}: {fwd[(n, D)] / fwd[(784, D)]:.2f}x" for n in ns if n != 784 and (n, D) in fwd]
            print(f"fwd instr/score with an (H,N,N) bias vs N=784, D={D}: " + ", ".join(small))
    spills = [r for r in rows if r["spill_bytes"]]
    print(f"spills: {len(spills)} of {len(rows)} kernels" + (": " + ", ".join(
        f"{r['kernel']} N={r['N']} D={r['D']} bias={r['bias']}" for r in spills) if spills else ""))
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
