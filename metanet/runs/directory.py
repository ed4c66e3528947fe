"""A search run is its directory: the config, the trial store, the kept weights, summary and plot.

:class:`RunDir` is the one type that search, results, export and the CLI use to find these files,
and the one place that ranks trials and picks the best per budget.
"""
from __future__ import annotations

import json
import os
import time
from functools import cached_property
from pathlib import Path
from typing import Any

from metanet.atomic import exclusive_lock, replace_atomically, write_atomic
from metanet.errors import ConfigError, RunError
from .config import SearchConfig
from .store import DONE, FAILED, OK, TrialStore

KEEP_WEIGHTS = 3  # per budget: the trained backbones of the best trials, for export


def top_steps(row: dict[str, Any]) -> int:
    """The steps of the highest rung a trial of a multi-fidelity search finished (0 without a ladder)."""
    return max((r["steps"] for r in row.get("rungs") or [] if r.get("score") is not None), default=0)


def _score_order(row: dict[str, Any]) -> tuple:
    """Finished trials first; among them those that reached the highest rung of a multi-fidelity search
    first (scores of different rungs are not comparable), best score first; failed and running after, by id."""
    finished = row["status"] == OK and row["score"] is not None
    return (not finished, -top_steps(row) if finished else 0, -(row["score"] if finished else 0.0), row["id"])


class RunDir:
    CONFIG = "config.json"
    STORE = "trials.sqlite"
    DEFAULT_PARENT = "runs"  # where a search without --out makes its run-<time> folder
    WEIGHTS = "weights"
    SUMMARY = "summary.txt"
    PLOT = "pareto.png"
    LOCK = "lock"

    def __init__(self, path: str | Path, config: SearchConfig | None = None):
        self.path = Path(path)
        self._config = config
        self._lock_fd: int | None = None

    # -- creating and opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: SearchConfig) -> "RunDir":
        """A new run directory for ``cfg`` (``cfg.out`` or a timestamped one), returned locked; refuses to
        reuse a run. The caller releases the lock (:meth:`release`) when it stops writing."""
        path = Path(cfg.out or f"{cls.DEFAULT_PARENT}/search-{time.strftime('%Y%m%d-%H%M%S')}")
        cls.refuse_existing(path)  # before anything is created
        if path.exists() and not path.is_dir():
            raise RunError(f"{path}: exists and is not a directory")
        from metanet.writable import make_dirs
        make_dirs(path, "out", RunError)
        cfg.out = str(path)
        run = cls(path, cfg)
        run.acquire()
        try:
            cls.refuse_existing(path)  # another process may have made it a run between the check and the lock
            write_atomic(path / cls.CONFIG, cfg.to_json())
        except BaseException:
            run.release()
            raise
        return run

    @classmethod
    def refuse_existing(cls, path: str | Path) -> None:
        """A new search never writes into a directory that holds one."""
        path = Path(path)
        if (path / cls.STORE).exists() or (path / cls.CONFIG).exists():
            raise RunError(f"{path}: already holds a search; use --resume {path} or another --out")

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
                raise RunError(f"{self.path}: {self.CONFIG} is damaged: {_one_line(exc)}") from None
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

    def check_store(self) -> None:
        """Before a resume writes to the run: a damaged store is an error naming it. A store without any
        table is not damaged: a search killed in the milliseconds between creating the file and its
        first table leaves one, and the resume's store completes it."""
        path = self.path / self.STORE
        if not path.exists():
            # a search killed before its first trial leaves only its config and lock: resuming starts it; a run
            # with anything else (results, weights, checkpoints) lost its trials, and starting afresh would hide it
            before_trials = (self.CONFIG, self.LOCK, "data-cache")  # data-cache: metanet.data.decoded.CACHE_DIR
            others = sorted(p.name for p in self.path.iterdir() if p.name not in before_trials
                            and not p.name.startswith("."))
            if others:
                raise RunError(f"{path}: missing, but the run holds {', '.join(others)}: its trials are lost; "
                               f"restore {self.STORE} or start a new search with another --out")
            return
        try:
            self.read_store()
        except RunError:
            if not _blank_database(path):
                raise

    # What a new search writes before its first trial: a search that fails (or is stopped) before it stored
    # one leaves nothing of itself behind (see :meth:`discard_unstarted`).
    BEFORE_TRIALS = (CONFIG, STORE, f"{STORE}-wal", f"{STORE}-shm", f"{STORE}-journal", "data-cache",
                     "nni-experiments.jsonl", SUMMARY, PLOT, WEIGHTS)

    def discard_unstarted(self, made_folder: bool) -> bool:
        """Remove a new run that stored no trial (its strategy failed to start, NNI did not come up, it was
        stopped at once): the same command can then run again as it was, with no ``--resume`` of a run that
        holds nothing. Only the files a search makes are removed, and the folder only if this search made it
        and nothing else is in it. Call it while holding the lock; returns whether the run is gone."""
        try:
            if self.store.trials() or any(self.path.glob(f"{self.WEIGHTS}/*")):
                return False
        except RunError:
            return False
        import shutil
        for name in self.BEFORE_TRIALS:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
        (self.path / self.LOCK).unlink(missing_ok=True)  # the flock stays on the open descriptor until release
        if made_folder:
            try:
                self.path.rmdir()  # only when empty: anything the user put there stays
            except OSError:
                pass
        return True

    # -- the writer's lock --------------------------------------------------------------------------
    def acquire(self) -> None:
        """Become the one writer of this run, or fail at once naming the process that is.

        An exclusive ``flock`` on RUN/lock: the kernel drops it when the holder exits or dies, so a
        killed search never leaves a stale lock behind; the file only says who holds it.
        """
        if self._lock_fd is not None:
            return
        fd = exclusive_lock(self.path / self.LOCK, "the run's lock file",
                            lambda holder: f"{self.path}: in use by another search ({holder}); "
                                           "wait for it to end or stop it")
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    # -- files -----------------------------------------------------------------------------------
    def weights_path(self, trial_id: int) -> Path:
        return self.path / self.WEIGHTS / f"trial_{trial_id}.safetensors"

    def kept(self, budget: int, trial_id: int | None = None, score: float | None = None, steps: int = 0) -> list[int]:
        """Ids of the trials whose weights are kept for ``budget``: the best finished ones, counting
        ``trial_id`` with ``score`` (at a rung of ``steps``) as if it had finished (its row is written after
        its weights)."""
        rows = [r for r in self.ranked(budget, status=OK) if r["id"] != trial_id and r["score"] is not None]
        if trial_id is not None and score is not None:
            rows.append({"id": trial_id, "status": OK, "score": score,
                         "rungs": [{"steps": steps, "score": score}] if steps else None})
        return [r["id"] for r in sorted(rows, key=_score_order)[:KEEP_WEIGHTS]]

    def save_weights(self, trial_id: int, weights: dict, stage: str, img_size: int) -> None:
        """Write a trial's trained backbone atomically: a killed process leaves the old file or the new one."""
        from safetensors.torch import save_file
        path = self.weights_path(trial_id)
        path.parent.mkdir(exist_ok=True)
        tensors = {k: v.contiguous() for k, v in weights.items()}
        metadata = {"stage": stage, "img_size": str(img_size), "trial": str(trial_id)}
        replace_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    def drop_weights(self, budget: int) -> None:
        """Delete the kept weights of trials that fell out of the best of ``budget``."""
        keep = set(self.kept(budget))
        for r in self.ranked(budget):
            # a running trial may have written its weights already and not yet its row: never touched here
            if r["status"] in DONE and r["id"] not in keep:
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


def _blank_database(path: Path) -> bool:
    """True for an empty file or an SQLite database that holds no table yet (read without writing)."""
    import sqlite3
    from urllib.parse import quote
    if path.stat().st_size == 0:
        return True
    mode = "ro" if Path(f"{path}-wal").exists() else "ro&immutable=1"
    try:
        db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode={mode}", uri=True)
        try:
            return db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        finally:
            db.close()
    except sqlite3.Error:
        return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
