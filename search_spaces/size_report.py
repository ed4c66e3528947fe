"""Sizes as the CLI reports them: a spec's FLOPs and parameters per part (``metanet flops``, with the fvcore count
beside the estimate on request), the released models as points of the default space (``metanet presets``), and
whether a model fits this machine's memory (:func:`check_fits`, from the estimate and :mod:`.memory`).

The top of the search spaces' modules: it uses the estimator, the counter, the model and the presets, and nothing
of theirs uses it.
"""
from __future__ import annotations

from metanet.errors import ConfigError
from metanet.search_spaces.estimate import estimate
from metanet.search_spaces.memory import (FLOAT_BYTES, TRAINING_BYTES_PER_WEIGHT, MemoryNeed, host_memory,
                                          activation_elements, format_bytes, machine_memory)
from metanet.search_spaces.presets import PRESETS
from metanet.search_spaces.spec import HEAD_WIDTH, ArchSpec


def flops_report(spec: ArchSpec, source: str, resolution: int, num_classes: int, count: bool = False) -> dict:
    """The estimate of ``spec`` per part (``metanet flops``); with ``count``, the fvcore count beside it."""
    if count:  # the counted model is built and run: refused before it is allocated when it cannot fit
        check_fits(spec, resolution, num_classes, what=source)
    est = estimate(spec, resolution, num_classes)
    stages = {}
    for name, part in est.parts.items():
        entry = {"flops": part.flops, "params": part.params}
        if name[1:].isdigit():
            st = spec.stages[int(name[1:])]
            entry["layout"] = f"{st.op} x{st.depth}, width {st.width}, expand {st.expand:g}, dsm {st.dsm}"
        stages[name] = entry
    data = {"spec": source, "resolution": resolution, "flops": est.flops, "params": est.params, "stages": stages}
    if count:
        import torch

        from metanet.search_spaces.counter import count_flops, count_params
        from metanet.search_spaces.metanet import MetaNet
        torch.manual_seed(0)
        model = MetaNet(spec, num_classes=num_classes, img_size=resolution)
        counted = count_flops(model, resolution)
        data.update(flops_counted=counted.total, params_counted=count_params(model),
                    flops_matmul_only=counted.matmul_only)
    return data


def preset_rows() -> list[dict]:
    """Each preset with its size at its input resolution and whether the default space holds it
    (``metanet presets``)."""
    from metanet.search_spaces.unified import DEFAULT_SPACE
    rows = []
    for p in PRESETS.values():
        est = estimate(p.spec, p.input_size)
        outside = DEFAULT_SPACE.contains(p.spec)
        rows.append({"name": p.name, "input_size": p.input_size, "flops": est.flops, "params": est.params,
                     "in_space": outside is None, **({"outside": outside} if outside else {}),
                     "description": p.description})
    return rows


def memory_need(spec: ArchSpec, resolution: int, num_classes: int = 0, batch: int = 1, training: bool = False,
                in_chans: int = 3, img_size: int | None = None) -> MemoryNeed:
    """Lower bounds on the weights' and activations' bytes of ``spec`` at ``resolution`` (see the module)."""
    activations = FLOAT_BYTES * activation_elements(spec, resolution, batch, training, in_chans)
    classifier = (HEAD_WIDTH * num_classes + num_classes) if num_classes else 0
    per_weight = TRAINING_BYTES_PER_WEIGHT if training else FLOAT_BYTES
    if activations > machine_memory() and activations > 0:  # the estimator would count blocks this size: skip it
        return MemoryNeed(per_weight * classifier, activations, per_weight * classifier)
    params = estimate(spec, resolution, num_classes=num_classes, img_size=img_size or resolution,
                      in_chans=in_chans).params
    return MemoryNeed(per_weight * params, activations, per_weight * classifier)


def check_fits(spec: ArchSpec, resolution: int, num_classes: int = 0, *, batch: int = 1, training: bool = False,
               accelerator: str = "cpu", resolution_option: str = "resolution", classes_option: str = "num_classes",
               what: str = "the model", in_chans: int = 3, img_size: int | None = None) -> MemoryNeed:
    """Refuse, before anything is allocated, a model that cannot fit in this machine's memory, naming the option
    that makes it too big: ``resolution_option`` for activations, ``classes_option`` for a classifier."""
    limit = machine_memory(accelerator)
    need = memory_need(spec, resolution, num_classes, batch, training, in_chans, img_size)
    if not limit or need.total <= limit:
        return need
    where = f"this machine has {format_bytes(limit)}" + (" on its GPU" if limit != host_memory() else "")
    use = f"a training step of batch {batch}" if training else "a forward pass" + (f" of batch {batch}" if batch > 1
                                                                                     else "")
    if need.activations >= need.weights:
        raise ConfigError(f"{resolution_option}: {what} at {resolution:,} px needs at least "
                          f"{format_bytes(need.activations)} of activations for {use}; {where}")
    if need.classifier * 2 >= need.weights:
        raise ConfigError(f"{classes_option}: a classifier of {num_classes:,} classes needs at least "
                          f"{format_bytes(need.classifier)} of weights; {where}")
    raise ConfigError(f"{what}: its weights need at least {format_bytes(need.weights)}; {where}")
