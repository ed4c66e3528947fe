"""Everything metanet does with timm, in one module: registration, pretrained configs, loading exports.

* ``metanet`` (any spec through ``arch=``) and every preset are registered as timm model names as
  soon as both metanet and timm are imported, in either order (an import hook; ``import metanet``
  itself imports neither torch nor timm, so the CLI answers fast and ``metanet.kernels`` loads on a
  machine with torch and Triton alone);
* :func:`export_pretrained_cfg` is the pretrained config an export writes, and :func:`load_snippet`
  the line that loads it with ``timm.create_model``.

Registering imports nothing but timm's registry and the preset specs; the model module is imported
when a model is built.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import math
import sys
from pathlib import Path

# Training and export normalise images to [-1, 1]: mean and std 0.5 per channel.
EXPORT_MEAN = EXPORT_STD = (0.5, 0.5, 0.5)

def checkpoint_filter_fn(state_dict: dict, model) -> dict:
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
            "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD, "first_conv": "stem.conv",
            "classifier": "classifier", **kwargs}


def _create(variant: str, pretrained: bool, spec, **kwargs):
    from timm.models import build_model_with_cfg

    from .metanet import MetaNet
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

    def metanet(pretrained: bool = False, arch=None, **kwargs):
        """A searched backbone: ``arch`` is a spec JSON file, a dict, JSON text or a preset name."""
        from .metanet import as_spec
        if arch is None:
            raise ValueError("timm.create_model('metanet', ...) needs arch=<spec file, dict or preset name>")
        return _create("metanet", pretrained, as_spec(arch), **kwargs)
    metanet.__module__ = __name__
    register_model(metanet)
    cfgs = {"metanet": _cfg()}

    for name, preset in PRESETS.items():
        def builder(pretrained: bool = False, _name=name, _preset=preset, **kwargs):
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



# -- registering as soon as timm is imported ---------------------------------------------------------

def _register_if_usable() -> None:
    try:
        register_timm_models()
    except ImportError:  # timm unusable here (a kernels-only machine): nothing to register with
        pass


class _AfterTimmImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            _register_if_usable()

        spec.loader.exec_module = exec_then_register
        return spec


def install_timm_hook() -> None:
    """Make ``timm.create_model('metanet', ...)`` and the presets work in this process, whenever timm loads."""
    if sys.modules.get("timm") is not None:
        _register_if_usable()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())


# -- exports ------------------------------------------------------------------------------------------

def export_pretrained_cfg(num_classes: int, resolution: int) -> dict:
    """The timm pretrained config of an exported backbone."""
    return {"architecture": "metanet", "num_classes": num_classes, "input_size": [3, resolution, resolution],
            "crop_pct": 0.875, "interpolation": "bicubic", "mean": list(EXPORT_MEAN), "std": list(EXPORT_STD),
            "first_conv": "stem.conv", "classifier": "classifier"}


def load_snippet(out_dir: Path) -> str:
    """The one line that loads an export folder with timm."""
    d = Path(out_dir).resolve()
    return (f"import metanet, timm; model = timm.create_model('metanet', arch={str(d / 'arch.json')!r}, "
            f"pretrained=True, pretrained_cfg_overlay=dict(file={str(d / 'model.safetensors')!r}, num_classes=0))")
