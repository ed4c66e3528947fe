"""Datasets named as timm names them, read from disk with timm's readers; nothing is ever downloaded.

* ``hfds/NAME`` with ``--data-dir DIR``: a Hugging Face dataset already on disk, read by timm's
  ``ReaderHfds`` (``datasets.load_dataset(NAME, cache_dir=DIR)`` in offline mode). NAME is a folder
  (``DIR/NAME`` or a path: a dataset saved with ``save_to_disk``, or parquet/arrow files as the Hub stores
  them) or a Hub name whose download is already in DIR's cache. Needs the optional ``datasets`` package
  (``pip install 'metanet[hf]'``). The cache ``datasets`` writes goes to DIR.
* ``wds/NAME`` with ``--data-dir DIR``: WebDataset shards in DIR described by ``DIR/_info.json`` (timm's
  ``ReaderWds``: splits with their shard files and sample counts; samples ``KEY.jpg`` with ``KEY.cls``). The
  form of data that lives on another machine or in an object store once a search outgrows one box.
  Shards are streamed, so they are read once, straight into the decoded-image cache: ``--no-cache`` is
  refused. ``_info.json`` may name the classes (``"classes": [...]``). Needs ``webdataset``
  (``pip install 'metanet[wds]'``).

Splits: ``train``; a validation split (``validation``, ``val`` or ``valid``) used as given, else carved
from train; ``test`` if there is one, else carved from train (reported only). The data is one upstream
label source named after the dataset.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from metanet.errors import DataError
from metanet.data.bundle import DataBundle, Split, split_indices
from metanet.data.images import ImageSource, ImageTransforms, ImageViews

PREFIXES = ("hfds", "wds")
VAL_NAMES = ("validation", "val", "valid")
_STREAMED: dict[str, ImageSource] = {}  # fingerprint|resolution -> a decoded streamed split (once per process)


def is_timm_name(source: str) -> bool:
    prefix, sep, rest = source.partition("/")
    return bool(sep) and prefix.lower() in PREFIXES and bool(rest)


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


# -- Hugging Face datasets -----------------------------------------------------------------------------

def _offline_datasets():
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import datasets
    except ImportError:
        raise DataError("data: hfds/ datasets need the datasets package: pip install 'metanet[hf]'") from None
    datasets.config.HF_HUB_OFFLINE = True  # also when it was imported before the variables were set
    datasets.config.HF_DATASETS_OFFLINE = True
    datasets.disable_progress_bars()  # one bar per split and load would drown the search's own lines
    return datasets


def _hfds_split(shown: str, name: str, data_dir: str, split: str, required: bool) -> ImageSource | None:
    from timm.data.readers import create_reader
    try:
        reader = create_reader(f"hfds/{name}", root=data_dir, split=split)
    except ValueError as exc:
        if "Unknown split" in str(exc) and not required:
            return None
        raise DataError(f"data: {shown}: split {split!r}: {_one_line(exc)}") from None
    except (ConnectionError, FileNotFoundError) as exc:
        raise DataError(f"data: {shown}: not found on disk (looked for the folder {name} and for it in the cache "
                        f"{data_dir}; nothing is downloaded): {_one_line(exc)}") from None
    except Exception as exc:
        raise DataError(f"data: {shown}: cannot read split {split!r} ({_one_line(exc)})") from None
    targets = [int(t) for t in reader.iter_targets()]
    names = {i: c for c, i in reader.class_to_idx.items()}
    labels = [names.get(t, str(t)) for t in targets]
    fingerprint = hashlib.sha256(f"{reader.dataset._fingerprint}|{len(targets)}".encode()).hexdigest()[:20]
    return ImageSource.from_labels(f"{shown}[{split}]", reader, labels,
                                   [f"{shown}[{split}][{i}]" for i in range(len(targets))], fingerprint,
                                   order=[names[i] for i in sorted(names)])


def _load_hfds(name: str, data_dir: str) -> dict[str, ImageSource]:
    _offline_datasets()
    shown = f"hfds/{name}"
    local = Path(data_dir) / name
    target = str(local) if local.is_dir() else name
    out = {"train": _hfds_split(shown, target, data_dir, "train", required=True)}
    for split in VAL_NAMES:
        val = _hfds_split(shown, target, data_dir, split, required=False)
        if val is not None:
            out["val"] = val
            break
    test = _hfds_split(shown, target, data_dir, "test", required=False)
    if test is not None:
        out["test"] = test
    return out


# -- WebDataset shards ----------------------------------------------------------------------------------

def _wds_info(shown: str, data_dir: Path) -> dict:
    for name in ("_info.json", "info.json"):
        path = data_dir / name
        if path.is_file():
            try:
                info = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise DataError(f"{path}: not valid JSON ({_one_line(exc)})") from None
            if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
                raise DataError(f"{path}: expected {{\"splits\": {{\"train\": {{\"filenames\": [...], "
                                "\"num_samples\": N, ...}}}}}")
            return info
    raise DataError(f"data: {shown}: {data_dir} has no _info.json describing the shards' splits")


def _wds_fingerprint(data_dir: Path, info: dict, split: str) -> str:
    lines = [json.dumps(info["splits"][split], sort_keys=True)]
    for f in info["splits"][split].get("filenames", []):
        path = data_dir / f
        try:
            st = path.stat()
        except OSError:
            raise DataError(f"data: {path}: shard listed in _info.json is missing") from None
        lines.append(f"{f}\t{st.st_size}\t{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:20]


def _wds_split(shown: str, name: str, data_dir: Path, info: dict, split: str, transforms: ImageTransforms,
               cache_dir, notes: list[str]) -> ImageSource:
    from metanet.data.decoded import cached_listing, decoded_count
    fingerprint = _wds_fingerprint(data_dir, info, split)
    memo = f"{fingerprint}|{transforms.cache_key}"
    if memo in _STREAMED:
        return _STREAMED[memo]
    where = f"{shown}[{split}]"
    restored = cached_listing(cache_dir, where, fingerprint, transforms) if cache_dir is not None else None
    if restored is not None:
        _STREAMED[memo] = restored
        return restored
    try:
        import webdataset  # noqa: F401
    except ImportError:
        raise DataError("data: wds/ datasets need the webdataset package: pip install 'metanet[wds]'") from None
    from timm.data.readers import create_reader
    try:
        reader = create_reader(f"wds/{name}", root=str(data_dir), split=split, is_training=False)
        images, targets = [], []
        for img, target in reader:
            images.append(transforms.geometry(img.convert("RGB")))
            targets.append(int(target))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data: {where}: cannot read the shards ({_one_line(exc)})") from None
    expected = int(info["splits"][split].get("num_samples") or 0)
    if not images:
        raise DataError(f"data: {where}: no samples could be read from the shards")
    if expected and len(images) < expected:
        notes.append(f"data: {where}: {expected - len(images)} of {expected} samples could not be decoded and were "
                     "skipped (see the warnings above)")
    names = info.get("classes")
    if not (isinstance(names, list) and all(isinstance(c, str) for c in names) and len(names) > max(targets)):
        names = [str(i) for i in range(max(targets) + 1)]
    labels = [names[t] for t in targets]
    source = ImageSource.from_labels(where, None, labels, [f"{where}#{i}" for i in range(len(targets))], fingerprint,
                                     order=list(names))
    source.pixels, source.pixels_resolution, source.pixels_from = torch.stack(images), transforms.resolution, "memory"
    decoded_count(len(images))
    _STREAMED[memo] = source
    return source


def _load_wds(name: str, data_dir: str, transforms: ImageTransforms, cache: bool, cache_dir,
              notes: list[str]) -> dict[str, ImageSource]:
    shown = f"wds/{name}"
    if not cache:
        raise DataError(f"data: {shown}: WebDataset shards are streamed, so they are read once into the cache; "
                        "--no-cache needs data read by index (a folder, a .tar or hfds/)")
    root = Path(data_dir)
    info = _wds_info(shown, root)
    splits = info["splits"]
    if "train" not in splits:
        raise DataError(f"data: {shown}: _info.json has no 'train' split (splits: {', '.join(splits) or 'none'})")
    out = {"train": _wds_split(shown, name, root, info, "train", transforms, cache_dir, notes)}
    val = next((s for s in VAL_NAMES if s in splits), None)
    if val:
        out["val"] = _wds_split(shown, name, root, info, val, transforms, cache_dir, notes)
    if "test" in splits:
        out["test"] = _wds_split(shown, name, root, info, "test", transforms, cache_dir, notes)
    return out


# -- the bundle --------------------------------------------------------------------------------------------

def load_timm_dataset(source: str, data_dir: str | None, resolution: int, seed: int, test_fraction: float = 0.2,
                      cache: bool = True, cache_dir=None) -> DataBundle:
    prefix, _, name = source.partition("/")
    prefix = prefix.lower()
    if not data_dir:
        raise DataError(f"data: {source} needs --data-dir DIR, the folder that holds it (nothing is downloaded)",
                        param="data_dir")
    if not os.path.isdir(data_dir):
        raise DataError(f"data-dir: {data_dir}: no such folder", param="data_dir")
    transforms = ImageTransforms(resolution)
    notes: list[str] = []
    if prefix == "hfds":
        parts = _load_hfds(name, data_dir)
    else:
        parts = _load_wds(name, data_dir, transforms, cache, cache_dir, notes)
    train = parts["train"]
    if len(train.classes) < 2:
        raise DataError(f"data: {train.where}: has one class ({train.classes[0]!r}); a classification task needs "
                        "at least two")
    for part in ("val", "test"):
        if part in parts:
            parts[part].align_to(train, "validation" if part == "val" else part)

    def views(src, indices=None, train_use=False):
        return ImageViews(src, range(len(src)) if indices is None else indices, transforms, train_use)

    if "test" in parts:
        train_views, test_views = views(train, train_use=True), views(parts["test"])
    else:
        tr, te = split_indices(len(train), test_fraction, seed)
        train_views, test_views = views(train, sorted(tr.tolist()), True), views(train, sorted(te.tolist()))
        notes.append(f"data: {source}: no test split; {test_fraction:.0%} of train held out as the test set "
                     "(reported, never scored)")
    split = Split(train_views, test_views, len(train.classes), list(train.classes),
                  views(parts["val"]) if "val" in parts else None)
    label = name.rstrip("/").split("/")[-1] or prefix
    return DataBundle(label, resolution, {label: split}, notes=notes)
