"""Built-in stage ``downstream``: adapt the backbone to held-out tasks with 10% of their labels.

GV-B's protocol: backbone frozen, a linear probe trained by SGD (lr 0.01, momentum 0.9, weight decay
1e-3) on a stratified 10% of each task's training set (or the task's own fixed list,
``train_10pct.txt``), accuracy on the task's validation split (``acc``, what rewards see) and test
split (``test_acc``, reported). ``finetune_steps`` adds a short fine-tune of the whole network
after the probe.

INTERN's data-efficiency claim is that its models, adapted with 10% of the target data, beat
counterparts trained with the full set. Two baselines measure that on any data:
``from_scratch`` trains the same architecture from random initialisation on 100% of the task's
training set, for ``scratch_epochs`` epochs (the schedule grows with the data; no step cap unless
``scratch_max_steps``); ``adapted_full`` adapts the same upstream backbone, by the same protocol, with
100% of the data. The stage reports ``adapted10_minus_scratch100`` and ``adapted10_minus_adapted100``
(named after ``fraction``).
"""
import copy
import zlib

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from metanet.data import for_eval, subset
from metanet.train.loop import (LossLog, batches, binomial_se, evaluate_split, extract, linear_head, make_optimizer,
                              mean_of, optimizer_step, train_classifier)


def stratified_fraction(labels: torch.Tensor, fraction: float, seed: int) -> list[int]:
    """At least one example of every class, then ``fraction`` of each class (rounded)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"downstream: fraction must be in (0, 1], got {fraction}")
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c in labels.unique():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        picked.extend(idx[: max(1, round(fraction * len(idx)))].tolist())
    return sorted(picked)


def _named(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    """``{acc, test_acc}`` -> ``{PREFIXacc, test_PREFIXacc}``: a test metric is its validation name with ``test_``."""
    return {(f"test_{prefix}{k[5:]}" if k.startswith("test_") else f"{prefix}{k}"): v for k, v in metrics.items()}


def percent(fraction: float) -> str:
    pct = fraction * 100
    return f"{pct:g}".replace(".", "p")


class _Frozen:
    """Validation and test features of a frozen backbone, extracted once per task."""

    def __init__(self, model, split, device):
        self.val = extract(model, split.val, device)
        self.test = extract(model, split.test, device)

    @torch.no_grad()
    def accuracy(self, head, device) -> dict[str, float]:
        head.eval()
        out = {}
        for key, (x, y) in (("acc", self.val), ("test_acc", self.test)):
            out[key] = float((head(x.to(device)).argmax(-1).cpu() == y).float().mean())
        out["acc_se"] = binomial_se(out["acc"], len(self.val[1]))
        return out


def _adapt(model, split, picked, frozen, cfg, seed, device, prefix) -> dict[str, float]:
    """GV-B's adaptation of ``model`` with the images ``picked`` of the task's training set."""
    few = subset(split.train, picked)
    x_tr, y_tr = extract(model, for_eval(few), device)  # the probe learns on features of unaugmented images
    torch.manual_seed(seed)
    head = linear_head(x_tr.shape[1], split.num_classes, device)
    opt = make_optimizer(head.parameters(), cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["momentum"])
    stream = batches(TensorDataset(x_tr, y_tr), cfg["batch_size"], seed, device)
    log = LossLog()
    for _ in range(max(1, int(cfg["epochs"] * max(1, len(y_tr) // cfg["batch_size"])))):
        x, y = next(stream)
        optimizer_step(opt, F.cross_entropy(head(x), y), log)
    final = frozen.accuracy(head, device)
    out = _named(f"{prefix}probe_", final)
    if cfg["finetune_steps"]:
        tuned = train_classifier(model, head, few, cfg, seed, device, lr=cfg["finetune_lr"],
                                 max_steps=cfg["finetune_steps"], epochs=float("inf"))
        final = evaluate_split(model, head, split, device)
        out.update(_named(f"{prefix}finetune_", final))
        out[f"{prefix}finetune_loss_last"] = tuned.summary()["train_loss_last"]
    out.update(_named(prefix, final))
    summary = log.summary()
    out[f"{prefix}train_loss_first"] = summary["train_loss_first"]
    out[f"{prefix}train_loss_last"] = summary["train_loss_last"]
    return out


def _scratch(context, split, cfg, seed, device) -> dict[str, float]:
    """The same architecture from random initialisation, trained on 100% of the task's training set."""
    fresh = context.fresh_model()
    head = linear_head(fresh.num_features, split.num_classes, device)
    log = train_classifier(fresh, head, split.train, {**cfg, "optimizer": "adamw"}, seed, device,
                           lr=cfg["scratch_lr"], epochs=cfg["scratch_epochs"], max_steps=cfg["scratch_max_steps"])
    out = _named("scratch100_", evaluate_split(fresh, head, split, device))
    out["scratch100_steps"] = float(len(log.log.values))
    return out


def run(context):
    cfg, device = context.config, context.device
    tasks = context.data.require_tasks(cfg["tasks"])
    model, origin = context.model_from(*[s for s in cfg["backbone"].split(",") if s])
    pct = percent(cfg["fraction"])
    per_task = {}
    for name, split in tasks.items():
        with context.seeded("task", name):
            per_task[name] = _task(context, model, name, split, cfg, pct, device)
    metrics = {f"{n}.{k}": v for n, m in per_task.items() for k, v in m.items()}
    for key in per_task[next(iter(per_task))]:
        if key not in ("labels_used", "fixed_subset", "scratch100_steps"):
            metrics[key] = mean_of(key, [m[key] for m in per_task.values()])
    context.state["downstream"] = {"backbone": origin}
    return metrics


def _task(context, model, name, split, cfg, pct, device) -> dict[str, float]:
    """One task on its own: seeds from its name, and (when fine-tuning) its own copy of the backbone, so neither
    the other tasks nor their order can change its numbers."""
    seed = context.seed + zlib.crc32(name.encode()) % 100_003
    frozen = _Frozen(model, split, device)
    fixed = split.subsets.get(cfg["fraction"])
    picked = fixed if fixed is not None else stratified_fraction(split.labels("train"), cfg["fraction"], seed)
    task_model = copy.deepcopy(model) if cfg["finetune_steps"] else model
    m = _adapt(task_model, split, picked, frozen, cfg, seed, device, "")
    m["labels_used"] = float(len(picked))
    m["fixed_subset"] = float(fixed is not None)
    if cfg["adapted_full"]:
        full_model = copy.deepcopy(model) if cfg["finetune_steps"] else model
        full = _adapt(full_model, split, list(range(len(split.train))), frozen, cfg, seed, device, "adapted100_")
        m.update({k: v for k, v in full.items() if k in ("adapted100_acc", "test_adapted100_acc")})
        m[f"adapted{pct}_minus_adapted100"] = m["acc"] - m["adapted100_acc"]
        m[f"test_adapted{pct}_minus_adapted100"] = m["test_acc"] - m["test_adapted100_acc"]
    if cfg["from_scratch"]:
        m.update(_scratch(context, split, cfg, seed, device))
        m[f"adapted{pct}_minus_scratch100"] = m["acc"] - m["scratch100_acc"]
        m[f"test_adapted{pct}_minus_scratch100"] = m["test_acc"] - m["test_scratch100_acc"]
    return m
