"""Reference attention in plain torch: the ground truth the Triton kernel is tested against.

``q``: (B, H, Nq, D); ``k``, ``v``: (B, H, Nk, D) with Nq and Nk independent (LG-DSM attends from
N/4 queries to N keys). ``bias`` is added to the scaled scores before the softmax and broadcasts
over the batch: (H, Nq, Nk), (1, H, Nq, Nk) or (B, H, Nq, Nk).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def check_shapes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"attention: q, k, v must be 4-D (B, H, N, D), got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if k.shape[:3] != v.shape[:3]:
        raise ValueError(f"attention: k and v must share (B, H, Nk), got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q {tuple(q.shape)} and k {tuple(k.shape)} must share B, H and D")
    if bias is not None:
        B, H, Nq, Nk = (int(n) for n in (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
        ok = tuple(int(n) for n in bias.shape) in {(H, Nq, Nk), (1, H, Nq, Nk), (B, H, Nq, Nk)}
        if not ok:
            raise ValueError(f"attention: bias of shape {tuple(bias.shape)} does not fit (B={B}, H={H}, Nq={Nq}, Nk={Nk}); "
                             "expected (H, Nq, Nk), (1, H, Nq, Nk) or (B, H, Nq, Nk)")


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        bias: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v, through torch's SDPA (the bias is its ``attn_mask``)."""
    check_shapes(q, k, v, bias)
    if bias is not None and bias.dim() == 3:
        bias = bias.unsqueeze(0)
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
