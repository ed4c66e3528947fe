"""The FLOP counter: fvcore on a built model, plus handles for the attention fvcore skips.

"FLOPs" here are multiply-accumulates, as in timm and the MetaNet/UniNet papers. The count is
fvcore's default operator set (convolutions, linear layers, matmuls, batch/layer norm, adaptive
average pooling ...) with three additions:

* ``aten::scaled_dot_product_attention`` and metanet's own attention op: Nq*Nk*(Dqk + Dv) per head,
  the two matmuls that the released models wrote out and fvcore counted;
* ``aten::mean``: one add per input element, exactly what fvcore charges ``adaptive_avg_pool2d``,
  so global pooling counts the same whether it is written as a pool or a mean.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from math import prod

import torch
import torch.nn as nn

# Operators in MetaNet's own table convention: convolutions, linear layers, matmuls (attention included).
MATMUL_LIKE = frozenset({"conv", "linear", "addmm", "matmul", "mm", "bmm", "einsum",
                         "scaled_dot_product_attention", "attention"})


def _shape(value) -> list[int] | None:
    t = value.type()
    if not isinstance(t, torch._C.TensorType):
        return None
    return t.sizes()


def attention_flop_jit(inputs, outputs) -> int:
    q, k, v = (_shape(x) for x in inputs[:3])
    *batch, nq, d = q
    nk, dv = k[-2], v[-1]
    return prod(batch) * nq * nk * (d + dv)


def mean_flop_jit(inputs, outputs) -> int:
    return prod(_shape(inputs[0]) or [0])


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": attention_flop_jit,
    "metanet::attention": attention_flop_jit,
    "aten::mean": mean_flop_jit,
}


@dataclass
class FlopCount:
    total: int
    by_operator: dict[str, int] = field(default_factory=dict)
    by_module: dict[str, int] = field(default_factory=dict)

    @property
    def matmul_only(self) -> int:
        """Convolutions, linear layers and matmuls only: the convention of MetaNet's table."""
        return sum(v for k, v in self.by_operator.items() if k in MATMUL_LIKE)


def count_flops(model: nn.Module, resolution: int | tuple[int, int] = 224, in_chans: int = 3) -> FlopCount:
    """Count MACs of one image through ``model`` in eval mode at ``resolution``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # fvcore calls the deprecated torch.jit.script at import
        from fvcore.nn import FlopCountAnalysis

    h, w = (resolution, resolution) if isinstance(resolution, int) else resolution
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, in_chans, h, w, device=device)
    was_training = model.training
    model.eval()
    try:
        analysis = FlopCountAnalysis(model, x).set_op_handle(**EXTRA_HANDLES)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent python values
            total = int(analysis.total())
            by_op = {k: int(v) for k, v in analysis.by_operator().items()}
            by_mod = {k: int(v) for k, v in analysis.by_module().items()}
    finally:
        model.train(was_training)
    return FlopCount(total=total, by_operator=by_op, by_module=by_mod)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_timm_model(name: str, resolution: int, num_classes: int) -> dict:
    """``metanet flops timm:NAME``: any timm model counted under the same convention, to compare with."""
    import timm

    from metanet.errors import ConfigError
    if name not in timm.list_models():
        raise ConfigError(f"unknown timm model {name!r} (see timm.list_models())")
    from metanet.search_spaces.memory import check_image_fits
    check_image_fits(resolution, option="resolution")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        counted = count_flops(model, resolution)
    except Exception as exc:  # a timm model that cannot be traced at this size
        raise ConfigError(f"timm:{name}: cannot count at {resolution}px ({str(exc).splitlines()[0]})") from None
    params = count_params(model)
    return {"spec": f"timm:{name}", "resolution": resolution, "flops": counted.total, "params": params,
            "flops_counted": counted.total, "params_counted": params, "flops_matmul_only": counted.matmul_only}
