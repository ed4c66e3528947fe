"""A search run is its directory: the config, the trial store, the kept weights, summary and plot.

:class:`RunDir` is the one type that search, results, export and the CLI use to find these files,
and the one place that ranks trials and picks the best per budget.
"""
from __future__ import annotations

import json
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from .errors import ConfigError, RunError
from .search_config import SearchConfig
from .store import FAILED, OK, TrialStore

KEEP_WEIGHTS = 3  # per budget: the trained backbones of the best trials, for export


def _score_order(row: dict[str, Any]) -> tuple:
    """Finished trials first, best score first; failed and running after, by id."""
    finished = row["status"] == OK and row["score"] is not None
    return (not finished, -(row["score"] if finished else 0.0), row["id"])


class RunDir:
    CONFIG = "config.json"
    STORE = "trials.sqlite"
    WEIGHTS = "weights"
    SUMMARY = "summary.txt"
    PLOT = "pareto.png"

    def __init__(self, path: str | Path, config: SearchConfig | None = None):
        self.path = Path(path)
        self._config = config

    # -- creating and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: SearchConfig) -> "RunDir":
        """A new run directory for ``cfg`` (``cfg.out`` or a timestamped one); refuses to reuse a run."""
        path = Path(cfg.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
        if (path / cls.STORE).exists() or (path / cls.CONFIG).exists():
            raise RunError(f"{path}: already holds a search; use --resume {path} or another --out")
        path.mkdir(parents=True, exist_ok=True)
        cfg.out = str(path)
        run = cls(path, cfg)
        (path / cls.CONFIG).write_text(cfg.to_json())
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run; its config is read and validated now."""
        run = cls(path)
        run.config  # noqa: B018 - fail now, naming the file
        return run

    @property
    def config(self) -> SearchConfig:
        if self._config is None:
            path = self.path / self.CONFIG
            if not path.exists():
                raise RunError(f"{self.path}: not a search run directory (no {self.CONFIG})")
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise RunError(f"{path}: damaged ({exc})") from None
            try:
                self._config = SearchConfig.from_dict(data, source=str(path))
            except ConfigError as exc:
                raise RunError(str(exc)) from None
        return self._config

    @cached_property
    def store(self) -> TrialStore:
        return TrialStore(self.path / self.STORE)

    def read_store(self) -> TrialStore:
        """The store of a run that must exist (results, export): never creates one."""
        return TrialStore(self.path / self.STORE, create=False)

    # -- files -----------------------------------------------------------------------------------
    def weights_path(self, trial_id: int) -> Path:
        return self.path / self.WEIGHTS / f"trial_{trial_id}.safetensors"

    def keep_weights(self, budget: int, trial_id: int, weights: dict, stage: str, img_size: int) -> None:
        """Save the trial's trained backbone if it is among the best of its budget; drop those that fell out."""
        ranked = self.ranked(budget, status=OK)
        keep = {r["id"] for r in ranked[:KEEP_WEIGHTS]}
        if trial_id in keep:
            from safetensors.torch import save_file
            path = self.weights_path(trial_id)
            path.parent.mkdir(exist_ok=True)
            tensors = {k: v.contiguous() for k, v in weights.items()}
            save_file(tensors, str(path), metadata={"stage": stage, "img_size": str(img_size), "trial": str(trial_id)})
        for r in ranked[KEEP_WEIGHTS:]:
            self.weights_path(r["id"]).unlink(missing_ok=True)

    # -- ranking -----------------------------------------------------------------------------------
    def ranked(self, budget: int | None = None, status: str | None = None, store: TrialStore | None = None
               ) -> list[dict[str, Any]]:
        """Trials (of one budget, or all), best score first; unfinished ones last."""
        rows = (store or self.store).trials(budget, status=status)
        return sorted(rows, key=_score_order)

    def by_budget(self, top: int | None = None, store: TrialStore | None = None) -> list[dict[str, Any]]:
        """Every budget of the run in order, each ranked, cut to ``top`` per budget."""
        out = []
        for b in self.config.flops:
            mine = self.ranked(b, store=store)
            out.extend(mine[:top] if top else mine)
        return out

    def best(self, store: TrialStore | None = None) -> dict[int, dict | None]:
        """The best finished trial of each budget inside its FLOP band (None where none finished).

        Only the soft constraint trains proposals outside the band; they never count as best.
        """
        lo, hi = self.config.band
        out = {}
        for b in self.config.flops:
            ranked = [r for r in self.ranked(b, status=OK, store=store) if lo * b <= r["flops"] <= hi * b]
            out[b] = ranked[0] if ranked else None
        return out

    def counts(self, budget: int, store: TrialStore | None = None) -> dict[str, int]:
        store = store or self.store
        rows = store.trials(budget)
        return {"trials": len(rows), "failed": sum(r["status"] == FAILED for r in rows),
                "screened": store.counter(budget, "screened"), "proposals": store.counter(budget, "proposals")}
