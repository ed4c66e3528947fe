"""Built-in stage ``amateur``: INTERN's multi-source upstream pre-training of the candidate.

One supervised head per label source, trained at once (the losses are summed each step), plus a
SimCLR-style contrastive objective on two augmented views of the images.
"""
import copy

import torch.nn as nn
import torch.nn.functional as F

from metanet.train.loop import (augment, averaged, evaluate_split, features, linear_head, nt_xent, source_streams,
                              state_to_cpu)


def run(context):
    cfg, device = context.config, context.device
    sources = context.data.require_sources(cfg["sources"])
    model = copy.deepcopy(context.model).train()
    nf = model.num_features
    heads = nn.ModuleDict()
    for s, split in sources.items():  # each head initialised from its source's own seed
        with context.seeded("head", s):
            heads[s] = linear_head(nf, split.num_classes, device)
    with context.seeded("projection"):
        proj = nn.Sequential(nn.Linear(nf, nf // 2), nn.ReLU(), nn.Linear(nf // 2, cfg["projection_dim"])).to(device)
    g = context.generator("contrastive views")
    trainer = context.trainer({"model": model, "heads": heads, "projection": proj},
                              max(len(split.train) for split in sources.values()), generators={"views": g})
    streams = source_streams(sources, cfg, context.seed_for("batches"), device, start=trainer.start)
    for _ in trainer.steps():
        loss = 0.0
        images = None
        for s, stream in streams.items():
            x, y = next(stream)
            images = x if images is None else images
            loss = loss + F.cross_entropy(heads[s](features(model, x)), y, label_smoothing=cfg["label_smoothing"])
        if cfg["contrastive_weight"] > 0:
            z1 = proj(features(model, augment(images, g)))
            z2 = proj(features(model, augment(images, g)))
            loss = loss + cfg["contrastive_weight"] * nt_xent(z1, z2, cfg["temperature"])
        trainer.step(loss)
    context.keep("", trainer)
    metrics = averaged({s: evaluate_split(model, heads[s], split, device) for s, split in sources.items()})
    metrics.update(trainer.summary())
    context.state.setdefault("amateur", {}).update(weights=state_to_cpu(model), heads=state_to_cpu(heads))
    return metrics
