"""Small training helpers shared by the stage plugins: batches, optimisers, heads, accuracy."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from metanet.train.names import OPTIMIZERS, SCHEDULES


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


class StreamSampler(torch.utils.data.Sampler):
    """An endless stream of shuffled indices, a pure function of ``seed`` and the position in the stream.

    Epoch ``e`` is a permutation drawn from its own generator (``seed``, ``e``); global batch ``b`` of it is
    ``batch`` consecutive indices (a last, partial batch is dropped), of which this rank takes its ``batch //
    world`` share; with ``seeded``, each index comes with the seed of its augmentation (``seed``, ``e``, ``b``,
    position). So a stream started at batch ``start`` continues exactly where one that drew ``start``
    batches would be, without touching the data: what a resumed training stage needs.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int = 0, world: int = 1, rank: int = 0,
                 seeded: bool = False):
        self.n, self.batch, self.seed, self.start = n, max(1, min(batch, n)), seed, start
        self.world, self.rank, self.seeded = world, rank, seeded
        self.per_rank = max(1, self.batch // world)
        self.per_epoch = max(1, n // self.batch)

    def __iter__(self):
        from metanet.seeds import derive
        epoch, b = divmod(self.start, self.per_epoch)
        while True:
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(derive(self.seed, "order", epoch)))
            for b in range(b, self.per_epoch):
                lo = b * self.batch + self.rank * self.per_rank
                for j, i in enumerate(perm[lo:lo + self.per_rank].tolist()):
                    yield (i, derive(self.seed, "augment", epoch, b, self.rank * self.per_rank + j)) if self.seeded \
                        else i
            epoch, b = epoch + 1, 0


def batches(ds: Dataset, batch_size: int, seed: int, device, start: int = 0) -> Iterator[tuple[torch.Tensor,
                                                                                                torch.Tensor]]:
    """An endless stream of shuffled batches (reshuffled every epoch) from one loader whose workers,
    if the data has them, live as long as the stream.

    The order and, for image views, the augmentation come from ``seed`` alone (:class:`StreamSampler`);
    ``start`` skips the first ``start`` batches without loading them, so a resumed stage draws what it would
    have drawn. In a data-parallel evaluation each rank gets its shard of every global batch of
    ``batch_size``, so the ranks together take the steps one process would.
    """
    from metanet.train.runtime import current
    runtime = current()
    options = loader_options(ds, device)
    distributed = runtime is not None and runtime.distributed
    world, rank = (runtime.world_size, runtime.rank) if distributed else (1, 0)
    # a Subset indexes with the item as it is, so only views themselves take (index, seed) items
    sampler = StreamSampler(len(ds), batch_size, seed, start, world, rank, getattr(ds, "seeded_items", False))
    loader = DataLoader(ds, batch_size=sampler.per_rank, sampler=sampler, persistent_workers=bool(options),
                        **options)
    for x, y in loader:
        yield x.to(device, non_blocking=True), torch.as_tensor(y).to(device)


def _innermost(ds: Dataset) -> Dataset:
    while isinstance(ds, Subset):
        ds = ds.dataset
    return ds


def source_streams(sources: dict, cfg: dict, seed: int, device, start: int = 0) -> dict[str, Iterator]:
    """One batch stream per label source, each seeded by ``seed`` and its name (so adding or reordering sources
    changes no other source's batches), starting after ``start`` batches (a resumed stage)."""
    from metanet.seeds import derive
    return {name: batches(split.train, cfg["batch_size"], derive(seed, name), device, start=start)
            for name, split in sources.items()}


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


def binomial_se(accuracy: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` images, ``sqrt(p (1 - p) / n)`` (``p`` kept half an
    image from 0 and 1, so a perfect score on few images does not claim to be exact)."""
    if n <= 0:
        return float("nan")
    p = min(max(accuracy, 0.5 / n), 1 - 0.5 / n)
    return math.sqrt(p * (1 - p) / n)


def evaluate_split(model: nn.Module, head: nn.Module, split, device) -> dict[str, float]:
    """``acc`` on the split's validation set (what rewards see) with its standard error ``acc_se`` (binomial
    over the validation images), and ``test_acc`` on its test set (reported)."""
    if split.val is None:
        from metanet.errors import DataError
        raise DataError("the split has no validation set (load data with metanet.data.load_data, or call "
                        "DataBundle.with_validation)")
    acc = evaluate(model, head, split.val, device)
    return {"acc": acc, "acc_se": binomial_se(acc, len(split.val)),
            "test_acc": evaluate(model, head, split.test, device)}


def mean_of(key: str, values: list[float]) -> float:
    """The mean of a metric over sources or tasks; for a standard error (``*_se``), that of the mean of
    independent measurements, ``sqrt(sum se^2) / n``."""
    if key.endswith("_se"):
        return math.sqrt(sum(v * v for v in values)) / len(values)
    return sum(values) / len(values)


def averaged(per_part: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{part: {metric: v}}`` -> ``{part.metric: v}`` plus each metric's mean over the parts."""
    out = {f"{part}.{k}": v for part, values in per_part.items() for k, v in values.items()}
    for k in {k for values in per_part.values() for k in values}:
        out[k] = mean_of(k, [values[k] for values in per_part.values() if k in values])
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
        from metanet.train.runtime import current
        self.runtime = current()
        # through the evaluation's Fabric when there is one: its precision scales (fp16) and unscales losses
        self.base = base
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
    from metanet.train.runtime import current
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
                     lr: float | None = None, epochs: float | None = None, max_steps: int | None = None,
                     context=None, key: str = "") -> "StageTrainer":
    """Supervised training of backbone + head with cross entropy; returns its trainer (``.summary()``).

    With a stage ``context`` the training follows the search's fidelity (a rung's steps, continued from the
    previous rung's state under ``key``) and leaves its state for the next rung."""
    model.train()
    head.train()
    trainer = StageTrainer({"model": model, "head": head}, cfg, len(ds), context.fidelity if context else None,
                           lr=lr, epochs=epochs, max_steps=max_steps, key=key)
    stream = batches(ds, cfg["batch_size"], seed, device, start=trainer.start)
    for _ in trainer.steps():
        x, y = next(stream)
        trainer.step(F.cross_entropy(head(features(model, x)), y, label_smoothing=cfg.get("label_smoothing", 0.0)))
    if context is not None:
        context.keep(key, trainer)
    return trainer


@dataclass
class Fidelity:
    """A rung of a multi-fidelity search, as a training stage sees it: train to ``steps`` (cumulative) of a
    schedule defined over ``max_steps`` (so stopping at a rung and continuing equals training straight on),
    continuing from ``resume`` (the stage's states at the previous rung, by key) when given."""

    steps: int
    max_steps: int
    resume: dict[str, dict] | None = None


def _cpu(obj):
    """``obj`` with every tensor in it copied to the CPU (what a checkpoint holds)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu(v) for v in obj)
    return obj


class StageTrainer:
    """The step loop of a training stage: its schedule, how many steps it takes, and the state that lets a
    promoted trial continue where it stopped.

    Without a fidelity the stage trains ``min(max_steps, epochs over n_examples)`` steps, as its settings
    say, and :meth:`summary` reports when ``epochs`` capped the steps asked (``capped_by_epochs``). At a
    rung of a multi-fidelity search it trains to the rung's steps of a schedule over the ladder's maximum,
    never capped by epochs; :meth:`state` (modules, optimiser, schedule position, losses, the step, the
    random generators) is what :meth:`load` continues from at the next rung.
    """

    def __init__(self, modules: dict[str, nn.Module], cfg: dict, n_examples: int, fidelity: Fidelity | None = None,
                 lr: float | None = None, epochs: float | None = None, max_steps: int | None = None,
                 generators: dict[str, torch.Generator] | None = None, key: str = ""):
        self.modules, self.generators, self.key = modules, dict(generators or {}), key
        if fidelity is not None:
            schedule_steps, self.stop, self.asked, self.capped = fidelity.max_steps, fidelity.steps, fidelity.steps, False
        else:
            self.asked = max_steps if max_steps is not None else cfg.get("max_steps")
            steps = total_steps(n_examples, cfg["batch_size"], cfg["epochs"] if epochs is None else epochs, self.asked)
            schedule_steps = self.stop = steps
            self.capped = bool(self.asked) and steps < self.asked
        self.schedule = Schedule(list(modules.values()), cfg, schedule_steps, lr)
        self.log = LossLog()
        self.start = 0
        resume = (fidelity.resume or {}).get(key) if fidelity is not None else None
        if resume is not None:
            self.load(resume)

    def steps(self) -> range:
        return range(self.start, self.stop)

    def step(self, loss: torch.Tensor) -> None:
        self.schedule.step(loss, self.log)

    def state(self) -> dict:
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state()
        return {"modules": {n: state_to_cpu(m) for n, m in self.modules.items()},
                "optimizer": _cpu(self.schedule.base.state_dict()), "updates": self.schedule.updates,
                "log": list(self.log.values), "step": self.stop, "rng": rng,
                "generators": {n: g.get_state() for n, g in self.generators.items()}}

    def load(self, state: dict) -> None:
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.schedule.base.load_state_dict(state["optimizer"])
        self.schedule.updates = int(state["updates"])
        if self.schedule.scheduler is not None:
            self.schedule.scheduler.step_update(self.schedule.updates)
        self.log.values = [float(v) for v in state["log"]]
        self.start = min(int(state["step"]), self.stop)
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["rng"]["cuda"])
        for name, g in self.generators.items():
            g.set_state(state["generators"][name])

    def summary(self) -> dict[str, float]:
        out = self.log.summary() if self.log.values else {"train_steps": 0.0}
        if self.asked:
            out["steps_asked"] = float(self.asked)
            out["capped_by_epochs"] = float(self.capped)
        return out


def epoch_cap_notes(configs: dict[str, dict], largest_source: int) -> list[str]:
    """One line per stage whose ``epochs`` cap the ``max_steps`` asked, over the largest upstream source
    (the stages that train on sources), said once before any training."""
    notes = []
    for stage, cfg in configs.items():
        if not all(k in cfg for k in ("epochs", "max_steps", "batch_size")) or not cfg["max_steps"] or not largest_source:
            continue
        steps = total_steps(largest_source, cfg["batch_size"], cfg["epochs"], cfg["max_steps"])
        if steps < cfg["max_steps"]:
            notes.append(f"{stage}: max_steps={cfg['max_steps']} asked, but epochs={cfg['epochs']:g} over "
                         f"{largest_source:,} images in batches of {cfg['batch_size']} caps it at {steps} steps "
                         f"(--set {stage}.epochs=inf trains the steps asked)")
    return notes
