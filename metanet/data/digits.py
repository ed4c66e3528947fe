"""The embedded demo data: scikit-learn's handwritten digits (shipped with scikit-learn, no download).

Upscaled to the proxy resolution. Upstream sees digits 0-6 under three label sources: ``digit``
(7 classes), ``parity`` and ``magnitude`` (0-3 vs 4-6). The downstream task ``heldout_digits``
(7, 8, 9) uses images the upstream never saw. A demo, never evidence: 8x8 greyscale digits cannot
resolve the differences between architectures that real images do.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from metanet.data.bundle import DataBundle, Split, split_indices
from metanet.data.decoded import available_memory, format_bytes
from metanet.errors import DataError
from metanet.data.images import mean_std

UPSTREAM_DIGITS = tuple(range(7))
HELDOUT_DIGITS = (7, 8, 9)


def load_digits_bundle(resolution: int = 32, seed: int = 0, test_fraction: float = 0.3) -> DataBundle:
    from sklearn.datasets import load_digits
    digits = load_digits()
    # kept decoded as floats: the interpolated copy, the normalised one and its three channels, all at once
    need = len(digits.images) * resolution * resolution * 4 * 5
    available = available_memory()
    if available and need > available:
        raise DataError(f"proxy_resolution: the digits data at {resolution:,} px needs {format_bytes(need)} in memory "
                        f"({len(digits.images):,} images kept as floats); {format_bytes(available)} is available")
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    mean, std = mean_std()
    images = ((images - mean[0]) / std[0]).repeat(1, 3, 1, 1)
    target = torch.as_tensor(digits.target, dtype=torch.long)

    up = torch.isin(target, torch.tensor(UPSTREAM_DIGITS))
    x_up, y_up = images[up], target[up]
    tr, te = split_indices(len(y_up), test_fraction, seed)
    labels = {
        "digit": (y_up, [str(d) for d in UPSTREAM_DIGITS]),
        "parity": (y_up % 2, ["even", "odd"]),
        "magnitude": ((y_up >= 4).long(), ["0-3", "4-6"]),
    }
    sources = {name: Split(TensorDataset(x_up[tr], y[tr]), TensorDataset(x_up[te], y[te]), len(cls), cls)
               for name, (y, cls) in labels.items()}

    down = torch.isin(target, torch.tensor(HELDOUT_DIGITS))
    x_dn, y_dn = images[down], target[down] - HELDOUT_DIGITS[0]
    tr, te = split_indices(len(y_dn), test_fraction, seed + 1)
    tasks = {"heldout_digits": Split(TensorDataset(x_dn[tr], y_dn[tr]), TensorDataset(x_dn[te], y_dn[te]),
                                     len(HELDOUT_DIGITS), [str(d) for d in HELDOUT_DIGITS])}
    return DataBundle("digits", resolution, sources, tasks)
