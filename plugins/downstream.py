"""Built-in stage ``downstream``: adapt the backbone to held-out tasks with 10% of their labels.

GV-B's protocol: backbone frozen, a linear probe trained by SGD (lr 0.01, momentum 0.9, weight decay
1e-3) on a stratified 10% of each task's training set, accuracy on the task's test split. Options:
a short fine-tune of the whole network after the probe (``finetune_steps``), and a baseline of the
same architecture trained from scratch on 100% of the task (``from_scratch``) so INTERN's claim
(10% adapted beats 100% from scratch) can be checked on any data.
"""
import copy
import zlib

import torch
import torch.nn.functional as F
from torch.utils.data import Subset, TensorDataset

from metanet.training import (LossLog, batches, evaluate, extract, linear_head, make_optimizer, optimizer_step,
                              train_classifier)


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


def run(context):
    cfg, device = context.config, context.device
    tasks = context.data.require_tasks(cfg["tasks"])
    model, origin = context.model_from(*[s for s in cfg["backbone"].split(",") if s])
    metrics, firsts, lasts, scratch = {}, [], [], []
    for name, split in tasks.items():
        # Each task on its own: seeds from its name, and (when fine-tuning) its own copy of the backbone,
        # so neither the other tasks nor their order can change its numbers.
        seed = context.seed + zlib.crc32(name.encode()) % 100_003
        task_model = copy.deepcopy(model) if cfg["finetune_steps"] else model
        picked = stratified_fraction(split.labels("train"), cfg["fraction"], seed)
        few = Subset(split.train, picked)
        # Frozen backbone: features once, then the probe trains on them.
        x_tr, y_tr = extract(task_model, few, device)
        torch.manual_seed(seed)
        head = linear_head(x_tr.shape[1], split.num_classes, device)
        opt = make_optimizer(head.parameters(), cfg["optimizer"], cfg["lr"], cfg["weight_decay"], cfg["momentum"])
        stream = batches(TensorDataset(x_tr, y_tr), cfg["batch_size"], seed, device)
        log = LossLog()
        for _ in range(max(1, int(cfg["epochs"] * max(1, len(y_tr) // cfg["batch_size"])))):
            x, y = next(stream)
            loss = F.cross_entropy(head(x), y)
            optimizer_step(opt, loss, log)
        summary = log.summary()
        firsts.append(summary["train_loss_first"])
        lasts.append(summary["train_loss_last"])
        acc = evaluate(task_model, head, split.test, device)
        metrics[f"{name}.probe_acc"] = acc
        if cfg["finetune_steps"]:
            tuned = train_classifier(task_model, head, few, cfg, seed, device, lr=cfg["finetune_lr"],
                                     max_steps=cfg["finetune_steps"], epochs=float("inf"))
            acc = evaluate(task_model, head, split.test, device)
            metrics[f"{name}.finetune_acc"] = acc
            metrics[f"{name}.finetune_loss_last"] = tuned.summary()["train_loss_last"]
        metrics[f"{name}.acc"] = acc
        metrics[f"{name}.labels_used"] = float(len(picked))
        if cfg["from_scratch"]:
            fresh = context.fresh_model()
            fresh_head = linear_head(fresh.num_features, split.num_classes, device)
            train_classifier(fresh, fresh_head, split.train, {**cfg, "optimizer": "adamw"}, seed, device,
                             lr=cfg["scratch_lr"], epochs=cfg["scratch_epochs"], max_steps=cfg["scratch_max_steps"])
            metrics[f"{name}.scratch_acc"] = evaluate(fresh, fresh_head, split.test, device)
            scratch.append(metrics[f"{name}.scratch_acc"])
    metrics["acc"] = sum(metrics[f"{n}.acc"] for n in tasks) / len(tasks)
    if scratch:
        metrics["scratch_acc"] = sum(scratch) / len(scratch)
        metrics["adapted_minus_scratch"] = metrics["acc"] - metrics["scratch_acc"]
    metrics["train_loss_first"] = sum(firsts) / len(firsts)
    metrics["train_loss_last"] = sum(lasts) / len(lasts)
    context.state["downstream"] = {"backbone": origin}
    return metrics
