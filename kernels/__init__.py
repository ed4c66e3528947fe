"""Attention kernels of metanet. Importable with torch alone (Triton optional): no NNI, fvcore or
scikit-learn here, so the kernels install on GPU machines with nothing else."""
from metanet.kernels.attention import BACKENDS, HAS_TRITON, attention, attention_backend
from metanet.kernels.attention_ref import attention_reference

__all__ = ["attention", "attention_backend", "attention_reference", "BACKENDS", "HAS_TRITON"]
