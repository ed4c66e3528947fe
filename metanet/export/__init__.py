"""Out of metanet: a searched backbone exported as a folder ``timm.create_model`` loads, with TorchScript and
ONNX beside it (:mod:`.run_export`), and official MetaNet/UniNet checkpoints converted to metanet's module
names (:mod:`.convert`).

May import: every package before :mod:`metanet.search` (it reads runs; it never runs a search).
"""
_EXPORTS = {"export_run": "metanet.export.run_export", "convert_checkpoint": "metanet.export.convert"}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    import importlib
    module = importlib.import_module("metanet.export.run_export")  # the module that was metanet.export
    if hasattr(module, name):
        return getattr(module, name)
    raise AttributeError(f"module 'metanet.export' has no attribute {name!r}")
