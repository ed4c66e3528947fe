"""Image folders and ``.tar`` archives as users have them, read with timm's readers.

Two layouts, told apart by what ``DIR`` holds:

* **plain classification** (torchvision/timm): ``DIR/train/<class>/*.jpg``, an optional validation split
  (``DIR/val/`` or ``DIR/validation/``, as timm's train.py looks for it) and an optional ``DIR/test/``.
  Each split may be a folder of class folders or a ``.tar`` of one (``DIR/train.tar``). A folder of class
  folders with no splits is read the same way, its test split carved out. The data is one upstream label
  source named after the folder.
* **INTERN's multi-source layout**: ``DIR/upstream/<source>/`` and ``DIR/downstream/<task>/``, each of them
  a plain classification folder as above. A task folder may hold ``train_<N>pct.txt``: a fixed list of
  the images of its N% subset (as GV-B's meta lists), used verbatim by ``downstream``.

Reading is timm's (``timm.data.readers.create_reader``: :class:`ReaderImageFolder` for folders,
:class:`ReaderImageInTar` for archives; the label of an image is the folder that holds it). Before a
folder is handed to timm it is walked once here, following links to files and folders as torchvision's
ImageFolder does: a link loop is an error naming the link, and every file that is not used (not an
image, hidden, unreadable, a broken link) is counted in a note the command prints once.
"""
from __future__ import annotations

import hashlib
import os
import stat
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from metanet.errors import DataError
from metanet.data.bundle import DataBundle, Split, split_indices
from metanet.data.images import ImageSource, ImageTransforms, ImageViews, image_extensions

SPLITS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
DEFAULT_TEST_FRACTION = 0.2


@dataclass
class Listing:
    """What a walk of one split folder found."""

    images: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    skipped: Counter = field(default_factory=Counter)                 # reason -> count
    examples: dict[str, str] = field(default_factory=dict)            # reason -> first path
    loose: list[str] = field(default_factory=list)                    # images outside any class folder
    per_class: Counter = field(default_factory=Counter)               # top-level folder -> images

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, path)


def list_folder(top: Path) -> Listing:
    """Every image under ``top``'s class folders, links followed; loops and unreadable folders are errors."""
    exts = image_extensions()
    out = Listing()
    stack = [(str(top), (os.path.realpath(top),), None)]
    while stack:
        folder, chain, cls = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except PermissionError:
            raise DataError(f"{folder}: folder is not readable") from None
        except OSError as exc:
            raise DataError(f"{folder}: cannot list the folder ({exc.strerror})") from None
        for e in entries:
            if e.name.startswith("."):
                out.skip("hidden files and folders", e.path)
                continue
            try:
                is_dir = e.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                real = os.path.realpath(e.path)
                if real in chain:
                    raise DataError(f"{e.path}: link loop (it leads back to {real}, which contains it)")
                if cls is None:
                    out.per_class[e.name] += 0
                stack.append((e.path, chain + (real,), e.name if cls is None else cls))
                continue
            try:
                st = e.stat()  # follows links
            except FileNotFoundError:
                out.skip("broken links", e.path)
                continue
            except OSError:
                out.skip("unreadable", e.path)
                continue
            if not stat.S_ISREG(st.st_mode):
                out.skip("not regular files", e.path)
            elif os.path.splitext(e.name)[1].lower() not in exts:
                out.skip("not images", e.path)
            elif not os.access(e.path, os.R_OK):
                out.skip("unreadable", e.path)
            elif cls is None:
                out.loose.append(e.path)
            else:
                out.images[e.path] = (st.st_size, st.st_mtime_ns)
                out.per_class[cls] += 1
    return out


def skipped_note(where: str, skipped: Counter, examples: dict[str, str]) -> str | None:
    if not skipped:
        return None
    parts = [f"{n} {reason} (e.g. {os.path.basename(examples[reason])})" for reason, n in skipped.most_common()]
    return f"{where}: skipped {sum(skipped.values())} files: {', '.join(parts)}"


def _fingerprint(lines) -> str:
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()[:20]


def read_image_folder(path: Path, notes: list[str]) -> ImageSource:
    """A folder of class folders through timm's ``ReaderImageFolder``."""
    from timm.data.readers import create_reader
    if not os.access(path, os.R_OK | os.X_OK):
        raise DataError(f"{path}: folder is not readable")
    listing = list_folder(path)
    if listing.loose:
        raise DataError(f"{path}: {len(listing.loose)} images lie outside the class folders (e.g. "
                        f"{os.path.basename(listing.loose[0])}); a split holds one folder per class")
    empty = sorted(c for c, n in listing.per_class.items() if n == 0)
    if not listing.images:
        note = skipped_note(str(path), listing.skipped, listing.examples)
        raise DataError(f"{path}: empty folder: no images in class folders" + (f" ({note.split(': ', 1)[1]})"
                                                                                if note else ""))
    if empty:
        raise DataError(f"{path}: empty folder: class folder {empty[0]!r} holds no images")
    note = skipped_note(str(path), listing.skipped, listing.examples)
    if note:
        notes.append(note)
    try:
        reader = create_reader("", root=str(path))
    except Exception as exc:
        raise DataError(f"{path}: cannot read the folder ({type(exc).__name__}: {exc})") from None
    names = {i: c for c, i in reader.class_to_idx.items()}
    items, labels, ids, lines = [], [], [], []
    for i, (file, target) in enumerate(reader.samples):
        if file in listing.images:  # not what the walk skipped (hidden folders, unreadable files)
            items.append(i)
            labels.append(names[target])
            ids.append(file)
            size, mtime = listing.images[file]
            lines.append(f"{os.path.relpath(file, path)}\t{names[target]}\t{size}\t{mtime}")
    return ImageSource.from_labels(str(path), reader, labels, ids, _fingerprint(lines), items)


def read_image_tar(path: Path, notes: list[str]) -> ImageSource:
    """A ``.tar`` of class folders through timm's ``ReaderImageInTar``."""
    from timm.data.readers import create_reader
    exts = image_extensions()
    skipped, examples = Counter(), {}
    try:
        with tarfile.open(path) as tf:
            members = tf.getmembers()
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({type(exc).__name__}: {exc})") from None
    for m in members:
        if not m.isfile():
            continue
        name = os.path.basename(m.name)
        hidden = name.startswith(".") or any(p.startswith(".") and p != "." for p in m.name.split("/")[:-1])
        reason = "hidden files" if hidden else \
            None if os.path.splitext(name)[1].lower() in exts else "not images"
        if reason:
            skipped[reason] += 1
            examples.setdefault(reason, m.name)
    note = skipped_note(str(path), skipped, examples)
    if note:
        notes.append(note)
    try:
        # no tar-info cache file (timm writes one beside archives over 10 GB) and no open archive kept: a
        # handle opened before loader workers fork would be shared by them
        reader = create_reader("", root=str(path), cache_tarfiles=False, cache_tarinfo=False)
    except Exception as exc:
        raise DataError(f"{path}: no images in class folders inside the archive ({type(exc).__name__}: "
                        f"{' '.join(str(exc).split())})") from None
    names = reader.class_idx_to_name
    items, labels, ids, lines = [], [], [], []
    for i, (sample, target) in enumerate(zip(reader.samples, reader.targets)):
        info = sample[0]
        base = os.path.basename(info.name)
        if base.startswith(".") or any(part.startswith(".") and part != "." for part in info.name.split("/")[:-1]):
            continue  # hidden files and folders (counted above); "./" is how `tar -C DIR .` names members
        label = names[int(target)]
        if label == "":
            raise DataError(f"{path}: {info.name} lies outside the class folders; a split holds one folder per "
                            "class")
        items.append(i)
        labels.append(label)
        ids.append(f"{path}:{info.name}")
        lines.append(f"{info.name}\t{label}\t{info.size}\t{int(info.mtime)}")
    if not items:
        raise DataError(f"{path}: empty archive: no images in class folders")
    st = path.stat()
    lines.append(f"{path.name}\t{st.st_size}\t{st.st_mtime_ns}")
    return ImageSource.from_labels(str(path), reader, labels, ids, _fingerprint(lines), items)


def read_images(path: Path, notes: list[str]) -> ImageSource:
    if path.is_file():
        if path.suffix.lower() != ".tar":
            raise DataError(f"{path}: expected a folder of class folders or a .tar of one")
        return read_image_tar(path, notes)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    return read_image_folder(path, notes)


def find_split(folder: Path, part: str) -> Path | None:
    """``folder``'s ``part`` split (``train``, ``val``, ``test``): a folder or a ``.tar``, under any of its names."""
    found = [p for name in SPLITS[part] for p in (folder / name, folder / f"{name}.tar") if p.exists()]
    if len(found) > 1:
        raise DataError(f"{folder}: holds {found[0].name} and {found[1].name}; keep one {part} split")
    return found[0] if found else None


def read_split(path: Path, transforms: ImageTransforms, seed: int, test_fraction: float,
               notes: list[str]) -> Split:
    """One classification problem: ``path`` with train/ [val/|validation/] [test/] splits (folders or
    .tar files), or a folder of class folders (a test split carved out with ``test_fraction``)."""
    def views(source, indices=None, train=False):
        return ImageViews(source, range(len(source)) if indices is None else indices, transforms, train)

    train_path = find_split(path, "train")
    if train_path is None:
        full = read_images(path, notes)
        _at_least_two(full)
        tr, te = split_indices(len(full), test_fraction, seed)
        tr, te = tr.tolist(), te.tolist()
        listed = _listed_paths(path, path)
        if listed:  # listed images belong to train, wherever the random test split would have put them
            moved = [i for i in te if os.path.normpath(full.ids[i]) in listed]
            te = [i for i in te if i not in set(moved)]
            tr = tr + moved
        return Split(views(full, tr, train=True), views(full, te), len(full.classes), list(full.classes),
                     subsets=_subset_lists(path, path, [full.ids[i] for i in tr]))
    train = read_images(train_path, notes)
    _at_least_two(train)
    val_path, test_path = find_split(path, "val"), find_split(path, "test")
    val = read_images(val_path, notes).align_to(train, "validation") if val_path else None
    if test_path is not None:
        test, train_idx, test_idx = read_images(test_path, notes).align_to(train, "test"), None, None
    else:  # reported only, so carved out of train like a folder without splits
        tr, te = split_indices(len(train), test_fraction, seed)
        test, train_idx, test_idx = train, sorted(tr.tolist()), sorted(te.tolist())
        notes.append(f"{path}: no test split; {test_fraction:.0%} of {train_path.name} held out as the test set "
                     "(reported, never scored)")
    train_views = views(train, train_idx, train=True)
    subsets = _subset_lists(path, train_path, [p for p, _ in train_views.samples]) if train_path.is_dir() else {}
    return Split(train_views, views(test, test_idx), len(train.classes), list(train.classes),
                 views(val) if val is not None else None, subsets)


def _at_least_two(source: ImageSource) -> None:
    if len(source.classes) < 2:
        raise DataError(f"{source.where}: has one class ({source.classes[0]!r}); a classification task needs at "
                        "least two")


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


def _holds_images(folder: Path) -> bool:
    """Whether ``folder``'s sub-folders hold image files directly (then they are classes)."""
    exts = image_extensions()
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            if any(f.suffix.lower() in exts for f in sub.iterdir() if f.is_file()):
                return True
        except OSError:
            continue
    return False


def _readable_folder(folder: Path) -> None:
    if not folder.is_dir() or not os.access(folder, os.R_OK | os.X_OK):
        raise DataError(f"{folder}: not a readable folder")


def read_tasks(folder: Path, transforms: ImageTransforms, seed: int, test_fraction: float,
               notes: list[str]) -> dict[str, Split]:
    """Downstream tasks in ``folder``: the folder itself when it is one classification problem (it has a
    train split, or class folders holding images), else each of its sub-folders."""
    _readable_folder(folder)
    if find_split(folder, "train") is not None or _holds_images(folder):
        return {Path(os.path.abspath(folder)).name: read_split(folder, transforms, seed, test_fraction, notes)}
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"{folder}: empty folder (expected one sub-folder per task)")
    return {p.name: read_split(p, transforms, seed, test_fraction, notes) for p in subdirs}


def load_folder_bundle(root: str | os.PathLike, resolution: int = 32, seed: int = 0,
                       test_fraction: float = DEFAULT_TEST_FRACTION) -> DataBundle:
    """A folder in either layout of the module's docstring."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    _readable_folder(root)
    transforms = ImageTransforms(resolution)
    notes: list[str] = []
    name = Path(os.path.abspath(root)).name
    if (root / "upstream").exists() or (root / "downstream").exists():
        parts = {}
        for part, kind in (("upstream", "source"), ("downstream", "task")):
            folder = root / part
            if not folder.exists():
                parts[part] = {}
                continue
            _readable_folder(folder)
            subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if not subdirs:
                raise DataError(f"{folder}: empty folder (expected one sub-folder per {kind})")
            parts[part] = {p.name: read_split(p, transforms, seed, test_fraction, notes) for p in subdirs}
        return DataBundle(name, resolution, parts["upstream"], parts["downstream"], notes=notes)
    if find_split(root, "train") is None and not _holds_images(root):
        stray = [s for part in ("val", "test") for s in [find_split(root, part)] if s is not None]
        why = f" (it has {stray[0].name} but no train split)" if stray else ""
        raise DataError(f"{root}: expected train/ (a folder of class folders or train.tar; optional val/ and "
                        f"test/) or INTERN's upstream/ and downstream/ folders{why}")
    return DataBundle(name, resolution, {name: read_split(root, transforms, seed, test_fraction, notes)},
                      notes=notes)
