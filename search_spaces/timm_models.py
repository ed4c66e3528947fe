"""metanet and timm: the import hook that registers the models, and what an export tells timm.

* ``metanet`` (any spec through ``arch=``) and every preset are timm models, registered with
  ``@register_model`` in :mod:`metanet.search_spaces.metanet` (with its ``default_cfgs``). That module is
  imported as soon as both metanet and timm are (an import hook, in either order): ``import metanet``
  itself imports neither torch nor timm, so the CLI answers fast and ``metanet.kernels`` loads on a
  machine with torch and Triton alone;
* :func:`export_pretrained_cfg` is the pretrained config an export writes, and :func:`load_snippet`
  the line that loads it with ``timm.create_model``.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import math
import sys
from pathlib import Path

# Training and export normalise images to [-1, 1] (metanet.data.normalisation), and the ``metanet`` model's
# default config carries it.
from metanet.data.normalisation import MEAN as EXPORT_MEAN, STD as EXPORT_STD  # noqa: E402


def register_timm_models() -> None:
    """Register ``metanet`` and every preset with timm (importing the model module does it, once)."""
    importlib.import_module("metanet.search_spaces.metanet")


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
    """The timm pretrained config of an exported backbone: what ``timm.create_model('metanet', arch=...)``
    applies to it (classes of the exported classifier, normalisation the weights were trained with)."""
    return {"architecture": "metanet", "num_classes": num_classes, "input_size": [3, resolution, resolution],
            "pool_size": [math.ceil(resolution / 32)] * 2, "crop_pct": 0.875, "interpolation": "bicubic",
            "mean": list(EXPORT_MEAN), "std": list(EXPORT_STD), "first_conv": "stem.conv",
            "classifier": "classifier"}


def load_snippet(out_dir: Path) -> str:
    """The one line that loads an export folder with timm."""
    d = Path(out_dir).resolve()
    return (f"import metanet, timm; model = timm.create_model('metanet', arch={str(d / 'arch.json')!r}, "
            f"pretrained=True, pretrained_cfg_overlay=dict(file={str(d / 'model.safetensors')!r}))")
