"""Built-in stage ``supernet``: score a candidate with weights inherited from a trained supernet.

The candidate's weights are sliced out of the supernet that ``metanet supernet train`` left in
``path``, its batch-norm statistics recalibrated on a few training batches (shared statistics belong
to no single sub-network; OFA and BigNAS recalibrate the same way), and its accuracy measured with the
supernet's classifier on the validation split of the source the supernet learnt (``test_acc``, the
test split, only with ``test=true``: a one-shot search scores candidates by the thousand, and its final
phase reports test scores for the few it re-evaluates). The recalibrated weights are the trial's backbone weights, so
``metanet export`` writes the sub-network as a standalone model.
"""
from __future__ import annotations

import copy
import os

import torch
import torch.nn as nn

from metanet.errors import ConfigError, SupernetError
from metanet.train.loop import batches as training_batches
from metanet.train.loop import evaluate, evaluate_split, state_to_cpu


def _path(config) -> str:
    path = config.get("path") or ""
    if not path:
        raise ConfigError("supernet.path: the directory of a trained supernet is needed "
                          "(--set supernet.path=DIR; train one with `metanet supernet train --out DIR`)")
    return os.path.expanduser(path)


def check(config, setup) -> None:
    """The supernet must have been trained for what the search or evaluation is set up with."""
    from metanet.train.supernet_training import SupernetDir
    path = _path(config)
    settings = SupernetDir(path).settings()
    res = setup.get("proxy_resolution")
    if res is not None and res != settings.proxy_resolution:
        raise SupernetError(f"supernet.path: {path} was trained at {settings.proxy_resolution}px, this run trains "
                            f"at {res}px (use --proxy-resolution {settings.proxy_resolution})")
    for key, label in (("space", "space"), ("resolution", "deployment resolution")):
        if setup.get(key) is not None and setup[key] != getattr(settings, key):
            raise SupernetError(f"supernet.path: {path} was trained for {label} {getattr(settings, key)!r}, not "
                                f"{setup[key]!r}")
    if setup.get("band") is not None and tuple(setup["band"]) != tuple(settings.band):
        raise SupernetError(f"supernet.path: {path} was trained for band {tuple(settings.band)}, not "
                            f"{tuple(setup['band'])}")
    missing = [b for b in setup.get("flops") or [] if b not in settings.flops]
    if missing:
        from metanet.budget import format_flops
        raise SupernetError(f"supernet.path: {path} was trained for budget(s) "
                            f"{','.join(format_flops(b) for b in settings.flops)}, not {format_flops(missing[0])}")


@torch.no_grad()
def recalibrate(model: nn.Module, ds, batches: int, batch_size: int, seed: int, device) -> None:
    """Batch-norm running statistics re-estimated as plain averages over ``batches`` training batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    stream = training_batches(ds, batch_size, seed, device)  # order and augmentation seeded by ``seed`` alone
    for _ in range(batches):
        x, _ = next(stream)
        model.forward_features(x)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def run(context):
    from metanet.train.supernet_training import load
    cfg = context.config
    path = _path(cfg)
    net = load(path, context.device)
    if context.data.resolution != net.settings.proxy_resolution:
        raise SupernetError(f"supernet.path: {path} was trained at {net.settings.proxy_resolution}px, the data is "
                            f"at {context.data.resolution}px")
    source = net.info["source"]
    split = context.data.require_sources([source])[source]
    if list(split.classes) != list(net.info["classes"]):
        raise SupernetError(f"supernet.path: {path} learnt source {source!r} with classes {net.info['classes']}, "
                            f"the data has {list(split.classes)}")
    net.check(context.spec)  # a spec outside the supernet's space: one line naming the module
    model = copy.deepcopy(context.model)
    model.load_state_dict(net.extract(context.spec))
    recalibrate(model, split.train, cfg["calibration_batches"], cfg["batch_size"], context.seed, context.device)
    head = copy.deepcopy(net.classifier).to(context.device)
    if cfg["test"]:
        metrics = evaluate_split(model, head, split, context.device)
    else:  # a one-shot search scores thousands: test accuracy is for the few its final phase re-evaluates
        if split.val is None:
            raise SupernetError(f"data '{context.data.name}': source {source!r} has no validation set")
        metrics = {"acc": evaluate(model, head, split.val, context.device)}
    context.state["supernet"] = {"weights": state_to_cpu(model), "heads": state_to_cpu(head)}
    metrics["supernet_step"] = float(net.info.get("step", 0))
    return metrics
