"""Sizes as the CLI reports them: a spec's FLOPs and parameters per part (``metanet flops``, with the fvcore count
beside the estimate on request) and the released models as points of the default space (``metanet presets``).

The top of the search spaces' modules: it uses the estimator, the counter, the model and the presets, and nothing
of theirs uses it.
"""
from __future__ import annotations

from metanet.search_spaces.estimate import estimate
from metanet.search_spaces.presets import PRESETS
from metanet.search_spaces.spec import ArchSpec


def flops_report(spec: ArchSpec, source: str, resolution: int, num_classes: int, count: bool = False) -> dict:
    """The estimate of ``spec`` per part (``metanet flops``); with ``count``, the fvcore count beside it."""
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
