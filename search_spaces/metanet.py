"""MetaNet: the plain ``nn.Module`` built from an architecture spec (no NNI needed).

Skeleton shared by INTERN's MetaNet and UniNet: a 3x3 stride-2 stem, six stages with strides
(1, 2, 2, 2, 1, 2), a 1x1 conv head to 1280 channels, global pooling and a classifier.
The interface follows timm: ``forward_features`` / ``forward_head``, ``get_classifier`` /
``reset_classifier``, ``num_features`` and ``feature_info``.
"""
from __future__ import annotations

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


class ConvStem(nn.Module):
    """3x3 stride-2 conv, BN, GELU (a module, not a Sequential, so timm's feature wrapper keeps it whole)."""

    def __init__(self, in_chans: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


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

        self.stem = ConvStem(in_chans, spec.stem_width)
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
