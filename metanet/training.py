"""Small training helpers shared by the stage plugins: batches, optimisers, heads, accuracy."""
from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

OPTIMIZERS = ("sgd", "adamw", "adam")


def _pooled(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.forward_head(model.forward_features(x), pre_logits=True)


_compiled_pooled = None
# torch.compile's options for --compile (inductor by default; on CPU its C++ compile costs minutes per candidate)
COMPILE_OPTIONS: dict = {}


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled backbone features (B, num_features) of a timm-style model; through ``torch.compile`` when the
    evaluation asked for it (:func:`compile_candidate`: a flag on the model, so copies of it keep it)."""
    global _compiled_pooled
    if getattr(model, "metanet_compile", False):
        if _compiled_pooled is None:
            _compiled_pooled = torch.compile(_pooled, **COMPILE_OPTIONS)
        return _compiled_pooled(model, x)
    return _pooled(model, x)


def compile_candidate(model: nn.Module) -> nn.Module:
    """Mark ``model`` so that the stages' forward passes (:func:`features`) run compiled by ``torch.compile``.

    A flag rather than ``model.compile()``: stages deep-copy the candidate, and a copy of an in-place compiled
    module would keep calling the original's forward. Graphs of earlier candidates are dropped first (one
    candidate per evaluation; the recompile limit would otherwise send later candidates back to eager).
    """
    global _compiled_pooled
    import torch._dynamo
    torch._dynamo.reset()
    _compiled_pooled = None
    model.metanet_compile = True
    return model


def make_optimizer(params, name: str, lr: float, weight_decay: float = 0.0, momentum: float = 0.9):
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer: unknown optimiser {name!r} (expected one of {', '.join(OPTIMIZERS)})")


def total_steps(n_examples: int, batch_size: int, epochs: float, max_steps: int | None) -> int:
    """Steps for ``epochs`` passes, capped by ``max_steps`` (epochs=inf: exactly max_steps)."""
    if math.isinf(epochs):
        if not max_steps:
            raise ValueError("max_steps is needed when epochs is unbounded")
        return max_steps
    steps = max(1, math.ceil(epochs * n_examples / batch_size))
    return min(steps, max_steps) if max_steps else steps


def loader_options(ds: Dataset, device=None) -> dict:
    """Worker processes (and pinned memory for a GPU) for data decoded from files; none for tensors."""
    workers = getattr(_innermost(ds), "workers", 0)
    if not workers:
        return {}
    return {"num_workers": workers, "pin_memory": torch.device(device or "cpu").type == "cuda"}


class SeededSampler(torch.utils.data.Sampler):
    """The indices of ``base``, each with a seed for its augmentation drawn from ``generator`` in this
    process: a view's augmented images then depend on the stream's seed only, with or without workers."""

    def __init__(self, base, generator: torch.Generator):
        self.base, self.generator = base, generator

    def __iter__(self):
        for i in self.base:
            yield i, int(torch.randint(0, 2**62, (), generator=self.generator))

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)


def batches(ds: Dataset, batch_size: int, seed: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless stream of shuffled batches (reshuffled every epoch) from one loader whose workers,
    if the data has them, live as long as the stream.

    The order and, for image views, the augmentation come from generators seeded with ``seed`` alone.
    In a data-parallel evaluation each rank gets its shard of every global batch of ``batch_size``
    (a ``DistributedSampler`` over the same seeded permutation), so the ranks together take the steps
    one process would.
    """
    from torch.utils.data import RandomSampler

    from .runtime import current
    from .seeds import derive
    runtime = current()
    options = loader_options(ds, device)
    world = runtime.world_size if runtime is not None and runtime.distributed else 1
    size = max(1, min(batch_size, len(ds)) // world)
    if world > 1:
        from torch.utils.data import DistributedSampler
        sampler = DistributedSampler(ds, num_replicas=world, rank=runtime.rank, shuffle=True, seed=seed,
                                     drop_last=True)
    else:
        sampler = RandomSampler(ds, generator=torch.Generator().manual_seed(seed))
    if getattr(ds, "seeded_items", False):  # not through a Subset: it indexes with the item as it is
        sampler = SeededSampler(sampler, torch.Generator().manual_seed(derive(seed, "augment", runtime.rank
                                                                              if world > 1 else 0)))
    loader = DataLoader(ds, batch_size=size, sampler=sampler, drop_last=True, persistent_workers=bool(options),
                        **options)
    epoch = 0
    while True:
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for x, y in loader:
            yield x.to(device, non_blocking=True), torch.as_tensor(y).to(device)
        epoch += 1


def _innermost(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def source_streams(sources: dict, cfg: dict, seed: int, device) -> tuple[dict[str, Iterator], int]:
    """One batch stream per label source, each seeded by ``seed`` and its name (so adding or reordering sources
    changes no other source's batches), and the step count for ``cfg``'s epochs over the largest."""
    from .seeds import derive
    streams = {name: batches(split.train, cfg["batch_size"], derive(seed, name), device)
               for name, split in sources.items()}
    steps = total_steps(max(len(s.train) for s in sources.values()), cfg["batch_size"], cfg["epochs"],
                        cfg["max_steps"])
    return streams, steps


@torch.no_grad()
def evaluate(model: nn.Module, head: nn.Module, ds: Dataset, device, batch_size: int = 256) -> float:
    model.eval()
    head.eval()
    correct = total = 0
    for x, y in DataLoader(ds, batch_size=batch_size, **loader_options(ds, device)):
        pred = head(features(model, x.to(device))).argmax(-1).cpu()
        correct += int((pred == torch.as_tensor(y)).sum())
        total += len(y)
    return correct / max(total, 1)


def evaluate_split(model: nn.Module, head: nn.Module, split, device) -> dict[str, float]:
    """``acc`` on the split's validation set (what rewards see) and ``test_acc`` on its test set (reported)."""
    if split.val is None:
        from .errors import DataError
        raise DataError("the split has no validation set (load data with metanet.data.load_data, or call "
                        "DataBundle.with_validation)")
    return {"acc": evaluate(model, head, split.val, device), "test_acc": evaluate(model, head, split.test, device)}


def averaged(per_part: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{part: {metric: v}}`` -> ``{part.metric: v}`` plus each metric's mean over the parts."""
    out = {f"{part}.{k}": v for part, values in per_part.items() for k, v in values.items()}
    for k in {k for values in per_part.values() for k in values}:
        vals = [values[k] for values in per_part.values() if k in values]
        out[k] = sum(vals) / len(vals)
    return out


@torch.no_grad()
def extract(model: nn.Module, ds: Dataset, device, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    xs, ys = [], []
    for x, y in DataLoader(ds, batch_size=batch_size, **loader_options(ds, device)):
        xs.append(features(model, x.to(device)).float().cpu())  # fp32 whatever the autocast
        ys.append(torch.as_tensor(y))
    return torch.cat(xs), torch.cat(ys)


def augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A cheap on-tensor view for contrastive learning: random shifted crop, contrast and noise."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
    contrast = (0.8 + 0.4 * torch.rand(b, 1, 1, 1, generator=generator)).to(x.device)
    return out * contrast + 0.05 * torch.randn(out.shape, generator=generator).to(x.device)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised-temperature cross entropy between two views."""
    z = F.normalize(torch.cat([z1, z2]), dim=-1)
    sim = z @ z.t() / temperature
    n = z1.shape[0]
    sim.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class LossLog:
    """Keeps the training losses of a stage; first/last are means over a few steps."""

    def __init__(self, window: int = 3):
        self.values: list[float] = []
        self.window = window

    def add(self, loss: torch.Tensor | float) -> None:
        value = float(loss.detach()) if isinstance(loss, torch.Tensor) else float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"training loss is {value}")
        self.values.append(value)

    def summary(self) -> dict[str, float]:
        k = max(1, min(self.window, len(self.values) // 2 or 1))
        return {"train_loss_first": sum(self.values[:k]) / k, "train_loss_last": sum(self.values[-k:]) / k,
                "train_steps": float(len(self.values))}


SCHEDULES = ("cosine", "constant")


class Schedule:
    """How the stages train: an optimiser with weight decay on weights only (not on norms, biases or
    other 1-D parameters, timm's ``param_groups_weight_decay``), a learning rate warmed up linearly over
    ``warmup`` (a fraction of the steps) then cosine-decayed to ``lr * min_lr_ratio`` (timm's
    ``CosineLRScheduler``, per step), and gradients clipped to norm ``clip_grad`` (0: off).
    """

    def __init__(self, modules: list[nn.Module], cfg: dict, steps: int, lr: float | None = None):
        from timm.optim import param_groups_weight_decay
        from timm.scheduler import CosineLRScheduler
        schedule = cfg.get("schedule", "constant")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule: expected one of {', '.join(SCHEDULES)}, got {schedule!r}")
        warmup = float(cfg.get("warmup", 0.0))
        if not 0 <= warmup < 1:
            raise ValueError(f"warmup: expected a fraction of the steps in [0, 1), got {warmup}")
        lr = cfg["lr"] if lr is None else lr
        self.modules = nn.ModuleList(modules)
        groups = param_groups_weight_decay(self.modules, cfg.get("weight_decay", 0.0))
        base = make_optimizer(groups, cfg.get("optimizer", "adamw"), lr, 0.0, cfg.get("momentum", 0.9))
        from .runtime import current
        self.runtime = current()
        # through the evaluation's Fabric when there is one: its precision scales (fp16) and unscales losses
        self.opt = self.runtime.fabric.setup_optimizers(base) if self.runtime else base
        if self.runtime is not None:
            self.runtime.broadcast_state(self.modules)  # every rank starts from rank 0's weights, as DDP does
        self.clip = float(cfg.get("clip_grad", 0.0))
        self.scheduler = None
        if schedule == "cosine":
            self.scheduler = CosineLRScheduler(base, t_initial=max(1, steps),
                                               lr_min=lr * cfg.get("min_lr_ratio", 0.01), warmup_t=int(warmup * steps),
                                               warmup_lr_init=lr * 0.01, warmup_prefix=True, t_in_epochs=False)
        self.updates = 0

    def step(self, loss: torch.Tensor, log: "LossLog") -> None:
        self.opt.zero_grad(set_to_none=True)
        if self.runtime is None:
            loss.backward()
            if self.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.modules.parameters(), self.clip)
        else:
            with torch.autocast(self.runtime.device.type, enabled=False):  # backward outside autocast
                self.runtime.fabric.backward(loss)
            self.runtime.average_gradients(self.modules.parameters())
            if self.clip > 0:
                self.runtime.fabric.clip_gradients(self.modules, self.opt, max_norm=self.clip)
        self.opt.step()
        if self.runtime is not None:
            self.runtime.broadcast_state(self.modules, buffers_only=True)  # batch-norm statistics of rank 0
        self.updates += 1
        if self.scheduler is not None:
            self.scheduler.step_update(self.updates)
        log.add(loss)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, log: LossLog) -> None:
    """One step of every training loop here: clear, backpropagate, update, record the loss."""
    from .runtime import current
    runtime = current()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if runtime is not None:
        runtime.average_gradients(p for group in opt.param_groups for p in group["params"])
    opt.step()
    log.add(loss)


def linear_head(in_features: int, num_classes: int, device) -> nn.Linear:
    head = nn.Linear(in_features, num_classes)
    nn.init.trunc_normal_(head.weight, std=0.02)
    nn.init.zeros_(head.bias)
    return head.to(device)


def state_to_cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of a module's tensors (what safetensors and any device can load)."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def place(model: nn.Module, device) -> nn.Module:
    """The candidate on ``device`` in channels-last layout: convolutions (depthwise above all) run
    1.4-1.5x faster this way on CPU (oneDNN) as on GPU; tokens are read by reshapes that accept it."""
    return model.to(device=device, memory_format=torch.channels_last)


def train_classifier(model: nn.Module, head: nn.Module, ds: Dataset, cfg: dict, seed: int, device,
                     lr: float | None = None, epochs: float | None = None, max_steps: int | None = None) -> LossLog:
    """Supervised training of backbone + head with cross entropy; returns the loss log."""
    model.train()
    head.train()
    steps = total_steps(len(ds), cfg["batch_size"], epochs if epochs is not None else cfg["epochs"],
                        max_steps if max_steps is not None else cfg.get("max_steps"))
    schedule = Schedule([model, head], cfg, steps, lr)
    stream = batches(ds, cfg["batch_size"], seed, device)
    log = LossLog()
    for _ in range(steps):
        x, y = next(stream)
        loss = F.cross_entropy(head(features(model, x)), y, label_smoothing=cfg.get("label_smoothing", 0.0))
        schedule.step(loss, log)
    return log
