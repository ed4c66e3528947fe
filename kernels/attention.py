"""The functional attention API and its registration as a ``torch.library`` custom op.

``metanet::attention`` (forward, returns out and the log-sum-exp) and ``metanet::attention_backward``
are custom ops with fake (meta) implementations, so ``torch.compile`` traces them, and autograd is
registered on the forward; FLOP formulas are registered with ``torch.utils.flop_counter`` (forward and
backward separately) and fvcore counts ``metanet::attention`` through the handle in
``metanet.search_spaces.counter``. Triton is optional: without it every call takes the torch reference.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Iterator, Optional

import torch

from metanet.kernels.attention_ref import attention_reference, check_shapes

try:
    from metanet.kernels.attention_triton import attention_backward as _triton_backward
    from metanet.kernels.attention_triton import attention_forward as _triton_forward
    HAS_TRITON = True
except Exception:  # no Triton, or a Triton that cannot load here: the reference serves every call
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch")
MAX_TRITON_HEAD_DIM = 128  # XCA's "head dim" is the token count: beyond this the reference is used
_default_backend = ["auto"]


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """Set the backend of every :func:`attention` call that does not name one, e.g. for a whole model."""
    if name not in BACKENDS:
        raise ValueError(f"attention: unknown backend {name!r} (expected one of {', '.join(BACKENDS)})")
    previous = _default_backend[0]
    _default_backend[0] = name
    try:
        yield
    finally:
        _default_backend[0] = previous


@torch.library.custom_op("metanet::attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor],
                  scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _triton_forward(q, k, v, bias, scale)


@_attention_op.register_fake
def _attention_fake(q, k, v, bias, scale):
    B, H, Nq, _ = q.shape
    return torch.empty_like(q), q.new_empty((B * H, Nq), dtype=torch.float32)


@torch.library.custom_op("metanet::attention_backward", mutates_args=())
def _attention_backward_op(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           bias: Optional[torch.Tensor], o: torch.Tensor, lse: torch.Tensor, scale: float,
                           bias_grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv, db = _triton_backward(do, q, k, v, bias, o, lse, scale, bias_grad)
    if db is None:  # custom ops return tensors only: an empty one stands for "no bias gradient"
        db = q.new_empty((0,))
    return dq, dk, dv, db


@_attention_backward_op.register_fake
def _attention_backward_fake(do, q, k, v, bias, o, lse, scale, bias_grad):
    db = torch.empty_like(bias) if (bias is not None and bias_grad) else q.new_empty((0,))
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), db


def _setup_context(ctx, inputs, output):
    q, k, v, bias, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, bias, o, lse)
    ctx.scale = scale


def _backward(ctx, do, _dlse):
    q, k, v, bias, o, lse = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[3]
    dq, dk, dv, db = torch.ops.metanet.attention_backward(do, q, k, v, bias, o, lse, ctx.scale, bias_grad)
    return dq, dk, dv, (db if bias_grad else None), None


_attention_op.register_autograd(_backward, setup_context=_setup_context)


def _register_flop_formulas() -> None:
    try:
        from torch.utils.flop_counter import register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count
    except ImportError:  # older torch: fvcore's handle still counts the forward
        return

    @register_flop_formula(torch.ops.metanet.attention)
    def _fwd_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(q_shape, k_shape, v_shape)

    @register_flop_formula(torch.ops.metanet.attention_backward)
    def _bwd_flops(do_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_backward_flop_count(do_shape, q_shape, k_shape, v_shape)


_register_flop_formulas()


def _exporting() -> bool:
    # ONNX and TorchScript cannot carry a Triton kernel: export the reference instead.
    onnx_export = getattr(torch.onnx, "is_in_onnx_export", lambda: False)()
    return torch.jit.is_tracing() or torch.jit.is_scripting() or onnx_export


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _tf32_allowed(q: torch.Tensor) -> bool:
    # fp32 CUDA inputs run the kernel's dots in TF32: only when torch allows TF32 matmuls, else the reference
    return q.dtype != torch.float32 or torch.backends.cuda.matmul.allow_tf32


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: Optional[torch.Tensor] = None,
              scale: Optional[float] = None, backend: Optional[str] = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v: the single entry point of every attention operator.

    q: (B, H, Nq, D); k, v: (B, H, Nk, D), Nq and Nk independent. ``bias`` is additive, applied after
    scaling, broadcast over the batch: (H, Nq, Nk), (1, H, Nq, Nk) or (B, H, Nq, Nk); it receives a
    gradient in its own shape. ``scale`` defaults to 1/sqrt(D) as in SDPA. ``backend``: ``"triton"``
    forces the fused kernel (on CPU tensors only under ``TRITON_INTERPRET=1``), ``"torch"`` the
    reference, ``"auto"`` the kernel for CUDA tensors when Triton is importable, D <= 128, v's head dim
    equals q's and (for fp32) torch allows TF32 matmuls. ``None``
    takes the backend set by :func:`attention_backend` ("auto" by default). While a model is traced
    for ONNX or TorchScript every backend takes the reference.
    """
    backend = backend or _default_backend[0]
    if backend not in BACKENDS:
        raise ValueError(f"attention: unknown backend {backend!r} (expected one of {', '.join(BACKENDS)})")
    check_shapes(q, k, v, bias)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if _exporting() or backend == "torch":
        return attention_reference(q, k, v, bias=bias, scale=scale)
    if backend == "auto" and not (HAS_TRITON and q.is_cuda and q.shape[-1] <= MAX_TRITON_HEAD_DIM
                                  and v.shape[-1] == q.shape[-1] and _tf32_allowed(q)):
        return attention_reference(q, k, v, bias=bias, scale=scale)
    if v.shape[-1] != q.shape[-1]:
        raise ValueError(f"attention: backend='triton' needs v's head dim equal to q's, got Dv={v.shape[-1]} "
                         f"and D={q.shape[-1]} (backend='auto' or 'torch' handles Dv != D)")
    if not HAS_TRITON:
        raise RuntimeError("attention: backend='triton' needs Triton, which is not importable here")
    if not q.is_cuda and not _interpreting():
        raise RuntimeError("attention: backend='triton' on CPU tensors needs TRITON_INTERPRET=1, "
                           "set before Triton is imported")
    if q.shape[-1] > 4 * MAX_TRITON_HEAD_DIM:
        raise ValueError(f"attention: head dim {q.shape[-1]} is too large for the Triton kernel "
                         f"(at most {4 * MAX_TRITON_HEAD_DIM}); use backend='torch' or 'auto'")
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(f"attention: unsupported dtype {q.dtype} for the Triton kernel")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"attention: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    out, _ = torch.ops.metanet.attention(q, k, v, bias, float(scale))
    return out
