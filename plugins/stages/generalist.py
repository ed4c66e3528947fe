"""Built-in stage ``generalist``: one model distilled from all the experts.

The student starts from the amateur weights (or as built) and learns, per source, from the labels,
from the expert's softened logits (KL divergence at a temperature) and from the expert's pooled
features (MSE), as INTERN's generalist takes the experts' knowledge back into one backbone.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from metanet.train.loop import averaged, evaluate_split, features, linear_head, source_streams, state_to_cpu


def run(context):
    cfg, device = context.config, context.device
    experts = context.state.get("expert", {}).get("experts")
    if not experts:
        raise RuntimeError("generalist distils the experts: run the 'expert' stage before it")
    sources = context.data.require_sources(list(experts))
    student, origin = context.model_from("amateur")
    student.train()
    heads = nn.ModuleDict()
    teachers, teacher_heads = {}, {}
    for s, split in sources.items():
        teacher = copy.deepcopy(context.model)
        teacher.load_state_dict(experts[s]["weights"])
        teachers[s] = teacher.eval().requires_grad_(False)
        th = linear_head(teacher.num_features, split.num_classes, device)
        th.load_state_dict(experts[s]["head"])
        teacher_heads[s] = th.eval().requires_grad_(False)
        heads[s] = copy.deepcopy(th).requires_grad_(True).train()  # the student's head starts from the expert's
    trainer = context.trainer({"model": student, "heads": heads}, max(len(split.train) for split in sources.values()))
    streams = source_streams(sources, cfg, context.seed_for("batches"), device, start=trainer.start)
    t = cfg["temperature"]
    for _ in trainer.steps():
        loss = 0.0
        for s, stream in streams.items():
            x, y = next(stream)
            with torch.no_grad():
                t_feat = features(teachers[s], x)
                t_logits = teacher_heads[s](t_feat)
            s_feat = features(student, x)
            s_logits = heads[s](s_feat)
            kd = F.kl_div(F.log_softmax(s_logits / t, -1), F.softmax(t_logits / t, -1), reduction="batchmean") * t * t
            ce = F.cross_entropy(s_logits, y, label_smoothing=cfg["label_smoothing"])
            loss = loss + cfg["label_weight"] * ce + cfg["logit_weight"] * kd \
                + cfg["feature_weight"] * F.mse_loss(s_feat, t_feat)
        trainer.step(loss)
    context.keep("", trainer)
    metrics = averaged({s: evaluate_split(student, heads[s], split, device) for s, split in sources.items()})
    metrics.update(trainer.summary())
    context.state.setdefault("generalist", {}).update(weights=state_to_cpu(student), heads=state_to_cpu(heads),
                                                      origin=origin)
    return metrics
