"""Built-in stage ``zero-cost``: a training-free score at initialisation from one batch.

``naswot`` (Mellor et al., 2021): the log-determinant of the Hamming kernel of the binary activation
patterns (GELU inputs > 0) over a batch: networks that separate inputs score higher.
``grad_norm``: the sum of parameter-gradient norms of a cross-entropy loss through a fresh head.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from metanet.data import for_eval
from metanet.plugins.stages import PROXIES
from metanet.train.loop import features, linear_head


def run(context):
    cfg = context.config
    if cfg["proxy"] not in PROXIES:
        raise ValueError(f"zero-cost: proxy: unknown proxy {cfg['proxy']!r} (expected one of {', '.join(PROXIES)})")
    sources = context.data.require_sources([cfg["source"]] if cfg["source"] else None)
    split = next(iter(sources.values()))
    g = context.generator("batch")
    idx = torch.randperm(len(split.train), generator=g)[: cfg["batch_size"]]
    images = for_eval(split.train)  # the images as they are: a score at initialisation needs no augmentation noise
    x = torch.stack([images[int(i)][0] for i in idx]).to(context.device)
    y = torch.as_tensor([int(images[int(i)][1]) for i in idx]).to(context.device)
    model = context.model
    if cfg["proxy"] == "naswot":
        return {"score": _naswot(model, x)}
    return {"score": _grad_norm(model, x, y, split.num_classes, context.device)}


def _naswot(model: nn.Module, x: torch.Tensor) -> float:
    codes = []

    def hook(_module, inputs, _output):
        codes.append((inputs[0].detach() > 0).flatten(1).float())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.GELU)]
    was_training = model.training
    try:
        model.train()
        with torch.no_grad():
            features(model, x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not codes:
        raise RuntimeError("zero-cost: naswot found no GELU activation to read")
    c = torch.cat(codes, dim=1).double()
    k = c @ c.t() + (1 - c) @ (1 - c).t()
    return float(torch.linalg.slogdet(k)[1])


def _grad_norm(model: nn.Module, x, y, num_classes: int, device) -> float:
    head = linear_head(model.num_features, num_classes, device)
    model.zero_grad()
    F.cross_entropy(head(features(model.train(), x)), y).backward()
    total = sum(float(p.grad.norm()) for p in model.parameters() if p.grad is not None)
    model.zero_grad()
    return total
