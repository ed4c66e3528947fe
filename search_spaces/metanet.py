"""MetaNet: the plain ``nn.Module`` built from an architecture spec (no NNI needed).

Skeleton shared by INTERN's MetaNet and UniNet: a 3x3 stride-2 stem, six stages with strides
(1, 2, 2, 2, 1, 2), a 1x1 conv head to 1280 channels, global pooling and a classifier.
The interface follows timm: ``forward_features`` / ``forward_head``, ``get_classifier`` /
``reset_classifier``, ``num_features`` and ``feature_info``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, trunc_normal_

from .operators import make_block, make_downsample
from .spec import HEAD_WIDTH, STRIDES, ArchSpec, stage_grids

__all__ = ["MetaNet", "build_model", "as_spec", "stage_grids"]


def as_spec(spec: ArchSpec | Mapping[str, Any] | str | os.PathLike) -> ArchSpec:
    """Accept a spec, its dict, a JSON string, a preset name or a path to a spec JSON file."""
    if isinstance(spec, ArchSpec):
        return spec
    if isinstance(spec, Mapping):
        return ArchSpec.from_dict(spec)
    text = os.fspath(spec)
    if text.lstrip().startswith("{"):
        return ArchSpec.from_json(text)
    from .presets import PRESETS
    if text in PRESETS:
        return PRESETS[text].spec
    return ArchSpec.load(text)


class MetaNet(nn.Module):
    def __init__(self, spec, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, global_pool: str = "avg"):
        super().__init__()
        self.spec = as_spec(spec)
        self.num_classes = num_classes
        self.img_size = img_size
        self.drop_rate = drop_rate
        spec = self.spec
        grids = stage_grids(img_size)

        self.stem = nn.Sequential(nn.Conv2d(in_chans, spec.stem_width, 3, 2, 1, bias=False),
                                  nn.BatchNorm2d(spec.stem_width), nn.GELU())
        self.feature_info = [dict(num_chs=spec.stem_width, reduction=2, module="stem")]

        n_blocks = sum(s.depth for s in spec.stages)
        dpr = [drop_path_rate * j / max(n_blocks - 1, 1) for j in range(n_blocks)]  # linear stochastic depth
        stages, cin, reduction, b = [], spec.stem_width, 2, 0
        for i, st in enumerate(spec.stages):
            stride, grid = STRIDES[i], grids[i + 1]
            blocks: list[nn.Module] = []
            if st.dsm != "block":
                blocks.append(make_downsample(st.dsm, cin, st.width, stride, spec.head_dim))
                cin, stride = st.width, 1
            for _ in range(st.depth):
                blocks.append(make_block(st.op, cin, st.width, stride, st.expand, spec.head_dim, dpr[b], grid))
                cin, stride, b = st.width, 1, b + 1
            stages.append(nn.Sequential(*blocks))
            reduction *= STRIDES[i]
            self.feature_info.append(dict(num_chs=st.width, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = HEAD_WIDTH
        self.conv_head = nn.Conv2d(cin, HEAD_WIDTH, 1, bias=False)
        self.bn_head = nn.BatchNorm2d(HEAD_WIDTH)
        self.act_head = nn.GELU()
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(HEAD_WIDTH, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # -- timm interface -----------------------------------------------------------
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.classifier = nn.Linear(HEAD_WIDTH, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.classifier)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("temperature", ".table", ".gamma"))}

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's contract: features at ``indices`` of ``feature_info`` (0 = stem, 1..6 = stages)."""
        from timm.models._features import feature_take_indices
        if output_fmt != "NCHW":
            raise ValueError("MetaNet only returns NCHW intermediates")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        last = max_index if stop_early else len(self.stages)
        for i, stage in enumerate(self.stages[:last]):
            x = stage(x)
            if i + 1 in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if last < len(self.stages):
            return x, intermediates
        return self.act_head(self.bn_head(self.conv_head(x))), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.act_head(self.bn_head(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _init_weights(m: nn.Module) -> None:
    # MetaNet / UniNet initialisation: truncated normal linears, unit LayerNorms; convs keep torch's default.
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_model(spec, **kwargs) -> MetaNet:
    """Build the plain model of a spec (an :class:`ArchSpec`, dict, JSON text, preset name or file)."""
    return MetaNet(spec, **kwargs)


# -- timm integration -------------------------------------------------------------------------

def checkpoint_filter_fn(state_dict: dict, model: MetaNet) -> dict:
    """Adapt a checkpoint to ``model``: relative-position tables trained at another resolution are resized."""
    import torch.nn.functional as F
    out = {}
    target = model.state_dict()
    for k, v in state_dict.items():
        if k.endswith("rel_pos.table") and k in target and v.shape != target[k].shape:
            v = F.interpolate(v[None].float(), size=target[k].shape[1:], mode="bicubic", align_corners=False)[0]
        out[k] = v
    return out


def _cfg(input_size: int = 224, **kwargs):
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return {"url": "", "num_classes": 1000, "input_size": (3, input_size, input_size),
            "pool_size": (math.ceil(input_size / 32),) * 2, "crop_pct": 0.875, "interpolation": "bicubic",
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.0",
            "classifier": "classifier", **kwargs}


def _create(variant: str, pretrained: bool, spec, **kwargs) -> MetaNet:
    from timm.models import build_model_with_cfg
    out_indices = kwargs.pop("out_indices", tuple(range(7)))
    return build_model_with_cfg(MetaNet, variant, pretrained, spec=spec,
                                pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)


def register_timm_models() -> None:
    """Register ``metanet`` (any spec: ``arch=``) and every preset as timm model names."""
    from timm.models import generate_default_cfgs, register_model
    from timm.models._registry import _model_entrypoints
    from .presets import PRESETS

    if "metanet" in _model_entrypoints:
        return

    def metanet(pretrained: bool = False, arch=None, **kwargs) -> MetaNet:
        """A searched backbone: ``arch`` is a spec JSON file, a dict, JSON text or a preset name."""
        if arch is None:
            raise ValueError("timm.create_model('metanet', ...) needs arch=<spec file, dict or preset name>")
        return _create("metanet", pretrained, as_spec(arch), **kwargs)
    metanet.__module__ = __name__
    register_model(metanet)
    cfgs = {"metanet": _cfg()}

    for name, preset in PRESETS.items():
        def builder(pretrained: bool = False, _name=name, _preset=preset, **kwargs) -> MetaNet:
            kwargs.setdefault("img_size", _preset.input_size)
            return _create(_name, pretrained, _preset.spec, **kwargs)
        builder.__name__ = name
        builder.__module__ = __name__
        register_model(builder)
        cfgs[name] = _cfg(preset.input_size)
    import timm.models._registry as registry
    for name, cfg in generate_default_cfgs(cfgs).items():
        registry._model_pretrained_cfgs.setdefault(name, cfg.default)
        registry._model_default_cfgs.setdefault(name, cfg)
        registry._model_has_pretrained.discard(name)
