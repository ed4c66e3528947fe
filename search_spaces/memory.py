"""Whether a model, at a resolution and a class count, can fit in this machine's memory: asked of the spec and
the estimator before anything is allocated.

``--resolution 100000`` or ``--num-classes 10**11`` used to reach ``torch.empty`` and fail with the allocator's
traceback (or, just under the limit, swap the machine to a halt). ``memory_need`` (in
:mod:`metanet.search_spaces.size_report`) gives a lower bound on
the bytes a forward pass (``training=False``) or a training step takes: the weights (4 bytes each, 16 when
training: weights, gradients and AdamW's two moments) and the activations that must be alive at once (the input
and the largest tensor of a block with its input; training keeps every block's output for the backward pass).
It is a lower bound, so a refusal is certain and a pass is no promise;
:func:`metanet.search_spaces.size_report.check_fits` refuses in one line naming the option that makes it too big.
Nothing here uses the estimator (which asks :func:`machine_memory` before it runs a block to count it).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from metanet.errors import ConfigError
from metanet.search_spaces.spec import ArchSpec, stage_grids

FLOAT_BYTES = 4
TRAINING_BYTES_PER_WEIGHT = 16  # the weight, its gradient and AdamW's two moments, in float32


def machine_memory(accelerator: str = "cpu") -> int:
    """Bytes of memory a model can use here: the first GPU's for ``cuda`` (and ``auto`` where there is one),
    else the physical memory (or the cgroup's limit, in a container, when lower); 0 when unknown."""
    if accelerator in ("cuda", "auto"):
        import torch
        if torch.cuda.is_available():
            return int(torch.cuda.get_device_properties(0).total_memory)
    return host_memory()


@functools.lru_cache(maxsize=1)
def host_memory() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as fh:
                text = fh.read().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < (total or float("inf")):
            total = int(text)
    return total


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


@dataclass
class MemoryNeed:
    """Lower bounds, in bytes."""

    weights: int
    activations: int
    classifier: int  # of ``weights``: the classifier's share (what --num-classes adds)

    @property
    def total(self) -> int:
        return self.weights + self.activations


def activation_elements(spec: ArchSpec, resolution: int, batch: int = 1, training: bool = False,
                        in_chans: int = 3) -> int:
    """Elements of the activations alive at once (a lower bound), from the spec's widths and the stage grids;
    no estimate, no model: this answers for any resolution, however absurd."""
    grids = stage_grids(resolution)
    image = in_chans * resolution * resolution
    stem = spec.stem_width * grids[0][0] * grids[0][1]
    widest, kept, cin = stem + image, stem, spec.stem_width
    for i, st in enumerate(spec.stages):
        hw = grids[i + 1][0] * grids[i + 1][1]
        hidden = max(int(min(cin, st.width) * st.expand), st.width) * hw  # an expansion (or the MLP) inside a block
        widest = max(widest, cin * grids[i][0] * grids[i][1] + hidden)
        kept += st.width * hw * st.depth
        cin = st.width
    return batch * (image + (kept if training else widest))


def check_image_fits(resolution: int, batch: int = 1, option: str = "proxy_resolution", in_chans: int = 3,
                     accelerator: str = "cpu") -> None:
    """Before data is decoded at ``resolution``: one batch of its images (float32) must fit, whatever the
    candidate (a bound for any space, before any spec is known)."""
    limit = machine_memory(accelerator)
    need = FLOAT_BYTES * batch * in_chans * resolution * resolution
    if limit and need > limit:
        raise ConfigError(f"{option}: {resolution:,} px images need at least {format_bytes(need)} for a batch of "
                          f"{batch}; this machine has {format_bytes(limit)}")


__all__ = ["MemoryNeed", "check_image_fits", "activation_elements", "machine_memory", "host_memory", "format_bytes",
           "FLOAT_BYTES", "TRAINING_BYTES_PER_WEIGHT"]
