"""Flash-style attention in Triton, forward and backward, with a fused additive bias.

softmax(q k^T * scale + bias) v for q (B, H, Nq, D), k/v (B, H, Nk, D), any Nq/Nk, head dims padded to
a power of two (>= 16) and masked, fp16/bf16/fp32 inputs with fp32 accumulation. The bias broadcasts
over the batch through a zero stride: (H, Nq, Nk), (1, H, Nq, Nk) or (B, H, Nq, Nk).

What the design does and why (see the kernel notes and ``benchmarks/kernel_codegen.py``):

* **Safe at GPU scale.** Batch/head bases are 64-bit (``B*H*Nq*Nk`` passes 2^31 at N=3136); B*H sits on
  grid axis 0 (axis 1 is capped at 65,535). The online softmax never subtracts ``-inf`` from ``-inf``:
  ``-inf`` bias entries are masks, and a fully masked row gives 0 output, LSE ``+inf`` and 0 gradients,
  as SDPA does.
* **Per score**: base-2 exponentials with ``scale * log2(e)`` folded into the score (one FMA, LSE kept in
  log2 units); the last, partial tile of every loop is peeled, so the steady state runs unmasked.
* **Bias rows padded to 16 elements** by the launcher; bias loads are bounded by the padded width and the
  scores masked with the true Nk: unaligned rows or masks along the contiguous key axis at N=49/196
  compile to scalar, unpipelined loads on Hopper.
* **Raster**: program ``pid = h * B + b``, batch fastest, so the programs reading one head's (H, N, N) bias
  tile run together and the tile comes from L2.
* **Backward in one launch** (``_attn_bwd``): per (b, h), dK/dV programs (one key tile each, looping over
  the queries) followed by dQ programs (one query tile each, looping over the keys); for a (B, H, N, N)
  bias the dQ programs also write dS, each element once. No program reads what another writes: each
  recomputes P from the forward's LSE and ``delta = rowsum(dO * O)`` from the o and dO tiles it loads,
  so there is no delta buffer, preprocessing kernel or atomic. Each tile is loaded once; an operand
  needed transposed is a ``tl.trans`` of the loaded tile (a shared-memory view), never of a ``tl.dot``
  result, which some Triton versions miscompile on Hopper.
* **A bias broadcast over the batch** gets its gradient from ``_attn_bwd_dbias``: a program per (batch
  group, head, query tile, key tile) sums dS over R consecutive batches in fp32 registers, the bias tile
  loaded once for all R. R is chosen so the grid fills the GPU (:func:`dbias_batch_group`): at large
  shapes R = B and the gradient is written once in the bias dtype, with no (B, H, N, N) buffer; at small
  N, G = cdiv(B, R) fp32 partials are summed by torch.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
BIAS_ROW_ALIGN = 16  # elements
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# The broadcast-bias gradient: batches summed per program (None: chosen per shape, see dbias_batch_group)
# and the programs per SM the choice aims for.
DBIAS_BATCH_GROUP: int | None = None
DBIAS_PROGRAMS_PER_SM = 4
# Register caps for 16-bit inputs at D <= 32 with 64x64 tiles and 4 warps, where ptxas otherwise stops just
# past an occupancy step; capped, each kernel compiles without spills and with the same loop instructions
# (benchmarks/kernel_codegen.py). The forward: 128, four blocks per SM (132-134 uncapped: three). The
# one-launch backward: 168, three blocks; with a bias it peaks at ~185 live registers, where ptxas overlaps
# the dK/dV programs' delta row sums with an in-flight wgmma, and gets 208 uncapped: two blocks. Above
# D=32, or with fp32 inputs, the caps spill.
FWD_MAXNREG = 128
BWD_MAXNREG = 168


def _tile_configs(maxnreg: int | None = None) -> list:
    """Tiles, warps and pipeline stages the autotuner tries (per Nq, Nk, D, bias and dtype). Under Triton's
    interpreter one config: it runs programs one by one and cannot time anything. ``maxnreg`` adds the
    64x64 4-warp configurations with that register cap, used where :func:`_cap_applies`."""
    if INTERPRETING:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3)]
    shapes = ((64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2), (64, 32, 4, 3), (64, 32, 4, 2),
              (32, 64, 4, 2))
    configs = [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]
    if maxnreg:  # 64x64 only: narrower tiles spill under the backward's cap (kernel_codegen.py --autotune-configs)
        configs += [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st, maxnreg=maxnreg)
                    for bm, bn, w, st in shapes if (bm, bn, w) == (64, 64, 4)]
    return configs


def _cap_applies(d: int, elem_bytes: int) -> bool:
    return d <= 32 and elem_bytes == 2


def _default_maxnreg(cap: int, d: int, elem_bytes: int = 2) -> int | None:
    """The register cap of the default configuration (:func:`_config`) on a GPU, for a kernel capped at ``cap``."""
    bm, bn, _, warps, _ = _config(d)
    return cap if _cap_applies(d, elem_bytes) and (bm, bn, warps) == (64, 64, 4) else None


def _prune(configs, named_args, **kwargs):
    # no tile much larger than the sequence (N=49 needs no 128-row tiles); wide heads skip 3-stage pipelines
    # whose shared memory leaves one block per SM (sm_90 compile: 115-120 KB at D=64)
    nq, nk, d = named_args["Nq"], named_args["Nk"], named_args["D"]
    cap_m, cap_n = max(32, triton.next_power_of_2(nq)), max(32, triton.next_power_of_2(nk))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= cap_m and c.kwargs["BLOCK_N"] <= cap_n
            and not (d > 32 and c.num_stages > 2 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64)]
    return kept or configs[:1]


def _prune_capped(configs, named_args, **kwargs):
    # where the cap applies the capped configs replace their uncapped twins; elsewhere they are dropped
    q = named_args.get("Q")
    cap_ok = _cap_applies(named_args["D"], q.element_size() if q is not None else 2)
    kept = [c for c in _prune(configs, named_args) if c.maxnreg is None or cap_ok]
    kept = [c for c in kept if not (cap_ok and c.maxnreg is None
                                    and any(o.maxnreg and o.kwargs == c.kwargs and o.num_warps == c.num_warps
                                            and o.num_stages == c.num_stages for o in kept))]
    return kept or configs[:1]


def _prune_bwd(configs, named_args, **kwargs):
    # also dropped, as they spill in the sm_90 compile: 128x64 tiles above D=32, 32-key tiles at D <= 32
    d = named_args["D"]
    kept = [c for c in _prune_capped(configs, named_args)
            if not (d > 32 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64)
            and not (d <= 32 and c.kwargs["BLOCK_N"] < 64)]
    return kept or configs[:1]


def _autotuned(fn, maxnreg: int | None = None, prune=_prune):
    return triton.autotune(configs=_tile_configs(maxnreg), key=["Nq", "Nk", "D", "HAS_BIAS", "WRITE_DB"],
                           prune_configs_by={"early_config_prune": prune})(fn)


@triton.jit
def _load_tile(base, rows, cols, stride_r, stride_c, mask_r, mask_c):
    # The (rows x cols) tile at base, zero outside the masks; a transposed tile is the same call with
    # rows and columns swapped. Triton inlines jit helpers: this costs nothing over writing it out.
    return tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c,
                   mask=mask_r[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _bias_tile(b_base, offs_m, n, sbm, sbn, mask_m, Nkp, MASKED: tl.constexpr):
    """A bias tile in fp32 log2 units. On the last, partial key tile the load is bounded by the padded row
    width (a multiple of 16), not the key count, so it stays vectorised; padded keys are masked after."""
    if MASKED:
        bias = _load_tile(b_base, offs_m, n, sbm, sbn, mask_m, n < Nkp)
    else:
        bias = tl.load(b_base + offs_m[:, None] * sbm + n[None, :] * sbn, mask=mask_m[:, None], other=0.0)
    return bias.to(tl.float32) * 1.4426950408889634


@triton.jit
def _program_bh(pid, B, H):
    # pid = h * B + b: the batch varies fastest, so neighbouring programs share a head (and its bias)
    b = pid % B
    h = pid // B
    return b.to(tl.int64), h.to(tl.int64)


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, k_base, v_base, b_base, offs_m, n, offs_d, mask_m, mask_d, Nk, Nkp,
              skn, skd, svn, svd, sbm, sbn, qk_scale,
              HAS_BIAS: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    mask_n = n < Nk
    if MASKED:
        kt = _load_tile(k_base, offs_d, n, skd, skn, mask_d, mask_n)
        v = _load_tile(v_base, n, offs_d, svn, svd, mask_n, mask_d)
    else:  # a full tile: only the head-dim padding is masked
        kt = tl.load(k_base + offs_d[:, None] * skd + n[None, :] * skn, mask=mask_d[:, None], other=0.0)
        v = tl.load(v_base + n[:, None] * svn + offs_d[None, :] * svd, mask=mask_d[None, :], other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale  # log2 units
    if HAS_BIAS:
        s += _bias_tile(b_base, offs_m, n, sbm, sbn, mask_m, Nkp, MASKED)
    if MASKED:
        s = tl.where(mask_n[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # a row with only -inf so far keeps m = -inf: subtract 0 instead, so exp2 sees -inf, never NaN
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
    return acc, m_new, l_i


@functools.partial(_autotuned, maxnreg=FWD_MAXNREG, prune=_prune_capped)
@triton.jit
def _attn_fwd(Q, K, V, Bias, O, LSE,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              sbb, sbh, sbm, sbn, sob, soh, som, sod,
              B, H, Nq, Nk, Nkp, D, qk_scale,
              HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b, h = _program_bh(pid_bh, B, H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_d = offs_d < D
    k_base = K + b * skb + h * skh
    v_base = V + b * svb + h * svh
    b_base = Bias + b * sbb + h * sbh

    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    full = (Nk // BLOCK_N) * BLOCK_N
    for start_n in range(0, full, BLOCK_N):  # steady state: no key mask
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_base, v_base, b_base, offs_m, start_n + offs_n, offs_d,
                                  mask_m, mask_d, Nk, Nkp, skn, skd, svn, svd, sbm, sbn, qk_scale,
                                  HAS_BIAS, False, PRECISION)
    if full < Nk:  # the peeled, partial last tile
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_base, v_base, b_base, offs_m, full + offs_n, offs_d,
                                  mask_m, mask_d, Nk, Nkp, skn, skd, svn, svd, sbm, sbn, qk_scale,
                                  HAS_BIAS, True, PRECISION)
    # fully masked rows (l = 0): output 0 and LSE +inf, so the backward gives them 0 gradients
    live = l_i > 0
    l_safe = tl.where(live, l_i, 1.0)
    out = tl.where(live[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(live, m_i + tl.math.log2(l_safe), float("inf"))
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * Nq + offs_m, lse, mask=mask_m)


@triton.jit
def _dq_tile(dq, q, do, lse, delta, k_base, v_base, b_base, db_base, offs_m, n, offs_d, mask_m, mask_d, Nk, Nkp,
             skn, skd, svn, svd, sbm, sbn, sdbm, sdbn, qk_scale,
             HAS_BIAS: tl.constexpr, WRITE_DB: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    # rows past Nq carry lse = +inf, so only keys past Nk (the peeled tile) need masking
    if MASKED:
        mask_n = n < Nk
        k = _load_tile(k_base, n, offs_d, skn, skd, mask_n, mask_d)
        vt = _load_tile(v_base, offs_d, n, svd, svn, mask_d, mask_n)
    else:
        k = tl.load(k_base + n[:, None] * skn + offs_d[None, :] * skd, mask=mask_d[None, :], other=0.0)
        vt = tl.load(v_base + offs_d[:, None] * svd + n[None, :] * svn, mask=mask_d[:, None], other=0.0)
    # k is used both ways round: transposing the loaded tile is free (a shared-memory view), unlike a
    # transposed dot result, which some Triton versions miscompile on Hopper
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
    if HAS_BIAS:
        s += _bias_tile(b_base, offs_m, n, sbm, sbn, mask_m, Nkp, MASKED)
    p = tl.math.exp2(s - lse[:, None])  # lse = +inf on masked or absent rows: p = 0
    if MASKED:
        p = tl.where(mask_n[None, :], p, 0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    if WRITE_DB:
        if MASKED:  # the dS buffer's rows are padded too: columns Nk..Nkp receive zeros
            tl.store(db_base + offs_m[:, None] * sdbm + n[None, :] * sdbn, ds.to(db_base.dtype.element_ty),
                     mask=mask_m[:, None] & (n < Nkp)[None, :])
        else:
            tl.store(db_base + offs_m[:, None] * sdbm + n[None, :] * sdbn, ds.to(db_base.dtype.element_ty),
                     mask=mask_m[:, None])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@triton.jit
def _dkdv_tile(dk, dv, k, v, q_base, o_base, do_base, lse_base, b_base, offs_n, m, offs_d, mask_kb, mask_d, Nq,
               sqm, sqd, som, sod, sdom, sdod, sbm, sbn, qk_scale,
               HAS_BIAS: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    # Scores are formed transposed (keys x queries) so that dK and dV come out of plain dots. Rows past
    # Nq get lse = +inf, hence p = 0 and dS = 0; rows of keys past Nk are never stored and a dot keeps
    # rows apart, so the keys need no mask on the scores.
    if MASKED:
        mask_m = m < Nq
        q = _load_tile(q_base, m, offs_d, sqm, sqd, mask_m, mask_d)
        o = _load_tile(o_base, m, offs_d, som, sod, mask_m, mask_d)
        do = _load_tile(do_base, m, offs_d, sdom, sdod, mask_m, mask_d)
        lse = tl.load(lse_base + m, mask=mask_m, other=float("inf"))
    else:
        q = tl.load(q_base + m[:, None] * sqm + offs_d[None, :] * sqd, mask=mask_d[None, :], other=0.0)
        o = tl.load(o_base + m[:, None] * som + offs_d[None, :] * sod, mask=mask_d[None, :], other=0.0)
        do = tl.load(do_base + m[:, None] * sdom + offs_d[None, :] * sdod, mask=mask_d[None, :], other=0.0)
        lse = tl.load(lse_base + m)
    st = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale
    if HAS_BIAS:
        if MASKED:
            bias = _load_tile(b_base, offs_n, m, sbn, sbm, mask_kb, mask_m)
        else:
            bias = tl.load(b_base + offs_n[:, None] * sbn + m[None, :] * sbm, mask=mask_kb[:, None], other=0.0)
        st += bias.to(tl.float32) * 1.4426950408889634
    pt = tl.math.exp2(st - lse[None, :])
    dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
    dpt = tl.dot(v, tl.trans(do), input_precision=PRECISION)
    # delta = rowsum(dO * O) of these queries, here rather than read from a buffer: the dQ programs that
    # could write it run in the same launch
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    dst = pt * (dpt - delta[None, :])
    dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    return dk, dv


@triton.jit
def _dkdv_program(Q, K, V, Bias, O, DO, LSE, DK, DV, b, h, pid_bh, pid_n,
                  sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sbb, sbh, sbm, sbn,
                  sob, soh, som, sod, sdob, sdoh, sdom, sdod, sgb, sgh, sgn, sgd,
                  Nq, Nk, Nkp, D, qk_scale, scale,
                  HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < Nk
    mask_d = offs_d < D
    # bias loads stop at the padded row width, a multiple of 16, so the mask along the contiguous key
    # axis does not break them into scalar loads at N=49/196
    mask_kb = offs_n < Nkp
    k = _load_tile(K + b * skb + h * skh, offs_n, offs_d, skn, skd, mask_n, mask_d)
    v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svn, svd, mask_n, mask_d)
    q_base, o_base, do_base = Q + b * sqb + h * sqh, O + b * sob + h * soh, DO + b * sdob + h * sdoh
    lse_base, b_base = LSE + pid_bh.to(tl.int64) * Nq, Bias + b * sbb + h * sbh
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    full = (Nq // BLOCK_M) * BLOCK_M
    for start_m in range(0, full, BLOCK_M):  # steady state: no query mask
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, o_base, do_base, lse_base, b_base, offs_n, start_m + offs_m,
                            offs_d, mask_kb, mask_d, Nq, sqm, sqd, som, sod, sdom, sdod, sbm, sbn, qk_scale,
                            HAS_BIAS, False, PRECISION)
    if full < Nq:  # the peeled, partial last query tile
        dk, dv = _dkdv_tile(dk, dv, k, v, q_base, o_base, do_base, lse_base, b_base, offs_n, full + offs_m,
                            offs_d, mask_kb, mask_d, Nq, sqm, sqd, som, sod, sdom, sdod, sbm, sbn, qk_scale,
                            HAS_BIAS, True, PRECISION)
    dk = dk * scale
    out = b * sgb + h * sgh + offs_n[:, None] * sgn + offs_d[None, :] * sgd
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@triton.jit
def _dq_program(Q, K, V, Bias, O, DO, LSE, DQ, DB, b, h, pid_bh, pid_m,
                sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sbb, sbh, sbm, sbn,
                sob, soh, som, sod, sdob, sdoh, sdom, sdod, sgb, sgh, sgm, sgd, sdbb, sdbh, sdbm, sdbn,
                Nq, Nk, Nkp, D, qk_scale, scale,
                HAS_BIAS: tl.constexpr, WRITE_DB: tl.constexpr, PRECISION: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_d = offs_d < D
    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
    do = _load_tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdom, sdod, mask_m, mask_d)
    o = _load_tile(O + b * sob + h * soh, offs_m, offs_d, som, sod, mask_m, mask_d)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * Nq + offs_m, mask=mask_m, other=float("inf"))
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base, v_base, b_base = K + b * skb + h * skh, V + b * svb + h * svh, Bias + b * sbb + h * sbh
    db_base = DB + b * sdbb + h * sdbh
    full = (Nk // BLOCK_N) * BLOCK_N
    for start_n in range(0, full, BLOCK_N):  # steady state: no key mask
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, b_base, db_base, offs_m, start_n + offs_n, offs_d,
                      mask_m, mask_d, Nk, Nkp, skn, skd, svn, svd, sbm, sbn, sdbm, sdbn, qk_scale,
                      HAS_BIAS, WRITE_DB, False, PRECISION)
    if full < Nk:  # the peeled, partial last key tile
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, b_base, db_base, offs_m, full + offs_n, offs_d,
                      mask_m, mask_d, Nk, Nkp, skn, skd, svn, svd, sbm, sbn, sdbm, sdbn, qk_scale,
                      HAS_BIAS, WRITE_DB, True, PRECISION)
    dq = dq * scale
    tl.store(DQ + b * sgb + h * sgh + offs_m[:, None] * sgm + offs_d[None, :] * sgd,
             dq.to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


@functools.partial(_autotuned, maxnreg=BWD_MAXNREG, prune=_prune_bwd)
@triton.jit
def _attn_bwd(Q, K, V, Bias, O, DO, LSE, DQ, DK, DV, DB,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              sbb, sbh, sbm, sbn, sob, soh, som, sod, sdob, sdoh, sdom, sdod,
              sdqb, sdqh, sdqm, sdqd, sdkb, sdkh, sdkn, sdkd, sdbb, sdbh, sdbm, sdbn,
              B, H, Nq, Nk, Nkp, D, qk_scale, scale,
              HAS_BIAS: tl.constexpr, WRITE_DB: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # The whole backward in one launch. Axis 1 holds cdiv(Nk, BLOCK_N) dK/dV programs (one key tile of
    # one (b, h), looping over the queries) followed by cdiv(Nq, BLOCK_M) dQ programs (one query tile,
    # looping over the keys; for a (B, H, N, N) bias they also write dS, each element once). Neither
    # kind reads what the other writes, so they need no ordering: each recomputes P from the forward's
    # LSE and delta = rowsum(dO * O) for its own queries.
    pid_bh = tl.program_id(0)
    pid_t = tl.program_id(1)
    b, h = _program_bh(pid_bh, B, H)
    n_kv = tl.cdiv(Nk, BLOCK_N)
    if pid_t < n_kv:
        # dK and dV are fresh contiguous buffers of one shape: they share the strides sdk*
        _dkdv_program(Q, K, V, Bias, O, DO, LSE, DK, DV, b, h, pid_bh, pid_t,
                      sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sbb, sbh, sbm, sbn,
                      sob, soh, som, sod, sdob, sdoh, sdom, sdod, sdkb, sdkh, sdkn, sdkd,
                      Nq, Nk, Nkp, D, qk_scale, scale, HAS_BIAS, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)
    else:
        _dq_program(Q, K, V, Bias, O, DO, LSE, DQ, DB, b, h, pid_bh, pid_t - n_kv,
                    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sbb, sbh, sbm, sbn,
                    sob, soh, som, sod, sdob, sdoh, sdom, sdod, sdqb, sdqh, sdqm, sdqd, sdbb, sdbh, sdbm, sdbn,
                    Nq, Nk, Nkp, D, qk_scale, scale, HAS_BIAS, WRITE_DB, PRECISION, BLOCK_M, BLOCK_N, BLOCK_D)


@_autotuned
@triton.jit
def _attn_bwd_dbias(Q, K, V, Bias, O, DO, LSE, DB,
                    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                    sbh, sbm, sbn, sob, soh, som, sod, sdob, sdoh, sdom, sdod, sdbg, sdbh, sdbm, sdbn,
                    B, H, Nq, Nk, Nkp, D, R, qk_scale,
                    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    # The gradient of a bias shared by the batch: one program per (batch group, head, query tile, key
    # tile) sums dS = P * (dP - delta) over R consecutive batches in fp32 registers (the bias tile loaded
    # once for all R) and writes its tile once: the final gradient when one group spans the batch, else
    # an fp32 partial per group that the launcher sums. It recomputes S, dP and delta (two small matmuls
    # and a row sum per batch) instead of moving (B, H, N, N) partials through memory.
    G = tl.cdiv(B, R)
    pid_gh = tl.program_id(0)
    g = pid_gh % G  # groups fastest: neighbouring programs read the same bias tile
    h = (pid_gh // G).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    b0 = (g * R).to(tl.int64)
    nb = tl.minimum(R, B - g * R)  # the last group may be shorter
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_n = offs_n < Nk
    mask_d = offs_d < D
    mask_kb = offs_n < Nkp  # padded row width: vectorised bias loads and gradient stores
    bias = _load_tile(Bias + h * sbh, offs_m, offs_n, sbm, sbn, mask_m, mask_kb).to(tl.float32) * 1.4426950408889634
    db = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # per-batch bases advance as 64-bit pointers (b * stride overflows int32 at large B)
    q_base, k_base, v_base = Q + h * sqh + b0 * sqb, K + h * skh + b0 * skb, V + h * svh + b0 * svb
    o_base, do_base = O + h * soh + b0 * sob, DO + h * sdoh + b0 * sdob
    lse_base = LSE + (h * B + b0) * Nq
    for _ in range(0, nb):
        q = _load_tile(q_base, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
        kt = _load_tile(k_base, offs_d, offs_n, skd, skn, mask_d, mask_n)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale + bias
        # rows past Nq: lse = +inf, p = 0; columns past Nk land in the rows' padding, which is dropped
        lse = tl.load(lse_base + offs_m, mask=mask_m, other=float("inf"))
        p = tl.math.exp2(s - lse[:, None])
        do = _load_tile(do_base, offs_m, offs_d, sdom, sdod, mask_m, mask_d)
        o = _load_tile(o_base, offs_m, offs_d, som, sod, mask_m, mask_d)
        vt = _load_tile(v_base, offs_d, offs_n, svd, svn, mask_d, mask_n)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
        db += p * (dp - delta[:, None])
        q_base += sqb
        k_base += skb
        v_base += svb
        o_base += sob
        do_base += sdob
        lse_base += Nq
    tl.store(DB + g.to(tl.int64) * sdbg + h * sdbh + offs_m[:, None] * sdbm + offs_n[None, :] * sdbn,
             db.to(DB.dtype.element_ty), mask=mask_m[:, None] & mask_kb[None, :])


# -- launchers ----------------------------------------------------------------------------

def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _config(d: int) -> tuple[int, int, int, int, int]:
    """The default tiles (BLOCK_M, BLOCK_N, BLOCK_D, warps, pipeline stages): the configuration the
    interpreter runs and ``benchmarks/kernel_codegen.py`` compiles; on a GPU the autotuner picks among
    :func:`_tile_configs`. Above D=32 two stages: in the sm_90 compile three give the backward no more
    blocks per SM (its registers allow two either way) and more instructions per score (24.7 against 21.5
    at D=64 with a bias)."""
    return 64, 64, _block_d(d), 4, 3 if d <= 32 else 2


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    # fp32 on a GPU: TF32 tensor cores (metanet.kernels.attention sends fp32 to the reference when torch
    # disallows TF32); IEEE under the interpreter, where tests compare against an fp32 reference
    return "ieee" if dtype == torch.float32 and device.type != "cuda" else "tf32"


def _bias_4d(bias: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return None
    return bias.unsqueeze(0) if bias.dim() == 3 else bias


def padded_bias(bias4: torch.Tensor) -> torch.Tensor:
    """The bias with rows 16-element aligned (a view of a padded copy when they are not), so the kernels'
    bias loads vectorise. The kernels read each row up to the padded width (:func:`padded_keys`) and mask
    with the true key count, so a view is used in place only when that width lies inside its storage."""
    nk = bias4.shape[-1]
    width = padded_keys(nk)
    if bias4.stride(-1) == 1 and bias4.stride(-2) % BIAS_ROW_ALIGN == 0 and bias4.data_ptr() % 16 == 0:
        last = bias4.storage_offset() + sum((n - 1) * s for n, s in zip(bias4.shape, bias4.stride())) + width - nk
        if (last + 1) * bias4.element_size() <= bias4.untyped_storage().nbytes():
            return bias4
    out = bias4.new_zeros(*bias4.shape[:-1], width)
    out[..., :nk] = bias4
    return out[..., :nk]


def _padded_empty(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # a gradient buffer with rows as wide as the kernels write them (padded_keys), viewed at the true width
    *lead, nk = shape
    return torch.empty(*lead, padded_keys(nk), device=device, dtype=dtype)[..., :nk]


def padded_keys(nk: int) -> int:
    """The padded bias row width: how far the kernels read a bias row (and write a dS row)."""
    return math.ceil(nk / BIAS_ROW_ALIGN) * BIAS_ROW_ALIGN


def dbias_batch_group(B: int, H: int, Nq: int, Nk: int, sms: int = 132) -> int:
    """R, the batches one program of the broadcast-bias gradient sums in registers. One group (R = B, the
    gradient written once in the bias dtype) when the (head, tile) programs alone fill the GPU, which is
    the case at every large shape, so no (B, H, N, N)-sized buffer appears there; otherwise the fewest
    groups that give about ``DBIAS_PROGRAMS_PER_SM`` programs per SM (at N=49, H=16 the tiles alone are
    16 programs), each writing an fp32 partial that the launcher sums. ``DBIAS_BATCH_GROUP`` overrides."""
    if DBIAS_BATCH_GROUP is not None:
        return max(1, min(B, int(DBIAS_BATCH_GROUP)))
    bm, bn = _config(0)[:2]  # the default tiles: the autotuned ones differ by at most 2x either way
    tiles = H * triton.cdiv(Nq, bm) * triton.cdiv(Nk, bn)
    target = DBIAS_PROGRAMS_PER_SM * sms
    if tiles >= target:
        return B
    groups = min(B, triton.cdiv(target, tiles))
    return triton.cdiv(B, groups)


def _bias_strides(bias4: torch.Tensor | None) -> tuple[int, int, int, int]:
    if bias4 is None:
        return 0, 0, 0, 0
    sb = 0 if bias4.shape[0] == 1 else bias4.stride(0)  # broadcast over the batch
    return sb, bias4.stride(1), bias4.stride(2), bias4.stride(3)


def _check(q, k, v) -> None:
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention: the Triton kernel needs v's head dim equal to q's, got Dv={v.shape[-1]} "
                         f"and D={q.shape[-1]} (backend='torch' or 'auto' handles Dv != D)")


def attention_forward(q, k, v, bias, scale):
    """Returns (out, lse); lse is the fp32 log2-sum-exp2 of the scores (in log2 units) per (b*h, query)."""
    _check(q, k, v)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    bias4 = _bias_4d(bias)
    if bias4 is not None:
        bias4 = padded_bias(bias4)
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(B * H, Nq, device=q.device, dtype=torch.float32)
    grid = lambda meta: (B * H, triton.cdiv(Nq, meta["BLOCK_M"]))  # noqa: E731
    _attn_fwd[grid](q, k, v, bias4 if bias4 is not None else q, o, lse,
                    *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias4), *o.stride(),
                    B, H, Nq, Nk, padded_keys(Nk), D, scale * LOG2E,
                    HAS_BIAS=bias4 is not None, PRECISION=_precision(q.dtype, q.device), BLOCK_D=_block_d(D))
    return o, lse


def attention_backward(do, q, k, v, bias, o, lse, scale, bias_grad: bool, batch_group: int | None = None):
    """Returns (dq, dk, dv, dbias); dbias has the bias's own shape (summed over a broadcast batch).
    ``batch_group``: R for a broadcast bias's gradient (default :func:`dbias_batch_group`)."""
    _check(q, k, v)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    Nkp = padded_keys(Nk)
    do = do.contiguous()
    bias4 = _bias_4d(bias)
    if bias4 is not None:
        bias4 = padded_bias(bias4)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    precision = _precision(q.dtype, q.device)
    bstrides = _bias_strides(bias4)
    bias_arg = bias4 if bias4 is not None else q
    per_batch = bias4 is not None and bias4.shape[0] == B and B != 1
    write_db = bias_grad and per_batch
    if write_db:  # every (b, h, m, n) written once, by the dQ program owning its query tile
        db_full = _padded_empty(bias4.shape, bias.dtype, q.device)
        dbs = db_full.stride()
    else:
        db_full, dbs = dq, (0, 0, 0, 0)  # unused placeholder pointer
    # one launch: the dK/dV programs of every key tile, then the dQ programs of every query tile
    _attn_bwd[lambda meta: (B * H, triton.cdiv(Nk, meta["BLOCK_N"]) + triton.cdiv(Nq, meta["BLOCK_M"]))](
        q, k, v, bias_arg, o, do, lse, dq, dk, dv, db_full,
        *q.stride(), *k.stride(), *v.stride(), *bstrides, *o.stride(), *do.stride(), *dq.stride(), *dk.stride(),
        *dbs, B, H, Nq, Nk, Nkp, D, scale * LOG2E, scale,
        HAS_BIAS=bias4 is not None, WRITE_DB=write_db, PRECISION=precision, BLOCK_D=_block_d(D))
    dbias = None
    if bias_grad and bias4 is not None:
        if write_db:
            dbias = db_full.contiguous()
        else:  # shared by the batch: summed over it on chip, R batches per program
            # on CPU (the interpreter) the choice an H100/H200 would make, so tests take a GPU's path
            sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 132
            R = min(B, max(1, batch_group)) if batch_group else dbias_batch_group(B, H, Nq, Nk, sms)
            G = triton.cdiv(B, R)
            # one group: the final gradient in the bias dtype; several: fp32 partials, summed below
            db = _padded_empty((G, H, Nq, Nk), bias.dtype if G == 1 else torch.float32, q.device)
            _attn_bwd_dbias[lambda meta: (G * H, triton.cdiv(Nq, meta["BLOCK_M"]), triton.cdiv(Nk, meta["BLOCK_N"]))](
                q, k, v, bias4, o, do, lse, db,
                *q.stride(), *k.stride(), *v.stride(), *bstrides[1:], *o.stride(), *do.stride(), *db.stride(),
                B, H, Nq, Nk, Nkp, D, R, scale * LOG2E,
                PRECISION=precision, BLOCK_D=_block_d(D))
            dbias = db[0].contiguous() if G == 1 else db.sum(0).to(bias.dtype)
        dbias = dbias.reshape(bias.shape)
    return dq, dk, dv, dbias
