"""Where and at which precision a candidate trains: one Lightning Fabric per evaluation.

:func:`metanet.evaluate.candidate.evaluate_candidate` creates a :class:`Runtime` from ``accelerator``, ``devices``
and ``precision`` and makes it current while the stages run, inside its autocast context; the training
helpers (:class:`metanet.train.loop.Schedule`, :func:`metanet.train.loop.batches`) take backward passes,
gradient clipping, optimiser steps and data sharding through it, so mixed precision (with fp16's loss
scaling) and data parallelism are set in this one place.

With ``devices > 1`` the stages run in that many processes started by Fabric's ``ddp_fork`` strategy
(its launcher, ranks and process group: gloo on CPU, NCCL on GPUs). Stages are written with methods
(``forward_features``, ``forward_head``) and several modules per loss, so DDP's forward wrapper does not
fit them; the runtime does what DDP does around each step instead: parameters and buffers broadcast from
rank 0 when a schedule starts, each rank trains on its shard of every global batch, gradients are
averaged across ranks (one flat all-reduce) before clipping and the optimiser step, and buffers (batch-norm
statistics) are broadcast from rank 0 after it. Rank 0's result is the evaluation's.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import pickle
import tempfile
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn

ACCELERATORS = ("auto", "cpu", "cuda")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
# ranks wait for each other at every step; a rank that died leaves the others waiting this long at most
SYNC_TIMEOUT = datetime.timedelta(minutes=10)

_current: ContextVar["Runtime | None"] = ContextVar("metanet_runtime", default=None)


def _check_devices(devices: Any, accelerator: str) -> int:
    from metanet.errors import ConfigError
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ConfigError(f"devices: expected a whole number >= 1, got {devices!r}", param="devices")
    if devices > 1 and accelerator != "cpu":
        available = torch.cuda.device_count()
        if accelerator == "cuda" or available:
            if devices > available:
                raise ConfigError(f"devices: {devices} asked for, but torch sees {available} GPU(s) here",
                                  param="devices")
    return devices


@dataclass
class Runtime:
    fabric: Any
    accelerator: str
    precision: str
    devices: int = 1
    compile: bool = False     # torch.compile the candidate's forward passes (metanet.train.loop.compile_candidate)
    # deterministic kernels on GPUs too (always on CPU, where they cost nothing): metanet.seeds.deterministic_algorithms
    deterministic: bool = False

    @classmethod
    def create(cls, accelerator: str = "auto", precision: str = "32", devices: int = 1,
               compile: bool = False, deterministic: bool = False) -> "Runtime":
        from metanet.errors import ConfigError
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
        devices = _check_devices(devices, accelerator)
        from lightning_fabric import Fabric
        logging.getLogger("lightning_fabric").setLevel(logging.WARNING)  # no banner per trial
        options: dict[str, Any] = {}
        if devices > 1:
            from lightning_fabric.strategies import DDPStrategy
            # fork: the stages, their data and the plugin manager reach the ranks as they are (nothing pickled)
            options["strategy"] = DDPStrategy(start_method="fork", timeout=SYNC_TIMEOUT)
        if deterministic:
            # cuBLAS reads this when it creates its handle: deterministic GEMM reductions (CUDA's documented value)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        fabric = Fabric(accelerator=accelerator, devices=devices,
                        precision="32-true" if precision == "32" else precision, **options)
        return cls(fabric, accelerator, precision, devices, bool(compile), bool(deterministic))

    @property
    def device(self) -> torch.device:
        return self.fabric.device

    @property
    def world_size(self) -> int:
        return self.devices

    @property
    def rank(self) -> int:
        return self.fabric.global_rank if self.distributed else 0

    @property
    def distributed(self) -> bool:
        """True inside the ranks of a multi-device evaluation (its process group is up)."""
        return self.devices > 1 and torch.distributed.is_available() and torch.distributed.is_initialized()

    def launch(self, function: Callable, *args: Any) -> Any:
        """``function(*args)`` in every rank (with this runtime current there); rank 0's return value."""
        if self.devices == 1:
            token = _current.set(self)
            try:
                return function(*args)
            finally:
                _current.reset(token)
        from metanet.errors import ConfigError
        if torch.cuda.is_initialized():
            raise ConfigError("devices: this process already uses CUDA, so it cannot fork ranks; run the "
                              "evaluation in a fresh process (e.g. --engine ts)", param="devices")
        # rank 0's result travels through a private temporary file: Lightning's return queue is read only
        # after every rank has exited, so a result larger than a pipe's buffer (weights) would deadlock it
        fd, path = tempfile.mkstemp(prefix="metanet-rank0-", suffix=".pkl")
        os.close(fd)
        try:
            self.fabric.launch(_run_rank, self, path, function, *args)
            with open(path, "rb") as f:
                return pickle.load(f)  # written by our own rank 0 just now
        finally:
            os.unlink(path)

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

    # -- what DDP does around a step, for stages that train several modules through methods --

    def broadcast_state(self, modules: Iterable[nn.Module], buffers_only: bool = False) -> None:
        """Rank 0's parameters (unless ``buffers_only``) and buffers in every rank."""
        if not self.distributed:
            return
        tensors = [t for m in modules for t in ([] if buffers_only else list(m.parameters())) + list(m.buffers())]
        for group in _by_dtype(tensors):
            flat = torch._utils._flatten_dense_tensors([t.data for t in group])
            torch.distributed.broadcast(flat, src=0)
            for t, value in zip(group, torch._utils._unflatten_dense_tensors(flat, group)):
                t.data.copy_(value)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Every rank's gradients replaced by their mean over the ranks (one all-reduce per dtype)."""
        if not self.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        for group in _by_dtype(grads):
            flat = torch._utils._flatten_dense_tensors(group)
            torch.distributed.all_reduce(flat)
            flat /= self.world_size
            for g, value in zip(group, torch._utils._unflatten_dense_tensors(flat, group)):
                g.copy_(value)

    def describe(self) -> dict[str, Any]:
        return {"accelerator": self.accelerator, "device": str(self.device), "precision": self.precision,
                "world_size": self.world_size, "compile": self.compile,
                "deterministic": self.deterministic or self.device.type == "cpu"}


def _by_dtype(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _run_rank(fabric, runtime: Runtime, result_path: str, function: Callable, *args: Any) -> None:
    # a forked copy of the runtime: its Fabric now knows this rank
    runtime = Runtime(fabric, runtime.accelerator, runtime.precision, runtime.devices, runtime.compile,
                      runtime.deterministic)
    token = _current.set(runtime)
    try:
        result = function(*args)
        if runtime.rank == 0:
            with open(result_path, "wb") as f:
                pickle.dump(result, f)
    finally:
        _current.reset(token)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def current() -> Runtime | None:
    """The runtime of the evaluation in progress (None outside one)."""
    return _current.get()
