"""A bundle's fingerprint: how many images it holds and a hash of what they are and where each one went.

Image sources contribute the fingerprint of their listing (paths, classes, sizes and modification times,
or a dataset's own fingerprint) and the indices each split part takes; tensors (the digits) their bytes.
The same data, split the same way, gives the same fingerprint; a file added, changed or moved between
train, validation and test changes it. A trial stores it, and a re-run compares it first.
"""
from __future__ import annotations

import hashlib

import torch
from torch.utils.data import Subset, TensorDataset

from metanet.data.images import ImageViews


def _part(h, ds) -> int:
    """Feed ``ds`` to the hash; returns its number of images."""
    if isinstance(ds, ImageViews):
        h.update(f"views|{ds.source.fingerprint}|{ds.train}|".encode())
        h.update(torch.as_tensor(ds.indices, dtype=torch.int64).numpy().tobytes())
        return len(ds)
    if isinstance(ds, Subset):
        h.update(b"subset|")
        h.update(torch.as_tensor(list(ds.indices), dtype=torch.int64).numpy().tobytes())
        _part(h, ds.dataset)
        return len(ds)
    if isinstance(ds, TensorDataset):
        for t in ds.tensors:
            h.update(f"tensor|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return len(ds)
    h.update(f"{type(ds).__qualname__}|{len(ds)}|".encode())  # a plugin's dataset: its type and size only
    return len(ds)


def bundle_fingerprint(bundle) -> dict:
    """``{"images": N, "listing": hash}`` of every split part of ``bundle`` (memoised on the bundle)."""
    cached = getattr(bundle, "_fingerprint", None)
    if cached is not None:
        return cached
    h = hashlib.sha256(f"{bundle.name}|{bundle.resolution}|".encode())
    images = 0
    for name, split in sorted(bundle.splits().items()):
        h.update(f"split|{name}|{split.classes}|".encode())
        for part, ds in split.parts().items():
            h.update(f"part|{part}|".encode())
            images += _part(h, ds)
        for fraction, idx in sorted(split.subsets.items()):
            h.update(f"subset|{fraction}|{idx}|".encode())
    out = {"images": images, "listing": h.hexdigest()[:20]}
    bundle._fingerprint = out
    return out
