"""A stage plugin that records what each rank of a data-parallel evaluation saw and holds (used by
tests/test_data_parallel.py, loaded by module path as a user's plugin would be)."""
import hashlib
import json
import os

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from metanet import hookimpl
from metanet.train.runtime import current
from metanet.train.loop import LossLog, Schedule, batches, features, linear_head


def _digest(*modules) -> str:
    h = hashlib.sha256()
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run(context):
    runtime = current()
    cfg = context.config
    indices = batches(TensorDataset(torch.arange(64)[:, None], torch.arange(64)), cfg["batch_size"], context.seed,
                      context.device)
    seen = [next(indices)[1].tolist() for _ in range(4)]  # the examples this rank got in 4 global batches
    split = context.data.sources[next(iter(context.data.sources))]
    model = context.model.train()
    head = linear_head(model.num_features, split.num_classes, context.device)
    schedule = Schedule([model, head], {**cfg, "lr": 1e-3}, cfg["steps"])
    stream, log = batches(split.train, cfg["batch_size"], context.seed, context.device), LossLog()
    for _ in range(cfg["steps"]):
        x, y = next(stream)
        schedule.step(F.cross_entropy(head(features(model, x)), y), log)
    record = {"rank": runtime.rank, "world_size": runtime.world_size, "seen": seen, "digest": _digest(model, head),
              "steps": schedule.updates}
    with open(os.path.join(cfg["record"], f"rank{runtime.rank}.json"), "w") as f:
        json.dump(record, f)
    return {"steps": float(schedule.updates)}


@hookimpl
def metanet_register_stages(register):
    register("rank-probe", run, defaults={"batch_size": 16, "steps": 3, "record": "."}, score_metric="steps")
