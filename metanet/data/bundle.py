"""What the stages receive: labelled splits (train, validation, test) grouped into a bundle of upstream
label sources and downstream tasks.

Every split has three parts: ``train`` (what stages learn from), ``val`` (what rewards are computed on)
and ``test`` (reported only). Unless a loader gives a validation set, it is carved out of the training
set by :meth:`DataBundle.with_validation` (stratified, seeded), so the search never selects on the
images it reports.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from metanet.errors import DataError

DEFAULT_VAL_FRACTION = 0.2
# A carved validation split holds at least this many images (at most a quarter of the training set): with
# fewer, a score's binomial standard error (0.5 / sqrt(n) at 50%) swamps the differences a search must resolve.
DEFAULT_MIN_VAL_IMAGES = 1000


def subset(ds: Dataset, idx) -> Dataset:
    """``idx`` of ``ds``, keeping image views as views (with their transforms)."""
    return ds.subset(idx) if hasattr(ds, "subset") else Subset(ds, list(idx))


def for_eval(ds: Dataset) -> Dataset:
    """``ds`` as it is measured: image views with the evaluation transform (tensors are unchanged)."""
    return ds.for_eval() if hasattr(ds, "for_eval") else ds


def dataset_labels(ds: Dataset) -> torch.Tensor:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    if isinstance(ds, Subset):
        return dataset_labels(ds.dataset)[torch.as_tensor(ds.indices, dtype=torch.long)]
    if hasattr(ds, "targets"):
        return torch.as_tensor(ds.targets, dtype=torch.long)
    return torch.as_tensor([ds[i][1] for i in range(len(ds))])


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

    def with_validation(self, fraction: float, seed: int, where: str = "data", min_images: int = 0) -> "Split":
        """This split with ``fraction`` of each class of ``train`` moved to ``val`` (kept if it has one), or more:
        at least ``min_images`` in all where that leaves three quarters of ``train`` to learn from.

        Images of a fixed subset stay in ``train``: the subset is used verbatim.
        """
        if self.val is not None:
            return self
        if not 0 < fraction < 1:
            raise DataError(f"{where}: val_fraction must be in (0, 1) to carve a validation set, got {fraction}")
        labels = dataset_labels(self.train)
        if min_images and len(labels):
            fraction = max(fraction, min(min_images, len(labels) // 4) / len(labels))
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

    def parts(self) -> dict[str, Dataset]:
        return {k: v for k, v in (("train", self.train), ("val", self.val), ("test", self.test)) if v is not None}


@dataclass
class DataBundle:
    name: str
    resolution: int
    sources: dict[str, Split] = field(default_factory=dict)  # upstream label sources
    tasks: dict[str, Split] = field(default_factory=dict)    # downstream tasks
    in_chans: int = 3
    # what the user should hear once about how the data was read (files skipped, the cache decision)
    notes: list[str] = field(default_factory=list)

    def require_sources(self, names=None) -> dict[str, Split]:
        if not self.sources:
            raise DataError(f"data '{self.name}' has no upstream sources")
        return _select(self.sources, names, f"data '{self.name}'", "source")

    def require_tasks(self, names=None) -> dict[str, Split]:
        if not self.tasks:
            raise DataError(f"data '{self.name}' has no downstream tasks (add held-out ImageFolder tasks with "
                            "--downstream DIR)")
        return _select(self.tasks, names, f"data '{self.name}'", "task")

    def with_validation(self, fraction: float = DEFAULT_VAL_FRACTION, seed: int = 0,
                        min_images: int = DEFAULT_MIN_VAL_IMAGES) -> "DataBundle":
        """Every split with a validation set: the loader's, else carved from its training set
        (:meth:`Split.with_validation`)."""
        if all(s.val is not None for s in [*self.sources.values(), *self.tasks.values()]):
            return self
        return replace(self, sources={n: s.with_validation(fraction, seed, f"data '{self.name}': source {n!r}",
                                                           min_images) for n, s in self.sources.items()},
                       tasks={n: s.with_validation(fraction, seed + 1, f"data '{self.name}': task {n!r}", min_images)
                              for n, s in self.tasks.items()})

    def smallest_validation(self) -> int | None:
        """The images of the smallest validation split (what bounds a score's precision)."""
        sizes = [len(s.val) for s in [*self.sources.values(), *self.tasks.values()] if s.val is not None]
        return min(sizes) if sizes else None

    def with_tasks(self, tasks: dict[str, Split], where: str) -> "DataBundle":
        """This bundle with more downstream tasks (``--downstream``); a name it already has is an error."""
        clash = sorted(set(tasks) & set(self.tasks))
        if clash:
            raise DataError(f"{where}: task {clash[0]!r} is already a task of data '{self.name}'")
        return replace(self, tasks={**self.tasks, **tasks})

    def splits(self) -> dict[str, Split]:
        """Every split, named ``source:NAME`` or ``task:NAME``."""
        return {**{f"source:{n}": s for n, s in self.sources.items()}, **{f"task:{n}": s for n, s in self.tasks.items()}}


def _select(table, names, where, kind):
    if names is None:
        return dict(table)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    unknown = [n for n in names if n not in table]
    if unknown:
        raise DataError(f"{where}: unknown {kind} {unknown[0]!r} (has {', '.join(table)})")
    return {n: table[n] for n in names}


def split_indices(n: int, test_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = max(1, int(round(n * test_fraction)))
    return perm[n_test:], perm[:n_test]
