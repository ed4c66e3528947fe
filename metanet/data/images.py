"""Images as the stages see them: a source (what a timm reader lists) and views of it (indices and a use).

An :class:`ImageSource` is the images of one split as one of timm's readers lists them (an image
folder, a ``.tar``, a Hugging Face dataset, WebDataset shards), with their class names and a
fingerprint of the listing. An :class:`ImageViews` is a dataset over some of its images with the
transform of their use: timm's training transform (random resized crop, flip, colour jitter) to learn
from, its evaluation transform (resize keeping the aspect ratio, centre crop) to measure or extract on.

Once :mod:`metanet.data.decoded` has decoded a source (``source.pixels``: uint8 images already
resized and centre-cropped), its views read those pixels and augment them as tensors
(:mod:`metanet.data.augment`) instead of decoding files: every trial of a search shares one decode.

Views take ``(index, seed)`` items as well as plain indices: :func:`metanet.train.loop.batches` draws the
seeds from its own generator, so a training view's augmentation depends on the stream's seed and
nothing else, with or without loader workers.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from metanet.errors import DataError

# Decoding processes per loader of files decoded per step (--no-cache); None: a quarter of the cores, at most
# 8. Workers only pay where cores are spare: on 2 cores they took them from the training step (-35% images/s,
# measured by benchmarks/training.py), so there the main process decodes.
FOLDER_WORKERS: int | None = None
CROP_PCT = 0.875       # evaluation: resize to resolution / CROP_PCT, centre crop (timm's default)
TRAIN_SCALE = (0.35, 1.0)


def folder_workers() -> int:
    if FOLDER_WORKERS is not None:
        return FOLDER_WORKERS
    return min(8, (os.cpu_count() or 1) // 4)


from metanet.data.normalisation import MEAN, STD  # noqa: E402


def mean_std():
    return MEAN, STD


def image_extensions() -> set[str]:
    from timm.data.readers.img_extensions import get_img_extensions
    return get_img_extensions(as_set=True)


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


@dataclass(frozen=True)
class ImageTransforms:
    """The transforms of one resolution: timm's PIL transforms, and their tensor counterparts for
    decoded images (the evaluation geometry once, then augmentation and normalisation per use)."""

    resolution: int

    @cached_property
    def _mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean, std = mean_std()
        return torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)

    @cached_property
    def train(self) -> Callable:
        from timm.data import create_transform
        mean, std = mean_std()
        return create_transform(self.resolution, is_training=True, scale=TRAIN_SCALE, hflip=0.5,
                                interpolation="bicubic", mean=mean, std=std)

    @cached_property
    def eval(self) -> Callable:
        from timm.data import create_transform
        mean, std = mean_std()
        return create_transform(self.resolution, is_training=False, crop_pct=CROP_PCT, interpolation="bicubic",
                                mean=mean, std=std)

    @cached_property
    def geometry(self) -> Callable:
        """PIL image -> uint8 (3, R, R): the evaluation transform without normalisation (what is cached)."""
        from timm.data import create_transform
        return create_transform(self.resolution, is_training=False, crop_pct=CROP_PCT, interpolation="bicubic",
                                use_prefetcher=True)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._mean_std
        return (x.float() / 255.0 - mean) / std

    @property
    def cache_key(self) -> str:
        return f"{self.resolution}px-crop{CROP_PCT}-bicubic"


class ImageSource:
    """The images of one split as a reader lists them: an id per image (what messages name), its class
    index, the class names, and a fingerprint of the listing (what a cache of its pixels is keyed by).

    ``reader[item]`` gives ``(file object or PIL image, target)`` (timm's readers); ``items`` maps the
    source's images to the reader's indices (files the checks skipped are not among them).
    """

    def __init__(self, where: str, reader: Any, classes: list[str], targets: list[int], ids: list[str],
                 fingerprint: str, items: list[int] | None = None):
        self.where, self.reader, self.classes = where, reader, list(classes)
        self.targets, self.ids, self.fingerprint = list(targets), list(ids), fingerprint
        self.items = list(range(len(self.targets))) if items is None else list(items)
        self.pixels: torch.Tensor | None = None  # uint8 (N, 3, R, R) once decoded (metanet.data.decoded)
        self.pixels_resolution: int | None = None
        self.pixels_from: str | None = None  # "memory" (decoded in this process) or "mapped" (a search's file)

    @classmethod
    def from_labels(cls, where: str, reader: Any, labels: list[str], ids: list[str], fingerprint: str,
                    items: list[int] | None = None, order: list[str] | None = None) -> "ImageSource":
        """A source from each image's class name; classes in ``order`` when given (a dataset's own class
        list), else in timm's natural order of folder names."""
        from timm.utils.misc import natural_key
        if order is not None:
            rank = {c: i for i, c in enumerate(order)}
            classes = sorted(set(labels), key=lambda c: (rank.get(c, len(rank)), natural_key(c)))
        else:
            classes = sorted(set(labels), key=natural_key)
        index = {c: i for i, c in enumerate(classes)}
        return cls(where, reader, classes, [index[c] for c in labels], ids, fingerprint, items)

    def align_to(self, train: "ImageSource", part: str) -> "ImageSource":
        """This source's targets as indices of ``train``'s classes (a validation or test split of it); a class
        that train lacks is an error naming both."""
        unknown = [c for c in self.classes if c not in train.classes]
        if unknown:
            raise DataError(f"{self.where}: {part} class {unknown[0]!r} is not a class of {train.where}")
        index = {c: i for i, c in enumerate(train.classes)}
        self.targets = [index[self.classes[t]] for t in self.targets]
        self.classes = list(train.classes)
        return self

    def __len__(self) -> int:
        return len(self.targets)

    def open(self, k: int):
        """Image ``k`` as an RGB PIL image; a file that cannot be read is a one-line error naming it."""
        from PIL import Image
        if self.reader is None:
            raise DataError(f"{self.where}: streamed data has no per-image access; it is read once into the cache")
        try:
            obj = self.reader[self.items[k]][0]
            if isinstance(obj, Image.Image):
                img = obj
            else:
                with obj:
                    img = Image.open(obj)
                    img.load()
            return to_rgb(img)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{self.ids[k]}: cannot read image ({type(exc).__name__}: "
                            f"{' '.join(str(exc).split())})") from None


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(seed)


@contextmanager
def _seeded_globals(seed: int | None):
    """timm's PIL transforms draw from Python's and torch's global generators: with a seed, both are
    seeded for the one image and restored after it."""
    if seed is None:
        yield
        return
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


class ImageViews(Dataset):
    """Images of a source at ``indices``, as the stages use them: augmented to learn from (``train``),
    evaluation-transformed to measure on. Items may be ``(index, seed)``: the seed fixes the augmentation."""

    seeded_items = True

    def __init__(self, source: ImageSource, indices, transforms: ImageTransforms, train: bool):
        self.source, self.indices, self.transforms, self.train = source, list(indices), transforms, train

    def __len__(self) -> int:
        return len(self.indices)

    def _pixels(self) -> torch.Tensor | None:
        px = self.source.pixels
        return px if px is not None and self.source.pixels_resolution == self.transforms.resolution else None

    @property
    def workers(self) -> int:
        """Loader workers: none once decoded (indexing a tensor), else :func:`folder_workers`."""
        return 0 if self._pixels() is not None else folder_workers()

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, None)
        k = self.indices[i]
        target = self.source.targets[k]
        pixels = self._pixels()
        if pixels is not None:
            x = pixels[k]
            if self.train:
                from metanet.data.augment import augment
                x = augment(x, _generator(seed))
            return self.transforms.normalise(x), target
        img = self.source.open(k)
        if not self.train:
            return self.transforms.eval(img), target
        with _seeded_globals(seed):
            return self.transforms.train(img), target

    def __getitems__(self, items: list) -> list:
        """A batch at once (the DataLoader's fetcher calls this): decoded evaluation views are gathered and
        normalised as one tensor."""
        pixels = self._pixels()
        if pixels is None or self.train:
            return [self[item] for item in items]
        ks = [self.indices[item[0] if isinstance(item, tuple) else item] for item in items]
        x = self.transforms.normalise(pixels[torch.as_tensor(ks, dtype=torch.long)])
        return [(x[j], self.source.targets[k]) for j, k in enumerate(ks)]

    @property
    def targets(self) -> list[int]:
        return [self.source.targets[k] for k in self.indices]

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [(self.source.ids[k], self.source.targets[k]) for k in self.indices]

    def subset(self, idx, train: bool | None = None) -> "ImageViews":
        return ImageViews(self.source, [self.indices[i] for i in idx], self.transforms,
                          self.train if train is None else train)

    def for_eval(self) -> "ImageViews":
        return ImageViews(self.source, self.indices, self.transforms, False)
