"""``--data`` to a bundle: a registered dataset, a folder, or a timm dataset name; then the extra downstream
tasks, the validation splits and the decoded-image cache."""
from __future__ import annotations

import os
from pathlib import Path

from metanet.errors import DataError
from metanet.data.bundle import DEFAULT_MIN_VAL_IMAGES, DEFAULT_VAL_FRACTION, DataBundle
from metanet.data.timm_datasets import is_timm_name, load_timm_dataset


def load_data(pm, source: str, resolution: int, seed: int, val_fraction: float = DEFAULT_VAL_FRACTION, *,
              data_dir: str | None = None, downstream=(), cache: bool = True,
              cache_dir: str | os.PathLike | None = None, min_val_images: int = DEFAULT_MIN_VAL_IMAGES) -> DataBundle:
    """The data of ``source`` with a validation set in every split (carved from training data with
    ``val_fraction`` where the data has none, and at least ``min_val_images`` where that leaves three quarters of
    the training set) and its images decoded once (:mod:`metanet.data.decoded`).

    ``source``: a registered dataset by name, ``NAME:PATH`` for a loader that reads a folder, a bare path
    (an existing folder, or text with a path separator: the one registered loader that reads folders,
    ``folder`` unless plugins add more), or ``hfds/NAME`` / ``wds/NAME`` with ``data_dir``
    (:mod:`metanet.data.timm_datasets`). ``downstream``: folders of more downstream tasks
    (:func:`metanet.data.folders.read_tasks`). ``cache=False`` leaves images to be decoded per step;
    ``cache_dir`` is where a search process wrote decoded images for its trial processes to map.
    """
    if is_timm_name(source) and not os.path.isdir(source):
        bundle = load_timm_dataset(source, data_dir, resolution, seed, cache=cache, cache_dir=cache_dir)
    else:
        bundle = _load(pm, source, resolution, seed)
    for folder in downstream or ():
        from metanet.data.folders import DEFAULT_TEST_FRACTION, read_tasks
        from metanet.data.images import ImageTransforms
        notes: list[str] = []
        path = Path(folder)
        if not path.is_dir():
            raise DataError(f"downstream: {folder}: no such folder", param="downstream")
        bundle = bundle.with_tasks(read_tasks(path, ImageTransforms(bundle.resolution), seed, DEFAULT_TEST_FRACTION, notes),
                                   f"downstream: {folder}")
        bundle.notes.extend(notes)
    bundle = bundle.with_validation(val_fraction, seed, min_val_images)
    from metanet.data.decoded import decode_bundle
    return decode_bundle(bundle, cache=cache, cache_dir=cache_dir)


def _load(pm, source: str, resolution: int, seed: int) -> DataBundle:
    name, colon, path = source.partition(":")
    if colon and name in pm.registry["datasets"]:
        dataset = pm.dataset(name)
        if not dataset.takes_path:
            raise DataError(f"data: dataset {name!r} does not read a folder; use --data {name}")
        return _bundle(dataset, dataset.load(resolution, seed, path))
    if os.path.isdir(source) or os.sep in source:
        readers = [d for d in pm.registry["datasets"].values() if d.takes_path]
        if len(readers) != 1:
            names = ", ".join(d.name for d in readers) or "none"
            raise DataError(f"data: {source} is a folder; say which loader reads it as NAME:{source} ({names})")
        return _bundle(readers[0], readers[0].load(resolution, seed, source))
    dataset = pm.dataset(source)
    return _bundle(dataset, dataset.load(resolution, seed))


def _bundle(dataset, bundle) -> DataBundle:
    """What a loader returned, if it is a bundle; else one line naming the plugin."""
    if not isinstance(bundle, DataBundle):
        raise dataset.error(f"loader returned {type(bundle).__name__}, not a metanet.data.DataBundle")
    return bundle


_loaded: dict[tuple, DataBundle] = {}


def absolute_data(source: str) -> str:
    """``PATH`` or ``NAME:PATH`` with an existing folder made absolute; a dataset name as it is (what trials in
    other working directories, NNI's trial processes, can use)."""
    name, colon, path = source.partition(":")
    if colon and os.path.isdir(path):
        return f"{name}:{os.path.abspath(path)}"
    return os.path.abspath(source) if os.path.isdir(source) else source


def load_cached(pm, data: str, proxy_resolution: int, seed: int, val_fraction: float, *, data_dir: str | None = None,
                downstream=(), cache: bool = True, cache_dir: str | None = None,
                min_val_images: int | None = None) -> DataBundle:
    """:func:`load_data`, once per process for the same arguments: a search's checks load what its trials then
    use, and every trial of the sequential engine shares it."""
    min_val = DEFAULT_MIN_VAL_IMAGES if min_val_images is None else min_val_images
    key = (absolute_data(data), proxy_resolution, seed, val_fraction, data_dir and os.path.abspath(data_dir),
           tuple(os.path.abspath(d) for d in downstream or ()), cache, min_val)
    if key not in _loaded:
        _loaded[key] = load_data(pm, key[0], proxy_resolution, seed, val_fraction, data_dir=data_dir,
                                 downstream=downstream, cache=cache, cache_dir=cache_dir, min_val_images=min_val)
    return _loaded[key]


def forget_loaded() -> None:
    """Read the data again on the next load (a re-run checks the data as it is now)."""
    _loaded.clear()
