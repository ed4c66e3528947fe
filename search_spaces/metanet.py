"""MetaNet: the plain ``nn.Module`` built from an architecture spec (no NNI needed).

Skeleton shared by INTERN's MetaNet and UniNet: a 3x3 stride-2 stem, six stages with strides
(1, 2, 2, 2, 1, 2), a 1x1 conv head to 1280 channels, global pooling and a classifier.

timm's model contract, as timm's own families meet it: ``forward_features`` (the unpooled NCHW map),
``forward_head(x, pre_logits=)``, ``forward_intermediates`` / ``prune_intermediate_layers``,
``feature_info``, ``group_matcher``, ``set_grad_checkpointing``, ``get_classifier`` /
``reset_classifier``; TorchScript, FX and ``features_only`` (hook and FX) work for any spec. The bottom
of this module registers ``metanet`` (any spec, ``arch=``) and the released presets with timm.
"""

import json
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn
from timm.layers import SelectAdaptivePool2d, calculate_drop_path_rates, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq

from metanet.search_spaces.operators import make_block, make_downsample
from metanet.search_spaces.spec import HEAD_WIDTH, STRIDES, ArchSpec, stage_grids

__all__ = ["MetaNet", "build_model", "as_spec", "stage_grids", "default_cfgs"]


def as_spec(spec: ArchSpec | Mapping[str, Any] | str | os.PathLike) -> ArchSpec:
    """Accept a spec, its dict, a JSON string, a preset name or a path to a spec JSON file."""
    if isinstance(spec, ArchSpec):
        return spec
    if isinstance(spec, Mapping):
        return ArchSpec.from_dict(spec)
    text = os.fspath(spec)
    if text.lstrip().startswith("{"):
        return ArchSpec.from_json(text)
    from metanet.search_spaces.presets import PRESETS
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

        self.grad_checkpointing = False
        dpr = calculate_drop_path_rates(drop_path_rate, sum(s.depth for s in spec.stages))  # linear per block
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
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))  # timm: '' = the map
        self.head_drop = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(HEAD_WIDTH, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    # -- timm interface -----------------------------------------------------------
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay: stem, blocks (stage-wise if ``coarse``), head."""
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else [
            (r"^stages\.(\d+)\.(\d+)", None), (r"^conv_head|^bn_head", (99999,))])

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:  # '' keeps the map unpooled (and unflattened), as timm's classifiers do
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            _init_weights(self.classifier)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("temperature", ".table", ".gamma"))}

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False):
        """timm's contract: the maps at ``indices`` of ``feature_info`` (0 = stem, 1..6 = stages; an int n
        takes the last n), then the final features unless ``intermediates_only``. No norm sits between
        stages, so ``norm`` changes nothing."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt: MetaNet returns NCHW maps, not {output_fmt}")
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages):
            x = stage(x)
            if i + 1 in take:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        if len(stages) < len(self.stages):
            return x, intermediates
        return self.act_head(self.bn_head(self.conv_head(x))), intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the head): what a detector's backbone keeps."""
        take, max_index = feature_take_indices(len(self.feature_info), indices)
        self.stages = self.stages[:max_index]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_head:
            self.conv_head, self.bn_head, self.act_head = nn.Identity(), nn.Identity(), nn.Identity()
            self.num_features = self.head_hidden_size = self.feature_info[-1]["num_chs"]
            self.reset_classifier(0, "")
        return take

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.act_head(self.bn_head(self.conv_head(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


NUM_FEATURE_LEVELS = 7  # stem + six stages


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


# -- timm registration ----------------------------------------------------------------------------
# Training and export normalise images to [-1, 1]: mean and std 0.5 per channel (one constant, shared with
# the data pipeline and the export config).
from metanet.search_spaces.timm_models import EXPORT_MEAN as METANET_MEAN, EXPORT_STD as METANET_STD  # noqa: E402


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: MetaNet) -> Dict[str, torch.Tensor]:
    """Adapt a checkpoint to ``model``: relative-position tables learned on another grid are resized
    (bicubic, as the model itself resizes them at run time)."""
    from timm.layers import resize_rel_pos_bias_table_simple
    target = model.state_dict()
    out = {}
    for k, v in state_dict.items():
        if k.endswith("rel_pos.table") and k in target and v.shape != target[k].shape:
            heads, h2, w2 = target[k].shape
            v = resize_rel_pos_bias_table_simple(v, ((h2 + 1) // 2, (w2 + 1) // 2), target[k].shape)
        out[k] = v
    return out


def _cfg(input_size: int = 224, mean=None, std=None, **kwargs) -> Dict[str, Any]:
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    return {"url": "", "num_classes": 1000, "input_size": (3, input_size, input_size),
            "pool_size": (math.ceil(input_size / 32),) * 2, "crop_pct": 0.875, "interpolation": "bicubic",
            "mean": mean or IMAGENET_DEFAULT_MEAN, "std": std or IMAGENET_DEFAULT_STD, "first_conv": "stem.conv",
            "classifier": "classifier", **kwargs}


# ``metanet``: a searched backbone, normalised as metanet trains and exports; the presets: the released
# MetaNet / UniNet models at their input sizes, normalised as their ImageNet weights were trained.
default_cfgs = generate_default_cfgs({
    "metanet": _cfg(mean=METANET_MEAN, std=METANET_STD),
    "metanet_b4": _cfg(224), "metanet_b15": _cfg(224),
    "uninet_b0": _cfg(160), "uninet_b1": _cfg(224), "uninet_b2": _cfg(256), "uninet_b3": _cfg(288),
    "uninet_b4": _cfg(320), "uninet_b5": _cfg(384), "uninet_b6": _cfg(448),
})


def _create(variant: str, pretrained: bool, spec, **kwargs) -> MetaNet:
    out_indices = kwargs.pop("out_indices", tuple(range(NUM_FEATURE_LEVELS)))
    return build_model_with_cfg(MetaNet, variant, pretrained, spec=spec, pretrained_filter_fn=checkpoint_filter_fn,
                                feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)


def export_config(arch) -> Optional[Dict[str, Any]]:
    """The pretrained config of a metanet export, when ``arch`` is the ``arch.json`` of an export folder."""
    if not isinstance(arch, (str, os.PathLike)) or os.fspath(arch).lstrip().startswith("{"):
        return None
    path = Path(arch).with_name("config.json")
    if Path(arch).name != "arch.json" or not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    cfg = config.get("pretrained_cfg") if isinstance(config, dict) and config.get("architecture") == "metanet" \
        else None
    if not isinstance(cfg, dict):
        return None
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # JSON lists: timm's tuples


def _preset(name: str, pretrained: bool, **kwargs) -> MetaNet:
    from metanet.search_spaces.presets import PRESETS
    kwargs.setdefault("img_size", PRESETS[name].input_size)
    return _create(name, pretrained, PRESETS[name].spec, **kwargs)


@register_model
def metanet(pretrained: bool = False, arch=None, **kwargs) -> MetaNet:
    """A searched backbone: ``arch`` is a spec JSON file (an export's ``arch.json``), a dict, JSON text or a
    preset name. An export's ``config.json`` beside ``arch.json`` supplies its pretrained config (classes,
    normalisation, input size) under whatever ``pretrained_cfg_overlay`` the caller gives."""
    if arch is None:
        raise ValueError("timm.create_model('metanet', ...) needs arch=<spec file, dict or preset name>")
    exported = export_config(arch)
    if exported:
        overlay = {k: v for k, v in exported.items() if k != "architecture"}
        kwargs["pretrained_cfg_overlay"] = {**overlay, **(kwargs.get("pretrained_cfg_overlay") or {})}
    return _create("metanet", pretrained, as_spec(arch), **kwargs)


@register_model
def metanet_b4(pretrained: bool = False, **kwargs) -> MetaNet:
    """INTERN MetaNet-B4 (MN-B4): MBConv stages 0-3, self-attention stages 4-5."""
    return _preset("metanet_b4", pretrained, **kwargs)


@register_model
def metanet_b15(pretrained: bool = False, **kwargs) -> MetaNet:
    """INTERN MetaNet-B15 (MN-B15): fused-MBConv, MBConv, XCA stages."""
    return _preset("metanet_b15", pretrained, **kwargs)


@register_model
def uninet_b0(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B0 at 160x160."""
    return _preset("uninet_b0", pretrained, **kwargs)


@register_model
def uninet_b1(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B1 at 224x224."""
    return _preset("uninet_b1", pretrained, **kwargs)


@register_model
def uninet_b2(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B2 at 256x256."""
    return _preset("uninet_b2", pretrained, **kwargs)


@register_model
def uninet_b3(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B3 at 288x288."""
    return _preset("uninet_b3", pretrained, **kwargs)


@register_model
def uninet_b4(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B4 at 320x320."""
    return _preset("uninet_b4", pretrained, **kwargs)


@register_model
def uninet_b5(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B5 at 384x384."""
    return _preset("uninet_b5", pretrained, **kwargs)


@register_model
def uninet_b6(pretrained: bool = False, **kwargs) -> MetaNet:
    """UniNet-B6 at 448x448."""
    return _preset("uninet_b6", pretrained, **kwargs)
