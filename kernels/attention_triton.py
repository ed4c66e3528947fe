"""Flash-style attention in Triton, forward and backward, with a fused additive bias.

softmax(q k^T * scale + bias) v for q (B, H, Nq, D), k/v (B, H, Nk, D), any Nq/Nk (masked tiles), head
dims padded to a power of two (>= 16) and masked, fp16/bf16/fp32 inputs with fp32 accumulation (IEEE
precision for fp32 inputs, so tests can be tight). The bias broadcasts over the batch through a zero
stride: (H, Nq, Nk), (1, H, Nq, Nk) or (B, H, Nq, Nk).

Backward, without atomics: delta = rowsum(dO * O) in torch; one kernel owns a key tile and loops over
queries for dK/dV; another owns a query tile and loops over keys for dQ, and writes dS (the bias
gradient) for its tile only once. A broadcast bias gets per-batch partials reduced by a torch sum.
Transposed operands are loaded transposed rather than transposing a ``tl.dot`` result, which some
Triton versions miscompile on Hopper. Nothing here needs a Triton newer than 3.4.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _load_tile(base, rows, cols, stride_r, stride_c, mask_r, mask_c):
    # The (rows x cols) tile at base, zero outside the masks; a transposed tile is the same call with
    # rows and columns swapped. Triton inlines jit helpers: this costs nothing over writing it out.
    return tl.load(base + rows[:, None] * stride_r + cols[None, :] * stride_c,
                   mask=mask_r[:, None] & mask_c[None, :], other=0.0)


@triton.jit
def _attn_fwd(Q, K, V, Bias, O, LSE,
              sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
              sbb, sbh, sbm, sbn, sob, soh, som, sod,
              H, Nq, Nk, D, scale,
              HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_d = offs_d < D

    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        n = start_n + offs_n
        mask_n = n < Nk
        kt = _load_tile(K + b * skb + h * skh, offs_d, n, skd, skn, mask_d, mask_n)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        if HAS_BIAS:
            s += _load_tile(Bias + b * sbb + h * sbh, offs_m, n, sbm, sbn, mask_m, mask_n).to(tl.float32)
        s = tl.where(mask_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp(m_i - m_new)
        p = tl.exp(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(V + b * svb + h * svh, n, offs_d, svn, svd, mask_n, mask_d)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + b * sob + h * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
             acc.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(LSE + pid_bh * Nq + offs_m, m_i + tl.log(l_i), mask=mask_m)


@triton.jit
def _attn_bwd_dkdv(Q, K, V, Bias, DO, LSE, Delta, DK, DV,
                   sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                   sbb, sbh, sbm, sbn, sdob, sdoh, sdom, sdod, sgb, sgh, sgn, sgd,
                   H, Nq, Nk, D, scale,
                   HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program owns a tile of keys; scores are formed transposed (keys x queries) from operands
    # loaded transposed, so no tl.trans of a dot result is needed.
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_n = offs_n < Nk
    mask_d = offs_d < D

    k = _load_tile(K + b * skb + h * skh, offs_n, offs_d, skn, skd, mask_n, mask_d)
    v = _load_tile(V + b * svb + h * svh, offs_n, offs_d, svn, svd, mask_n, mask_d)
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for start_m in range(0, Nq, BLOCK_M):
        m = start_m + offs_m
        mask_m = m < Nq
        qt = _load_tile(Q + b * sqb + h * sqh, offs_d, m, sqd, sqm, mask_d, mask_m)
        st = tl.dot(k, qt, input_precision=PRECISION) * scale
        if HAS_BIAS:
            st += _load_tile(Bias + b * sbb + h * sbh, offs_n, m, sbn, sbm, mask_n, mask_m).to(tl.float32)
        lse = tl.load(LSE + pid_bh * Nq + m, mask=mask_m, other=0.0)
        pt = tl.exp(st - lse[None, :])
        pt = tl.where(mask_m[None, :] & mask_n[:, None], pt, 0.0)
        do = _load_tile(DO + b * sdob + h * sdoh, m, offs_d, sdom, sdod, mask_m, mask_d)
        dv += tl.dot(pt.to(do.dtype), do, input_precision=PRECISION)
        dot_t = _load_tile(DO + b * sdob + h * sdoh, offs_d, m, sdod, sdom, mask_d, mask_m)
        dpt = tl.dot(v, dot_t, input_precision=PRECISION)
        delta = tl.load(Delta + pid_bh * Nq + m, mask=mask_m, other=0.0)
        dst = pt * (dpt - delta[None, :])
        q = _load_tile(Q + b * sqb + h * sqh, m, offs_d, sqm, sqd, mask_m, mask_d)
        dk += tl.dot(dst.to(q.dtype), q, input_precision=PRECISION)
    dk = dk * scale
    # dK and dV are fresh contiguous buffers of one shape: they share the strides sg*.
    out = b * sgb + h * sgh + offs_n[:, None] * sgn + offs_d[None, :] * sgd
    tl.store(DK + out, dk.to(DK.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=mask_n[:, None] & mask_d[None, :])


@triton.jit
def _attn_bwd_dq(Q, K, V, Bias, DO, LSE, Delta, DQ, DB,
                 sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                 sbb, sbh, sbm, sbn, sdob, sdoh, sdom, sdod, sgb, sgh, sgm, sgd, sdbb, sdbh, sdbm, sdbn,
                 H, Nq, Nk, D, scale,
                 HAS_BIAS: tl.constexpr, WRITE_DB: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    # One program owns a tile of queries: dQ, and dS for exactly its (b, h, rows), so the bias
    # gradient is written once per element, never accumulated across programs.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < Nq
    mask_d = offs_d < D

    q = _load_tile(Q + b * sqb + h * sqh, offs_m, offs_d, sqm, sqd, mask_m, mask_d)
    do = _load_tile(DO + b * sdob + h * sdoh, offs_m, offs_d, sdom, sdod, mask_m, mask_d)
    lse = tl.load(LSE + pid_bh * Nq + offs_m, mask=mask_m, other=0.0)
    delta = tl.load(Delta + pid_bh * Nq + offs_m, mask=mask_m, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for start_n in range(0, Nk, BLOCK_N):
        n = start_n + offs_n
        mask_n = n < Nk
        mask_mn = mask_m[:, None] & mask_n[None, :]
        kt = _load_tile(K + b * skb + h * skh, offs_d, n, skd, skn, mask_d, mask_n)
        s = tl.dot(q, kt, input_precision=PRECISION) * scale
        if HAS_BIAS:
            s += _load_tile(Bias + b * sbb + h * sbh, offs_m, n, sbm, sbn, mask_m, mask_n).to(tl.float32)
        p = tl.exp(s - lse[:, None])
        p = tl.where(mask_mn, p, 0.0)
        vt = _load_tile(V + b * svb + h * svh, offs_d, n, svd, svn, mask_d, mask_n)
        dp = tl.dot(do, vt, input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        if WRITE_DB:
            tl.store(DB + b * sdbb + h * sdbh + offs_m[:, None] * sdbm + n[None, :] * sdbn,
                     ds.to(DB.dtype.element_ty), mask=mask_mn)
        k = _load_tile(K + b * skb + h * skh, n, offs_d, skn, skd, mask_n, mask_d)
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    dq = dq * scale
    tl.store(DQ + b * sgb + h * sgh + offs_m[:, None] * sgm + offs_d[None, :] * sgd,
             dq.to(DQ.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


# -- launchers ----------------------------------------------------------------------------

def _config(d: int) -> tuple[int, int, int, int]:
    block_d = max(16, triton.next_power_of_2(d))
    if block_d <= 64:
        return 64, 64, block_d, 4
    return 64, 32, block_d, 4


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _bias_4d(bias: torch.Tensor | None) -> torch.Tensor | None:
    if bias is None:
        return None
    return bias.unsqueeze(0) if bias.dim() == 3 else bias


def _bias_strides(bias4: torch.Tensor | None) -> tuple[int, int, int, int]:
    if bias4 is None:
        return 0, 0, 0, 0
    sb = 0 if bias4.shape[0] == 1 else bias4.stride(0)  # broadcast over the batch
    return sb, bias4.stride(1), bias4.stride(2), bias4.stride(3)


def attention_forward(q, k, v, bias, scale):
    """Returns (out, lse); lse is the fp32 log-sum-exp per (b*h, query) for the backward."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    bias4 = _bias_4d(bias)
    o = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    lse = torch.empty(B * H, Nq, device=q.device, dtype=torch.float32)
    bm, bn, bd, warps = _config(D)
    grid = (triton.cdiv(Nq, bm), B * H)
    _attn_fwd[grid](q, k, v, bias4 if bias4 is not None else q, o, lse,
                    *q.stride(), *k.stride(), *v.stride(), *_bias_strides(bias4), *o.stride(),
                    H, Nq, Nk, D, scale,
                    HAS_BIAS=bias4 is not None, PRECISION=_precision(q.dtype),
                    BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, num_warps=warps)
    return o, lse


def attention_backward(do, q, k, v, bias, o, lse, scale, bias_grad: bool):
    """Returns (dq, dk, dv, dbias); dbias has the bias's own shape (summed over a broadcast batch)."""
    B, H, Nq, D = q.shape
    Nk = k.shape[2]
    do = do.contiguous()
    bias4 = _bias_4d(bias)
    delta = (do.float() * o.float()).sum(-1).reshape(B * H, Nq)
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    bm, bn, bd, warps = _config(D)
    common = dict(HAS_BIAS=bias4 is not None, PRECISION=_precision(q.dtype), BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd,
                  num_warps=warps)
    bstrides = _bias_strides(bias4)
    bias_arg = bias4 if bias4 is not None else q
    _attn_bwd_dkdv[(triton.cdiv(Nk, bn), B * H)](
        q, k, v, bias_arg, do, lse, delta, dk, dv,
        *q.stride(), *k.stride(), *v.stride(), *bstrides, *do.stride(), *dk.stride(),
        H, Nq, Nk, D, scale, **common)
    dbias = None
    write_db = bias4 is not None and bias_grad
    if write_db:
        # Every (b, h, m, n) is written by exactly one program; a broadcast bias sums the batch after.
        db_full = torch.empty(B, H, Nq, Nk, device=q.device,
                              dtype=bias.dtype if bias4.shape[0] == B else torch.float32)
    else:
        db_full = dq  # unused placeholder pointer
    dbs = db_full.stride() if write_db else (0, 0, 0, 0)
    _attn_bwd_dq[(triton.cdiv(Nq, bm), B * H)](
        q, k, v, bias_arg, do, lse, delta, dq, db_full,
        *q.stride(), *k.stride(), *v.stride(), *bstrides, *do.stride(), *dq.stride(), *dbs,
        H, Nq, Nk, D, scale, WRITE_DB=write_db, **common)
    if write_db:
        if bias4.shape[0] == B and B != 1:
            dbias = db_full
        else:
            dbias = db_full.sum(0, keepdim=True).to(bias.dtype)
        dbias = dbias.reshape(bias.shape)
    return dq, dk, dv, dbias

