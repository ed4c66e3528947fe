"""Data for the evaluation stages: upstream label sources and downstream tasks, read as users have them.

``--data`` takes the embedded demo (``digits``), a folder (a plain classification dataset,
``train/<class>/*.jpg`` with optional ``val/`` and ``test/``, folders or ``.tar`` files; or INTERN's
``upstream/<source>/`` and ``downstream/<task>/`` layout), or a dataset timm names (``hfds/NAME``,
``wds/NAME`` with ``--data-dir``). Everything is read with timm's readers and decoded once per search.

What lives where: :mod:`.bundle` (splits and the bundle the stages receive), :mod:`.images` (image
sources, views and transforms), :mod:`.folders` (the folder layouts, links and skipped files),
:mod:`.timm_datasets` (``hfds/`` and ``wds/``), :mod:`.decoded` (the decode-once cache),
:mod:`.augment` (training augmentation on decoded tensors), :mod:`.digits` (the demo) and :mod:`.load`
(``--data`` to a bundle). This package imports nothing of metanet's but its errors and the export
normalisation; the stages import it, never the reverse.
"""
# The names below, imported from their modules on first use (PEP 562): `import metanet` reads the normalisation
# constants from this package, and that should not import torch.
_EXPORTS = {
    "DataError": "metanet.errors", "DEFAULT_MIN_VAL_IMAGES": "metanet.data.bundle",
    "DEFAULT_VAL_FRACTION": "metanet.data.bundle", "DataBundle": "metanet.data.bundle", "Split": "metanet.data.bundle",
    "dataset_labels": "metanet.data.bundle", "for_eval": "metanet.data.bundle", "split_indices": "metanet.data.bundle",
    "subset": "metanet.data.bundle", "HELDOUT_DIGITS": "metanet.data.digits", "UPSTREAM_DIGITS": "metanet.data.digits",
    "load_digits_bundle": "metanet.data.digits", "load_folder_bundle": "metanet.data.folders",
    "read_tasks": "metanet.data.folders", "ImageSource": "metanet.data.images", "ImageTransforms": "metanet.data.images",
    "ImageViews": "metanet.data.images", "folder_workers": "metanet.data.images", "to_rgb": "metanet.data.images",
    "load_data": "metanet.data.load",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metanet.data' has no attribute {name!r}")
