"""Attention kernels of metanet. Importable with torch alone: no NNI, fvcore or scikit-learn here."""
from .attention_ref import attention_reference


def attention(q, k, v, bias=None, scale=None):
    """Multi-head attention, the single entry point of every attention operator.

    ``q``: (B, H, Nq, D), ``k``/``v``: (B, H, Nk, D); ``bias`` is additive, applied after scaling,
    broadcast over the batch; ``scale`` defaults to 1/sqrt(D) as in SDPA.
    """
    return attention_reference(q, k, v, bias=bias, scale=scale)


__all__ = ["attention", "attention_reference"]
