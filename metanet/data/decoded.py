"""Decoded once: the images of a search resized and centre-cropped to the proxy resolution a single time.

:func:`decode_bundle` gives every image source of a bundle its pixels (uint8, ``(N, 3, R, R)``), which its
views then read instead of decoding files (see :mod:`metanet.data.images`):

* in memory, shared by everything in the process that loads the same images at the same resolution (the
  trials of the sequential engine, proxy-check, a second phase), keyed by the listing's fingerprint;
* from a file, ``RUN/data-cache/<key>.u8`` beside a JSON manifest, which the search process writes and
  the trial processes of NNI's training service map read-only (``torch.from_file``): the page cache
  holds one copy for all of them.

When the pixels would take more than half of the memory available, the images are decoded per step
instead (as with ``--no-cache``), and the note says so with the size that decided it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from metanet.errors import DataError
from metanet.data.images import ImageSource, ImageTransforms, ImageViews

CACHE_DIR = "data-cache"
MEMORY_SHARE = 0.5  # of the memory available, at most, for decoded images
DECODE_WORKERS_FROM = 2000  # images: below this, decoding in this process beats starting workers
VERSION = 1

_MEMORY: dict[str, torch.Tensor] = {}
decoded_images = 0  # images this process has decoded (a second trial of a search adds none)


def _key(source: ImageSource, transforms: ImageTransforms) -> str:
    return key_of(source.fingerprint, transforms)


def key_of(fingerprint: str, transforms: ImageTransforms) -> str:
    text = f"v{VERSION}|{fingerprint}|{transforms.cache_key}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def available_memory() -> int:
    """Bytes of memory available now (Linux's MemAvailable; elsewhere the physical memory)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit in ("B", "KB") else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def image_sources(bundle) -> list[tuple[ImageSource, ImageTransforms]]:
    """The distinct image sources behind a bundle's views, with the transforms they are used at."""
    seen: dict[int, tuple[ImageSource, ImageTransforms]] = {}
    for split in bundle.splits().values():
        for part in split.parts().values():
            view = part
            while hasattr(view, "dataset") and not isinstance(view, ImageViews):  # a Subset of views
                view = view.dataset
            if isinstance(view, ImageViews):
                seen.setdefault(id(view.source), (view.source, view.transforms))
    return list(seen.values())


class _Geometry(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, transforms: ImageTransforms):
        self.source, self.transforms = source, transforms

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, k: int) -> tuple[torch.Tensor | None, str | None]:
        try:  # the message crosses the worker boundary as it is (a re-raised one would carry a traceback)
            return self.transforms.geometry(self.source.open(k)), None
        except DataError as exc:
            return None, str(exc)


def decode(source: ImageSource, transforms: ImageTransforms) -> torch.Tensor:
    """Every image of ``source`` at the evaluation geometry, uint8 ``(N, 3, R, R)``; a file that cannot be
    read is an error naming it."""
    r = transforms.resolution
    out = torch.empty((len(source), 3, r, r), dtype=torch.uint8)
    workers = min(8, os.cpu_count() or 1) if len(source) >= DECODE_WORKERS_FROM else 0
    loader = torch.utils.data.DataLoader(_Geometry(source, transforms), batch_size=64, num_workers=workers,
                                         collate_fn=list)
    at = 0
    for batch in loader:
        for image, error in batch:
            if error is not None:
                raise DataError(error)
            out[at] = image
            at += 1
    decoded_count(len(source))
    return out


def decoded_count(n: int) -> None:
    global decoded_images
    decoded_images += n


def _paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    return cache_dir / f"{key}.u8", cache_dir / f"{key}.json"


def _mapped(cache_dir: Path, key: str, source: ImageSource, resolution: int) -> torch.Tensor | None:
    pixels, manifest = _paths(cache_dir, key)
    try:
        meta = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return None
    shape = (len(source), 3, resolution, resolution)
    if meta.get("shape") != list(shape) or meta.get("fingerprint") != source.fingerprint:
        return None
    numel = shape[0] * shape[1] * shape[2] * shape[3]
    try:
        if pixels.stat().st_size != numel:
            return None
        return torch.from_file(str(pixels), shared=False, size=numel, dtype=torch.uint8).view(shape)
    except (OSError, RuntimeError):
        return None


def write_cache(bundle, cache_dir: str | os.PathLike) -> list[Path]:
    """Write the decoded pixels of ``bundle`` (decoded already) to ``cache_dir``, atomically, for trial
    processes to map; returns the files written or found there."""
    from metanet.atomic import replace_atomically
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for source, transforms in image_sources(bundle):
        if source.pixels is None:
            continue
        key = _key(source, transforms)
        pixels, manifest = _paths(cache_dir, key)
        if _mapped(cache_dir, key, source, transforms.resolution) is None:
            data = source.pixels.contiguous().numpy()
            replace_atomically(pixels, lambda p: data.tofile(str(p)))
            # the listing too: a streamed source (WebDataset shards) is restored from it without reading a shard
            meta = {"where": source.where, "fingerprint": source.fingerprint, "shape": list(source.pixels.shape),
                    "resolution": transforms.resolution, "transforms": transforms.cache_key, "version": VERSION,
                    "classes": source.classes, "targets": source.targets, "ids": source.ids}
            replace_atomically(manifest, lambda p: p.write_text(json.dumps(meta, indent=2)))
        out += [pixels, manifest]
    return out


def decode_bundle(bundle, cache: bool = True, cache_dir: str | os.PathLike | None = None):
    """Give the image sources of ``bundle`` their pixels (see the module's docstring); returns the bundle,
    with a note of what was decided. ``cache=False``: leave them to be decoded per step."""
    need = [(s, t) for s, t in image_sources(bundle)
            if not (s.pixels is not None and s.pixels_resolution == t.resolution)]
    if not need:
        return bundle
    count = sum(len(s) for s, _ in need)
    size = sum(len(s) * 3 * t.resolution ** 2 for s, t in need)
    res = need[0][1].resolution
    if not cache:
        bundle.notes.append(f"data: {count:,} images decoded per step (--no-cache); decoded once at {res} px they "
                            f"would take {format_bytes(size)}")
        return bundle
    fresh = []
    for source, transforms in need:  # decoded before: by this process, or by the search process into cache_dir
        key = _key(source, transforms)
        pixels = _MEMORY.get(key)
        if pixels is None and cache_dir is not None:
            pixels = _mapped(Path(cache_dir), key, source, transforms.resolution)
        if pixels is None:
            fresh.append((source, transforms))
        else:
            source.pixels, source.pixels_resolution = pixels, transforms.resolution
            source.pixels_from = "memory" if key in _MEMORY else "mapped"
    if not fresh:
        return bundle
    free = available_memory()
    fresh_size = sum(len(s) * 3 * t.resolution ** 2 for s, t in fresh)
    if free and fresh_size > MEMORY_SHARE * free:
        bundle.notes.append(f"data: {sum(len(s) for s, _ in fresh):,} images at {res} px would take "
                            f"{format_bytes(fresh_size)} decoded, more than {MEMORY_SHARE:.0%} of the "
                            f"{format_bytes(free)} of memory available: decoding per step instead (as --no-cache)")
        return bundle
    for source, transforms in fresh:
        pixels = decode(source, transforms)
        _MEMORY[_key(source, transforms)] = pixels
        source.pixels, source.pixels_resolution, source.pixels_from = pixels, transforms.resolution, "memory"
    bundle.notes.append(f"data: {sum(len(s) for s, _ in fresh):,} images decoded once at {res} px "
                        f"({format_bytes(fresh_size)} in memory), shared by every trial")
    return bundle


def cached_listing(cache_dir, where: str, fingerprint: str, transforms: ImageTransforms) -> ImageSource | None:
    """A streamed source as the search process cached it (listing and pixels), or None."""
    cache_dir = Path(cache_dir)
    key = key_of(fingerprint, transforms)
    try:
        meta = json.loads(_paths(cache_dir, key)[1].read_text())
        source = ImageSource(where, None, meta["classes"], meta["targets"], meta["ids"], fingerprint)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    pixels = _mapped(cache_dir, key, source, transforms.resolution)
    if pixels is None:
        return None
    source.pixels, source.pixels_resolution, source.pixels_from = pixels, transforms.resolution, "mapped"
    return source


def describe(bundle) -> dict:
    """How a bundle's images are served: how many, and decoded in memory, mapped from a search's cache file, or
    decoded per step (what a trial records of its data)."""
    sources = image_sources(bundle)
    modes = sorted({(s.pixels_from if s.pixels is not None and s.pixels_resolution == t.resolution else "per step")
                    for s, t in sources})
    return {"images": sum(len(s) for s, _ in sources), "cache": ",".join(modes) if modes else "tensors"}


def forget() -> None:
    """Drop the decoded images this process holds (tests, and long-lived processes between searches)."""
    _MEMORY.clear()
