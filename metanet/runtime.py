"""Where and at which precision a candidate trains: one Lightning Fabric per evaluation.

:func:`metanet.stages.evaluate_candidate` creates a :class:`Runtime` from ``accelerator`` and
``precision`` and makes it current while the stages run, inside its autocast context; the training
helpers (:class:`metanet.training.Schedule`) take backward passes, gradient clipping and optimiser
steps through its Fabric, so mixed precision (with fp16's loss scaling) is set in this one place.
"""
from __future__ import annotations

import contextlib
import logging
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Iterator

import torch

ACCELERATORS = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")

_current: ContextVar["Runtime | None"] = ContextVar("metanet_runtime", default=None)


@dataclass
class Runtime:
    fabric: Any
    accelerator: str
    precision: str

    @classmethod
    def create(cls, accelerator: str = "auto", precision: str = "32") -> "Runtime":
        from .errors import ConfigError
        if accelerator not in ACCELERATORS:
            raise ConfigError(f"accelerator: expected one of {', '.join(ACCELERATORS)}, got {accelerator!r}",
                              param="accelerator")
        if precision not in PRECISIONS:
            raise ConfigError(f"precision: expected one of {', '.join(PRECISIONS)}, got {precision!r}",
                              param="precision")
        if accelerator == "cuda" and not torch.cuda.is_available():
            raise ConfigError("accelerator: cuda asked for, but torch sees no GPU here", param="accelerator")
        if precision == "16-mixed" and accelerator != "cuda" and not torch.cuda.is_available():
            raise ConfigError("precision: 16-mixed needs a GPU (CPU autocast has bf16-mixed)", param="precision")
        from lightning_fabric import Fabric
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)  # no banner per trial
        fabric = Fabric(accelerator=accelerator, devices=1, precision="32-true" if precision == "32" else precision)
        return cls(fabric, accelerator, precision)

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    @contextlib.contextmanager
    def active(self) -> Iterator["Runtime"]:
        """This runtime current, and the forward passes of the stages under its autocast."""
        token = _current.set(self)
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)
        try:
            # Fabric's autocast, but without the cast-weight cache: a stage's whole training loop runs inside
            # this context, and cached low-precision copies would outlive every optimiser step (measured:
            # bf16 training stalled at the initial loss with the cache on)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=False):
                yield self
        finally:
            _current.reset(token)

    def describe(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator, "device": str(self.device), "precision": self.precision}


def current() -> Runtime | None:
    """The runtime of the evaluation in progress (None outside one)."""
    return _current.get()
