"""Data for the evaluation stages: upstream label sources and downstream tasks.

Two loaders ship with metanet (registered by the ``metanet.plugins.datasets`` plugin):

* ``digits``: scikit-learn's handwritten digits (shipped with scikit-learn, no download), upscaled
  to the proxy resolution. Upstream sees digits 0-6 under three label sources: ``digit`` (7
  classes), ``parity`` and ``magnitude`` (0-3 vs 4-6). The downstream task ``heldout_digits``
  (7, 8, 9) uses images the upstream never saw.
* ``folder``: a directory with ``upstream/<source>/`` and ``downstream/<task>/``, each an
  ImageFolder (class sub-folders), or holding ``train/`` and ``test/`` (and optionally ``val/``)
  ImageFolders. A task folder may hold ``train_<N>pct.txt``: a fixed list of the images of its
  N% subset (as GV-B's meta lists), used verbatim by ``downstream``.

Every split has three parts: ``train`` (what stages learn from), ``val`` (what rewards are
computed on) and ``test`` (reported only). Unless a loader gives a validation set, it is carved
out of the training set by :meth:`DataBundle.with_validation` (stratified, seeded), so the search
never selects on the images it reports.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset, TensorDataset

from .errors import DataError


DEFAULT_VAL_FRACTION = 0.2
# Decoding processes per loader of folder data; None: a quarter of the cores, at most 8. Workers only pay
# where cores are spare: on 2 cores they took them from the training step (-35% images/s, measured by
# benchmarks/training.py), so there the main process decodes.
FOLDER_WORKERS: int | None = None


def folder_workers() -> int:
    if FOLDER_WORKERS is not None:
        return FOLDER_WORKERS
    return min(8, (os.cpu_count() or 1) // 4)


def _mean_std():
    # one normalisation for the data, the timm config and the export config
    from metanet.search_spaces.timm_models import EXPORT_MEAN, EXPORT_STD
    return EXPORT_MEAN, EXPORT_STD


class ImageViews(Dataset):
    """Images of an ImageFolder at ``indices``, decoded on demand with the transform of their use:
    timm's training transform (random resized crop, flip, colour jitter) to learn from, its
    evaluation transform (resize keeping the aspect ratio, centre crop) to measure or extract on."""

    def __init__(self, folder, indices, transforms: dict, train: bool):
        self.folder, self.indices, self.transforms, self.train = folder, list(indices), transforms, train
        self.workers = folder_workers()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        path, target = self.folder.samples[self.indices[i]]
        return self.transforms["train" if self.train else "eval"](self.folder.loader(path)), target

    @property
    def targets(self) -> list[int]:
        return [self.folder.targets[i] for i in self.indices]

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [self.folder.samples[i] for i in self.indices]

    def subset(self, idx, train: bool | None = None) -> "ImageViews":
        return ImageViews(self.folder, [self.indices[i] for i in idx], self.transforms,
                          self.train if train is None else train)

    def for_eval(self) -> "ImageViews":
        return ImageViews(self.folder, self.indices, self.transforms, False)


def subset(ds: Dataset, idx) -> Dataset:
    """``idx`` of ``ds``, keeping image views as views (with their transforms)."""
    return ds.subset(idx) if isinstance(ds, ImageViews) else Subset(ds, list(idx))


def for_eval(ds: Dataset) -> Dataset:
    """``ds`` as it is measured: image views with the evaluation transform (tensors are unchanged)."""
    return ds.for_eval() if isinstance(ds, ImageViews) else ds


@dataclass
class Split:
    """One labelled classification problem: train, validation (rewards) and test (reported) sets."""

    train: Dataset
    test: Dataset
    num_classes: int
    classes: list[str]
    val: Dataset | None = None
    # fixed subsets of ``train`` given by the data (fraction -> indices into train), e.g. GV-B's 10% lists
    subsets: dict[float, list[int]] = field(default_factory=dict)

    def labels(self, which: str = "train") -> torch.Tensor:
        return dataset_labels(getattr(self, which))

    def with_validation(self, fraction: float, seed: int, where: str = "data") -> "Split":
        """This split with ``fraction`` of each class of ``train`` moved to ``val`` (kept if it has one).

        Images of a fixed subset stay in ``train``: the subset is used verbatim.
        """
        if self.val is not None:
            return self
        if not 0 < fraction < 1:
            raise DataError(f"{where}: val_fraction must be in (0, 1) to carve a validation set, got {fraction}")
        labels = dataset_labels(self.train)
        keep = torch.zeros(len(labels), dtype=torch.bool)
        for idx in self.subsets.values():
            keep[torch.as_tensor(idx, dtype=torch.long)] = True
        g = torch.Generator().manual_seed(seed)
        val = []
        for c in labels.unique():
            idx = ((labels == c) & ~keep).nonzero().flatten()
            idx = idx[torch.randperm(len(idx), generator=g)]
            # at least one image of a class in val, and never its last one in train
            n = min(max(1, round(fraction * int((labels == c).sum()))), len(idx) - 1)
            val.extend(idx[:max(n, 0)].tolist())
        if not val:
            raise DataError(f"{where}: too few training images to carve a validation set")
        in_val = torch.zeros(len(labels), dtype=torch.bool)
        in_val[torch.as_tensor(val)] = True
        rest = (~in_val).nonzero().flatten().tolist()
        new_index = {old: new for new, old in enumerate(rest)}
        subsets = {f: [new_index[i] for i in idx] for f, idx in self.subsets.items()}
        return replace(self, train=subset(self.train, rest), val=for_eval(subset(self.train, sorted(val))),
                       subsets=subsets)


@dataclass
class DataBundle:
    name: str
    resolution: int
    sources: dict[str, Split] = field(default_factory=dict)  # upstream label sources
    tasks: dict[str, Split] = field(default_factory=dict)    # downstream tasks
    in_chans: int = 3

    def require_sources(self, names=None) -> dict[str, Split]:
        if not self.sources:
            raise DataError(f"data '{self.name}' has no upstream sources")
        return _select(self.sources, names, f"data '{self.name}'", "source")

    def require_tasks(self, names=None) -> dict[str, Split]:
        if not self.tasks:
            raise DataError(f"data '{self.name}' has no downstream tasks")
        return _select(self.tasks, names, f"data '{self.name}'", "task")

    def with_validation(self, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0) -> "DataBundle":
        """Every split with a validation set: the loader's, else carved from its training set."""
        if all(s.val is not None for s in [*self.sources.values(), *self.tasks.values()]):
            return self
        return replace(self, sources={n: s.with_validation(fraction, seed, f"data '{self.name}': source {n!r}")
                                      for n, s in self.sources.items()},
                       tasks={n: s.with_validation(fraction, seed + 1, f"data '{self.name}': task {n!r}")
                              for n, s in self.tasks.items()})


def _select(table, names, where, kind):
    if names is None:
        return dict(table)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"{where}: unknown {kind} {unknown[0]!r} (has {', '.join(table)})")
    return {n: table[n] for n in names}


def dataset_labels(ds: Dataset) -> torch.Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if isinstance(ds, ImageViews):
        return torch.as_tensor(ds.targets, dtype=torch.long)
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices)]
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets)
    return torch.as_tensor([ds[i][1] for i in range(len(ds))])


def _split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]


# -- digits ---------------------------------------------------------------------------------

UPSTREAM_DIGITS = tuple(range(7))
HELDOUT_DIGITS = (7, 8, 9)


def load_digits_bundle(resolution: int = 32, seed: int = 0, test_fraction: float = 0.3) -> DataBundle:
    from sklearn.datasets import load_digits
    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    mean, std = _mean_std()
    images = ((images - mean[0]) / std[0]).repeat(1, 3, 1, 1)
    target = torch.as_tensor(digits.target, dtype=torch.long)

    up = torch.isin(target, torch.tensor(UPSTREAM_DIGITS))
    x_up, y_up = images[up], target[up]
    tr, te = _split_indices(len(y_up), test_fraction, seed)
    labels = {
        "digit": (y_up, [str(d) for d in UPSTREAM_DIGITS]),
        "parity": (y_up % 2, ["even", "odd"]),
        "magnitude": ((y_up >= 4).long(), ["0-3", "4-6"]),
    }
    sources = {name: Split(TensorDataset(x_up[tr], y[tr]), TensorDataset(x_up[te], y[te]), len(cls), cls)
               for name, (y, cls) in labels.items()}

    down = torch.isin(target, torch.tensor(HELDOUT_DIGITS))
    x_dn, y_dn = images[down], target[down] - HELDOUT_DIGITS[0]
    tr, te = _split_indices(len(y_dn), test_fraction, seed + 1)
    tasks = {"heldout_digits": Split(TensorDataset(x_dn[tr], y_dn[tr]), TensorDataset(x_dn[te], y_dn[te]),
                                     len(HELDOUT_DIGITS), [str(d) for d in HELDOUT_DIGITS])}
    return DataBundle("digits", resolution, sources, tasks)


# -- ImageFolder directories ------------------------------------------------------------------

def to_rgb(img):
    """An RGB image of any PIL mode, with the full range of each mode kept: 16-bit and 32-bit greyscale
    are scaled down (PIL's own ``convert`` clips them to white), palette and alpha images composited on
    black, CMYK/LA/YCbCr converted."""
    import numpy as np
    from PIL import Image
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or (img.mode == "I" and a.max() <= 65535) else max(a.max(), 1)
        if img.mode == "F":
            lo, hi = float(a.min()), float(a.max())
            a, top = a - lo, max(hi - lo, 1e-12)
        img = Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img.convert("RGBA"))
    return img.convert("RGB")


def _image_loader(path: str):
    from PIL import Image
    try:
        with open(path, "rb") as fh:
            return to_rgb(Image.open(fh))
    except Exception as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None


def _folder_samples(root: Path, class_to_idx: dict, extensions) -> list[tuple[str, int]]:
    """(path, class) of the images under each class folder, walked without following links to folders
    (a link loop would repeat images and cross splits) and without files that resolve outside ``root``."""
    real_root = os.path.realpath(root)
    samples = []
    for name in sorted(class_to_idx):
        for folder, dirs, files in os.walk(root / name, followlinks=False):
            dirs.sort()  # in place: os.walk then descends in this order
            for f in sorted(files):
                full = os.path.join(folder, f)
                if not f.lower().endswith(extensions):
                    continue
                if os.path.islink(full) and os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
                    continue  # a link out of the data folder
                if os.path.isfile(full):
                    samples.append((full, class_to_idx[name]))
    return samples


def _image_folder(path: Path, transform=None):
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    class SafeImageFolder(ImageFolder):
        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            samples = _folder_samples(Path(directory), class_to_idx, tuple(extensions or IMG_EXTENSIONS))
            empty = [c for c, i in class_to_idx.items() if i not in {y for _, y in samples}]
            if empty and not allow_empty:
                raise FileNotFoundError(f"Found no valid file for the classes {', '.join(empty)} in {directory}")
            return samples

    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"{path}: folder is not readable")
    try:
        ds = SafeImageFolder(str(path), transform=transform, loader=_image_loader)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: empty folder: {str(exc).split(' in ')[0]} (expected one sub-folder per class "
                        "holding images)") from None
    except PermissionError as exc:
        raise DataError(f"{path}: not readable ({exc.strerror})") from None
    if len(ds.classes) < 2:
        raise DataError(f"{path}: has one class ({ds.classes[0]!r}); a classification task needs at least two")
    return ds


def _folder_split(path: Path, transforms: dict, seed: int, test_fraction: float) -> Split:
    def views(folder, indices=None, train=False):
        return ImageViews(folder, range(len(folder)) if indices is None else indices, transforms, train)

    if (path / "train").is_dir() and (path / "test").is_dir():
        train = _image_folder(path / "train")
        test = _image_folder(path / "test")
        val = _image_folder(path / "val") if (path / "val").is_dir() else None
        for name, part in (("test", test), ("val", val)):
            if part is not None and part.classes != train.classes:
                raise DataError(f"{path}: train/ and {name}/ have different classes")
        return Split(views(train, train=True), views(test), len(train.classes), list(train.classes),
                     views(val) if val is not None else None,
                     _subset_lists(path, path / "train", [p for p, _ in train.samples]))
    full = _image_folder(path)
    tr, te = _split_indices(len(full), test_fraction, seed)
    tr, te = tr.tolist(), te.tolist()
    listed = _listed_paths(path, path)
    if listed:  # listed images belong to train, wherever the random test split would have put them
        moved = [i for i in te if os.path.normpath(full.samples[i][0]) in listed]
        te = [i for i in te if i not in set(moved)]
        tr = tr + moved
    return Split(views(full, tr, train=True), views(full, te), len(full.classes), list(full.classes),
                 subsets=_subset_lists(path, path, [full.samples[i][0] for i in tr]))


def _subset_files(task: Path, images: Path) -> list[tuple[Path, float, list[tuple[int, str, str]]]]:
    """Every ``train_<N>pct.txt`` of ``task``: (file, N/100, [(line number, entry, normalised path)]), one
    image per line relative to ``images``, an optional label column after it, ``#`` comments."""
    out = []
    for f in sorted(task.glob("train_*pct.txt")):
        try:
            fraction = float(f.name[len("train_"):-len("pct.txt")]) / 100
        except ValueError:
            raise DataError(f"{f}: expected a name train_<N>pct.txt with N a number") from None
        if not 0 < fraction <= 1:
            raise DataError(f"{f}: N must be in (0, 100]")
        try:
            lines = f.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{f}: cannot read ({type(exc).__name__}: {exc})") from None
        entries = [(n, line.split()[0], os.path.normpath(images / line.split()[0]))
                   for n, line in enumerate(lines, 1) if line.strip() and not line.split()[0].startswith("#")]
        if not entries:
            raise DataError(f"{f}: lists no image")
        out.append((f, fraction, entries))
    return out


def _listed_paths(task: Path, images: Path) -> set[str]:
    return {path for _, _, entries in _subset_files(task, images) for _, _, path in entries}


def _subset_lists(task: Path, images: Path, train_paths: list[str]) -> dict[float, list[int]]:
    """Fixed subsets of the training images, from ``train_<N>pct.txt`` files: fraction -> train indices."""
    index = {os.path.normpath(p): i for i, p in enumerate(train_paths)}
    subsets = {}
    for f, fraction, entries in _subset_files(task, images):
        picked = []
        for n, entry, path in entries:
            if path not in index:
                raise DataError(f"{f}:{n}: {entry!r} is not an image of the training set of {task}")
            picked.append(index[path])
        subsets[fraction] = sorted(set(picked))
    return subsets


def load_folder_bundle(root: str | os.PathLike, resolution: int = 32, seed: int = 0,
                       test_fraction: float = 0.2) -> DataBundle:
    from timm.data import create_transform
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    mean, std = _mean_std()
    transform = {"train": create_transform(resolution, is_training=True, scale=(0.35, 1.0), hflip=0.5,
                                           interpolation="bicubic", mean=mean, std=std),
                 "eval": create_transform(resolution, is_training=False, crop_pct=0.875, interpolation="bicubic",
                                          mean=mean, std=std)}
    parts = {}
    for part in ("upstream", "downstream"):
        folder = root / part
        if not folder.exists():
            parts[part] = {}
            continue
        if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
            raise DataError(f"{folder}: not a readable folder")
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
        if not subdirs:
            kind = "source" if part == "upstream" else "task"
            raise DataError(f"{folder}: empty folder (expected one sub-folder per {kind})")
        parts[part] = {p.name: _folder_split(p, transform, seed, test_fraction) for p in subdirs}
    if not parts["upstream"] and not parts["downstream"]:
        raise DataError(f"{root}: expected an upstream/ and/or a downstream/ folder")
    return DataBundle(root.name, resolution, parts["upstream"], parts["downstream"])


def load_data(pm, source: str, resolution: int, seed: int, val_fraction: float = DEFAULT_VAL_FRACTION) -> DataBundle:
    """A registered dataset by name, ``NAME:PATH`` for a loader that reads a folder, or a bare path,
    with a validation set in every split (carved from training data with ``val_fraction``).

    A bare path (an existing folder, or text with a path separator) goes to the one registered
    loader that reads folders (``folder`` unless plugins add more; then name it).
    """
    bundle = _load(pm, source, resolution, seed)
    if not isinstance(bundle, DataBundle):
        raise DataError(f"data: loader of {source!r} returned {type(bundle).__name__}, not a DataBundle")
    return bundle.with_validation(val_fraction, seed)


def _load(pm, source: str, resolution: int, seed: int) -> DataBundle:
    name, colon, path = source.partition(":")
    if colon and name in pm.registry["datasets"]:
        dataset = pm.dataset(name)
        if not dataset.takes_path:
            raise DataError(f"data: dataset {name!r} does not read a folder; use --data {name}")
        return dataset.load(resolution, seed, path)
    if os.path.isdir(source) or os.sep in source:
        readers = [d for d in pm.registry["datasets"].values() if d.takes_path]
        if len(readers) != 1:
            names = ", ".join(d.name for d in readers) or "none"
            raise DataError(f"data: {source} is a folder; say which loader reads it as NAME:{source} ({names})")
        return readers[0].load(resolution, seed, source)
    return pm.dataset(source).load(resolution, seed)
