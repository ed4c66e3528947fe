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
  log2 units); the last, partial key tile is peeled (``EVEN_N`` steady state unmasked).
* **Bias rows padded to 16 elements** by the launcher (the kernel masks with the true Nk): unaligned rows
  at N=49/196 compile to scalar, unpipelined loads on Hopper.
* **Raster**: program ``pid = h * B + b``, batch fastest, so the programs reading one head's (H, N, N) bias
  tile run together and the tile comes from L2.
* **Backward**: the dQ program (one query tile of one (b, h)) computes ``delta = rowsum(dO * O)`` itself and
  writes it for the dK/dV program; a (B, H, N, N) bias gets dS written by the dQ program (each element once).
  A bias broadcast over the batch gets its gradient from its own program per (head, query tile, key tile),
  which loops over the batch and sums dS in fp32 registers: no (B, H, N, N) buffer, the gradient written
  once. Transposed operands are loaded transposed rather than transposing a ``tl.dot`` result, which some
  Triton versions miscompile on Hopper.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
BIAS_ROW_ALIGN = 16  # elements
INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _tile_configs() -> list:
    """Tiles, warps and pipeline stages the autotuner tries (per Nq, Nk, D, bias and dtype). Under Triton's
    interpreter one config: it runs programs one by one and cannot time anything."""
    if INTERPRETING:
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=st)
            for bm, bn, w, st in ((64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3), (128, 64, 8, 2),
                                  (64, 32, 4, 3), (64, 32, 4, 2), (32, 64, 4, 2))]


def _prune(configs, named_args, **kwargs):
    # no tile much larger than the sequence (N=49 needs no 128-row tiles); wide heads skip 3-stage pipelines
    # whose shared memory leaves one block per SM (sm_90 compile: 115-120 KB at D=64)
    nq, nk, d = named_args["Nq"], named_args["Nk"], named_args["D"]
    cap_m, cap_n = max(32, triton.next_power_of_2(nq)), max(32, triton.next_power_of_2(nk))
    kept = [c for c in configs if c.kwargs["BLOCK_M"] <= cap_m and c.kwargs["BLOCK_N"] <= cap_n
            and not (d > 32 and c.num_stages > 2 and c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] > 64 * 64)]
    return kept or configs[:1]


def _autotuned(fn):
    return triton.autotune(configs=_tile_configs(), key=["Nq", "Nk", "D", "HAS_BIAS"],
                           prune_configs_by={"early_config_prune": _prune})(fn)


@triton.jit
def _load_tile(base, rows, cols, stride_r, stride_c, mask_r, mask_c):
    # The (rows x cols) tile at base, zero outside the masks; a transposed tile is the same call with
    # rows and columns swapped. Triton inlines jit helpers: this costs nothing over writing it out.
    return tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c,
                   mask=mask_r[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _program_bh(pid, B, H):
    # pid = h * B + b: the batch varies fastest, so neighbouring programs share a head (and its bias)
    b = pid % B
    h = pid // B
    return b.to(tl.int64), h.to(tl.int64)


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, k_base, v_base, b_base, offs_m, n, offs_d, mask_m, mask_d, Nk,
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
        if MASKED:
            bias = _load_tile(b_base, offs_m, n, sbm, sbn, mask_m, mask_n)
        else:
            bias = tl.load(b_base + offs_m[:, None] * sbm + n[None, :] * sbn, mask=mask_m[:, None], other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
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


@_autotuned
@triton.jit
def _attn_fwd(Q, K, V, Bias, O, LSE,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              sbb, sbh, sbm, sbn, sob, soh, som, sod,
              B, H, Nq, Nk, D, qk_scale,
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
                                  mask_m, mask_d, Nk, skn, skd, svn, svd, sbm, sbn, qk_scale,
                                  HAS_BIAS, False, PRECISION)
    if full < Nk:  # the peeled, partial last tile
        acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, k_base, v_base, b_base, offs_m, full + offs_n, offs_d,
                                  mask_m, mask_d, Nk, skn, skd, svn, svd, sbm, sbn, qk_scale,
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
def _dq_tile(dq, q, do, lse, delta, k_base, v_base, b_base, db_base, offs_m, n, offs_d, mask_m, mask_d, Nk,
             skn, skd, svn, svd, sbm, sbn, sdbm, sdbn, qk_scale,
             HAS_BIAS: tl.constexpr, WRITE_DB: tl.constexpr, MASKED: tl.constexpr, PRECISION: tl.constexpr):
    # rows past Nq carry lse = +inf, so only keys past Nk (the peeled tile) need masking
    mask_n = n < Nk
    if MASKED:
        kt = _load_tile(k_base, offs_d, n, skd, skn, mask_d, mask_n)
        vt = _load_tile(v_base, offs_d, n, svd, svn, mask_d, mask_n)
        k = _load_tile(k_base, n, offs_d, skn, skd, mask_n, mask_d)
    else:
        kt = tl.load(k_base + offs_d[:, None] * skd + n[None, :] * skn, mask=mask_d[:, None], other=0.0)
        vt = tl.load(v_base + offs_d[:, None] * svd + n[None, :] * svn, mask=mask_d[:, None], other=0.0)
        k = tl.load(k_base + n[:, None] * skn + offs_d[None, :] * skd, mask=mask_d[None, :], other=0.0)
    s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
    if HAS_BIAS:
        if MASKED:
            bias = _load_tile(b_base, offs_m, n, sbm, sbn, mask_m, mask_n)
        else:
            bias = tl.load(b_base + offs_m[:, None] * sbm + n[None, :] * sbn, mask=mask_m[:, None], other=0.0)
        s += bias.to(tl.float32) * 1.4426950408889634
    p = tl.math.exp2(s - lse[:, None])  # lse = +inf on masked or absent rows: p = 0
    if MASKED:
        p = tl.where(mask_n[None, :], p, 0.0)
    dp = tl.dot(do, vt, input_precision=PRECISION)
    ds = p * (dp - delta[:, None])
    if WRITE_DB:
        tl.store(db_base + offs_m[:, None] * sdbm + n[None, :] * sdbn, ds.to(db_base.dtype.element_ty),
                 mask=mask_m[:, None] & mask_n[None, :])
    return dq + tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)


@_autotuned
@triton.jit
def _attn_bwd_dq(Q, K, V, Bias, O, DO, LSE, Delta, DQ, DB,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                 sbb, sbh, sbm, sbn, sob, soh, som, sod, sdob, sdoh, sdom, sdod, sgb, sgh, sgm, sgd,
                 sdbb, sdbh, sdbm, sdbn,
                 B, H, Nq, Nk, D, qk_scale, scale,
                 HAS_BIAS: tl.constexpr, WRITE_DB: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program owns a tile of queries of one (b, h): delta for its rows (written for the dK/dV and
    # bias programs), dQ, and, for a (B, H, N, N) bias, dS of exactly its rows.
    pid_bh = tl.program_id(0)
    pid_m = tl.program_id(1)
    b, h = _program_bh(pid_bh, B, H)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_d = offs_d < D

    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
    do = _load_tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdom, sdod, mask_m, mask_d)
    o = _load_tile(O + b * sob + h * soh, offs_m, offs_d, som, sod, mask_m, mask_d)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)
    row = pid_bh.to(tl.int64) * Nq + offs_m
    tl.store(Delta + row, delta, mask=mask_m)
    lse = tl.load(LSE + row, mask=mask_m, other=float("inf"))
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    k_base, v_base, b_base = K + b * skb + h * skh, V + b * svb + h * svh, Bias + b * sbb + h * sbh
    db_base = DB + b * sdbb + h * sdbh
    full = (Nk // BLOCK_N) * BLOCK_N
    for start_n in range(0, full, BLOCK_N):  # steady state: no key mask
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, b_base, db_base, offs_m, start_n + offs_n, offs_d,
                      mask_m, mask_d, Nk, skn, skd, svn, svd, sbm, sbn, sdbm, sdbn, qk_scale,
                      HAS_BIAS, WRITE_DB, False, PRECISION)
    if full < Nk:  # the peeled, partial last tile
        dq = _dq_tile(dq, q, do, lse, delta, k_base, v_base, b_base, db_base, offs_m, full + offs_n, offs_d,
                      mask_m, mask_d, Nk, skn, skd, svn, svd, sbm, sbn, sdbm, sdbn, qk_scale,
                      HAS_BIAS, WRITE_DB, True, PRECISION)
    dq = dq * scale
    tl.store(DQ + b * sgb + h * sgh + offs_m[:, None] * sgm + offs_d[None, :] * sgd,
             dq.to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


@_autotuned
@triton.jit
def _attn_bwd_dkdv(Q, K, V, Bias, DO, LSE, Delta, DK, DV,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   sbb, sbh, sbm, sbn, sdob, sdoh, sdom, sdod, sgb, sgh, sgn, sgd,
                   B, H, Nq, Nk, D, qk_scale, scale,
                   HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program owns a tile of keys; scores are formed transposed (keys x queries) from operands
    # loaded transposed, so no tl.trans of a dot result is needed.
    pid_bh = tl.program_id(0)
    pid_n = tl.program_id(1)
    b, h = _program_bh(pid_bh, B, H)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < Nk
    mask_d = offs_d < D

    k = _load_tile(K + b * skb + h * skh, offs_n, offs_d, skn, skd, mask_n, mask_d)
    v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svn, svd, mask_n, mask_d)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    rows = pid_bh.to(tl.int64) * Nq
    for start_m in range(0, Nq, BLOCK_M):
        m = start_m + offs_m
        mask_m = m < Nq
        qt = _load_tile(Q + b * sqb + h * sqh, offs_d, m, sqd, sqm, mask_d, mask_m)
        st = tl.dot(k, qt, input_precision=PRECISION) * qk_scale
        if HAS_BIAS:
            st += _load_tile(Bias + b * sbb + h * sbh, offs_n, m, sbn, sbm, mask_n, mask_m).to(tl.float32) \
                * 1.4426950408889634
        lse = tl.load(LSE + rows + m, mask=mask_m, other=float("inf"))
        pt = tl.math.exp2(st - lse[None, :])
        pt = tl.where(mask_m[None, :] & mask_n[:, None], pt, 0.0)
        do = _load_tile(DO + b * sdob + h * sdoh, m, offs_d, sdom, sdod, mask_m, mask_d)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dot_t = _load_tile(DO + b * sdob + h * sdoh, offs_d, m, sdod, sdom, mask_d, mask_m)
        dpt = tl.dot(v, dot_t, input_precision=PRECISION)
        delta = tl.load(Delta + rows + m, mask=mask_m, other=0.0)
        dst = pt * (dpt - delta[None, :])
        q = _load_tile(Q + b * sqb + h * sqh, m, offs_d, sqm, sqd, mask_m, mask_d)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * scale
    # dK and dV are fresh contiguous buffers of one shape: they share the strides sg*.
    out = b * sgb + h * sgh + offs_n[:, None] * sgn + offs_d[None, :] * sgd
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@_autotuned
@triton.jit
def _attn_bwd_dbias(Q, K, V, Bias, DO, LSE, Delta, DB,
                    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                    sbh, sbm, sbn, sdob, sdoh, sdom, sdod, sdbh, sdbm, sdbn,
                    B, H, Nq, Nk, D, qk_scale,
                    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr):
    # The gradient of a bias shared by the batch: one program per (head, query tile, key tile) sums
    # dS = P * (dP - delta) over the batch in fp32 registers and writes its tile once. It recomputes
    # S and dP (two small matmuls per batch) instead of moving (B, H, N, N) partials through memory.
    h = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1)
    pid_n = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_n = offs_n < Nk
    mask_d = offs_d < D
    mask_mn = mask_m[:, None] & mask_n[None, :]
    bias = _load_tile(Bias + h * sbh, offs_m, offs_n, sbm, sbn, mask_m, mask_n).to(tl.float32) * 1.4426950408889634
    db = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # per-batch bases advance as 64-bit pointers (b * stride overflows int32 at large B)
    q_base, k_base, v_base, do_base = Q + h * sqh, K + h * skh, V + h * svh, DO + h * sdoh
    lse_base, delta_base = LSE + h * B * Nq, Delta + h * B * Nq
    for _ in range(0, B):
        q = _load_tile(q_base, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
        kt = _load_tile(k_base, offs_d, offs_n, skd, skn, mask_d, mask_n)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale + bias
        lse = tl.load(lse_base + offs_m, mask=mask_m, other=float("inf"))
        p = tl.where(mask_mn, tl.math.exp2(s - lse[:, None]), 0.0)
        do = _load_tile(do_base, offs_m, offs_d, sdom, sdod, mask_m, mask_d)
        vt = _load_tile(v_base, offs_d, offs_n, svd, svn, mask_d, mask_n)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        delta = tl.load(delta_base + offs_m, mask=mask_m, other=0.0)
        db += p * (dp - delta[:, None])
        q_base += sqb
        k_base += skb
        v_base += svb
        do_base += sdob
        lse_base += Nq
        delta_base += Nq
    tl.store(DB + h * sdbh + offs_m[:, None] * sdbm + offs_n[None, :] * sdbn, db.to(DB.dtype.element_ty),
             mask=mask_mn)


# -- launchers ----------------------------------------------------------------------------

def _block_d(d: int) -> int:
    return max(16, triton.next_power_of_2(d))


def _config(d: int) -> tuple[int, int, int, int, int]:
    """The default tiles (BLOCK_M, BLOCK_N, BLOCK_D, warps, pipeline stages): the configuration the
    interpreter runs and ``benchmarks/kernel_codegen.py`` compiles; on a GPU the autotuner picks among
    :func:`_tile_configs`. Above D=32 two stages: with three, the backward's shared memory (115-120 KB at
    D=64 on sm_90) leaves room for one block per SM."""
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
    bias loads vectorise; the kernels mask with the true key count."""
    nk = bias4.shape[-1]
    if bias4.stride(-1) == 1 and bias4.stride(-2) % BIAS_ROW_ALIGN == 0 and bias4.data_ptr() % 16 == 0:
        return bias4
    width = math.ceil(nk / BIAS_ROW_ALIGN) * BIAS_ROW_ALIGN
    out = bias4.new_zeros(*bias4.shape[:-1], width)
    out[..., :nk] = bias4
    return out[..., :nk]


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
                    B, H, Nq, Nk, D, scale * LOG2E,
                    HAS_BIAS=bias4 is not None, PRECISION=_precision(q.dtype, q.device), BLOCK_D=_block_d(D))
    return o, lse


def attention_backward(do, q, k, v, bias, o, lse, scale, bias_grad: bool):
    """Returns (dq, dk, dv, dbias); dbias has the bias's own shape (summed over a broadcast batch)."""
    _check(q, k, v)
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    do = do.contiguous()
    bias4 = _bias_4d(bias)
    if bias4 is not None:
        bias4 = padded_bias(bias4)
    delta = torch.empty(B * H, Nq, device=q.device, dtype=torch.float32)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    precision = _precision(q.dtype, q.device)
    common = dict(HAS_BIAS=bias4 is not None, PRECISION=precision, BLOCK_D=_block_d(D))
    bstrides = _bias_strides(bias4)
    bias_arg = bias4 if bias4 is not None else q
    per_batch = bias4 is not None and bias4.shape[0] == B and B != 1
    write_db = bias_grad and per_batch
    if write_db:  # every (b, h, m, n) written once, by the program owning its query tile
        db_full = padded_bias(torch.empty(bias4.shape, device=q.device, dtype=bias.dtype))
        dbs = db_full.stride()
    else:
        db_full, dbs = dq, (0, 0, 0, 0)  # unused placeholder pointer
    # dQ first: it computes delta for the other two
    _attn_bwd_dq[lambda meta: (B * H, triton.cdiv(Nq, meta["BLOCK_M"]))](
        q, k, v, bias_arg, o, do, lse, delta, dq, db_full,
        *q.stride(), *k.stride(), *v.stride(), *bstrides, *o.stride(), *do.stride(), *dq.stride(), *dbs,
        B, H, Nq, Nk, D, scale * LOG2E, scale, WRITE_DB=write_db, **common)
    _attn_bwd_dkdv[lambda meta: (B * H, triton.cdiv(Nk, meta["BLOCK_N"]))](
        q, k, v, bias_arg, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *bstrides, *do.stride(), *dk.stride(),
        B, H, Nq, Nk, D, scale * LOG2E, scale, **common)
    dbias = None
    if bias_grad and bias4 is not None:
        if write_db:
            dbias = db_full.contiguous()
        else:  # shared by the batch: summed over it on chip
            db = padded_bias(torch.empty(1, H, Nq, Nk, device=q.device, dtype=bias.dtype))
            _attn_bwd_dbias[lambda meta: (H, triton.cdiv(Nq, meta["BLOCK_M"]), triton.cdiv(Nk, meta["BLOCK_N"]))](
                q, k, v, bias4, do, lse, delta, db,
                *q.stride(), *k.stride(), *v.stride(), *bstrides[1:], *do.stride(), *db.stride()[1:],
                B, H, Nq, Nk, D, scale * LOG2E,
                PRECISION=precision, BLOCK_D=_block_d(D))
            dbias = db.contiguous()
        dbias = dbias.reshape(bias.shape)
    return dq, dk, dv, dbias
