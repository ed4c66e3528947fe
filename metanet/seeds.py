"""Seeds derived from a run's seed and names, so that no component draws from state another one touched.

Every source of randomness in a trial takes its generator from :func:`derive` (the trial's seed and the
names of what draws: stage, source or task, purpose), or runs inside :func:`seeded`, which seeds the
global generators that library code draws from (weight initialisation, dropout, drop-path) for one block
and restores them after it. A stage's numbers then depend on the seed, its settings and its data, never on
which stages, sources or tasks came before it.
"""
from __future__ import annotations

import contextlib
import hashlib
import random
from typing import Iterator

import torch


def derive(seed: int, *names) -> int:
    """A 63-bit seed from ``seed`` and ``names`` (stage, source, purpose ...): stable across processes and
    Python versions (no ``hash()``), different for different names."""
    text = "|".join([str(int(seed)), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(seed: int, *names) -> torch.Generator:
    """A CPU generator seeded with :func:`derive` (``seed``, ``names``)."""
    return torch.Generator().manual_seed(derive(seed, *names))


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Torch's (CPU, and ``device``'s if it is a GPU), Python's and NumPy's global generators seeded with
    ``seed`` inside the block, and as they were after it."""
    import numpy as np
    py, np_state = random.getstate(), np.random.get_state()
    devices = [torch.device(device)] if device is not None and torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool = True) -> Iterator[None]:
    """torch's deterministic kernels (``use_deterministic_algorithms``, warn-only: an op without one warns
    rather than fails) and cuDNN's deterministic, non-benchmarked algorithms inside the block; the previous
    settings after it. On CPU this costs nothing measurable; on GPUs it can cost speed (see the README)."""
    if not enabled:
        yield
        return
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[2], before[3]
