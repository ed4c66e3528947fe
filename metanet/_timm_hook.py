"""Register metanet's models with timm as soon as both are imported, without importing timm ourselves.

``import metanet`` stays light (no torch, no timm: the CLI answers fast and ``metanet.kernels`` loads on
a machine with torch and Triton alone); the first ``import timm`` in the process, before or after
``import metanet``, makes ``timm.create_model('metanet', arch=...)`` and the presets available.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys


def _register() -> None:
    try:
        from metanet.search_spaces.timm_models import register_timm_models
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
            _register()

        spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    if sys.modules.get("timm") is not None:
        _register()
    elif not any(isinstance(f, _AfterTimmImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterTimmImport())
