"""The durable trial store of a search run: one SQLite file, written the moment a trial ends.

Each trial is inserted as ``running`` when it starts and updated when it ends (``ok`` or ``failed``),
in its own transaction, so a killed process loses nothing that finished; rows still ``running``
are the ones that were in flight, which ``--resume`` evaluates again. Several trial processes (NNI's
training-service engine) may write at once: SQLite's locking serialises them.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote

from metanet.errors import RunError
from metanet.evaluate import FAILED, OK

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    budget INTEGER NOT NULL,
    status TEXT NOT NULL,              -- running, ok, failed
    spec TEXT NOT NULL,                -- the architecture spec, JSON
    spec_key TEXT NOT NULL,            -- canonical JSON of the spec, for dedup and resume
    flops INTEGER, params INTEGER,
    metrics TEXT,                      -- every stage metric, JSON
    score REAL,
    error TEXT,
    seconds REAL,
    seed INTEGER,
    started REAL, ended REAL,
    proposal TEXT,                     -- what the strategy proposed (its choices), JSON
    rewritten INTEGER,                 -- choices of the evaluated spec that differ from the proposal
    reward REAL,                       -- what the strategy received (the score, or the soft-constraint reward)
    test_score REAL,                   -- the score's formula on the test splits: reported, never optimised
    data TEXT,                         -- how the trial got its data (images, decoded here, cache, seconds), JSON
    repro TEXT,                        -- what re-runs it exactly (metanet.reproduce.record), JSON
    rungs TEXT,                        -- multi-fidelity: every rung it finished (steps, score ...), JSON list
    bracket INTEGER,                   -- multi-fidelity (sh, hyperband): the bracket it belongs to
    stage TEXT                         -- while running: the stage it is in and its plugin, JSON
);
CREATE INDEX IF NOT EXISTS trials_budget ON trials (budget, status);
CREATE TABLE IF NOT EXISTS counters (budget INTEGER, name TEXT, value INTEGER, PRIMARY KEY (budget, name));
"""


# The one trial-status vocabulary: the store, the trial result, results and export all use it.
RUNNING = "running"  # in flight; an evaluation ends OK or FAILED
DONE = (OK, FAILED)


def _json_or_null(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def where_it_was(stage: dict | None) -> str:
    """`` in stage S (plugin P)``, from a running row's ``stage``; `` before its first stage`` without one."""
    if not isinstance(stage, dict):
        return " before its first stage"
    return f" in stage {stage.get('stage')} (plugin {stage.get('plugin') or 'unknown'})"


def spec_key(spec: dict[str, Any]) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


class TrialStore:
    def __init__(self, path: str | os.PathLike, create: bool = True):
        self.path = os.path.abspath(path)  # the same file whatever the working directory becomes
        self.shown = str(path)  # as the user named it, for messages
        self.read_only = not create
        if not create and not os.path.isfile(self.path):
            raise RunError(f"{os.path.dirname(self.shown) or '.'}: no trial store ({os.path.basename(self.path)})")
        if not create:
            with self._connect() as db:  # a garbage file fails here, not in the middle of a report
                db.execute("SELECT id, budget, status, spec, score FROM trials LIMIT 1").fetchall()
        if create:
            with self._connect() as db:
                db.execute("PRAGMA journal_mode=WAL")  # persistent: readers never block the writer
                db.executescript(SCHEMA)
                have = {row["name"] for row in db.execute("PRAGMA table_info(trials)")}
                for column, kind in (("proposal", "TEXT"), ("rewritten", "INTEGER"), ("reward", "REAL"),
                                     ("test_score", "REAL"), ("data", "TEXT"), ("repro", "TEXT"), ("rungs", "TEXT"),
                                     ("bracket", "INTEGER"), ("stage", "TEXT")):
                    if column not in have:  # a run written before these columns existed
                        db.execute(f"ALTER TABLE trials ADD COLUMN {column} {kind}")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            if self.read_only:  # results and export: never create or change a file of the run
                # Without a write-ahead log nothing is pending and SQLite may read the file as it is;
                # otherwise even a read-only connection would leave -wal and -shm files behind.
                # With one (a search running, or killed), reading through it creates nothing new.
                mode = "ro" if os.path.exists(self.path + "-wal") else "ro&immutable=1"
                db = sqlite3.connect(f"file:{quote(self.path)}?mode={mode}", uri=True, timeout=60)
            else:
                db = sqlite3.connect(self.path, timeout=60)
            db.row_factory = sqlite3.Row
            # WAL with synchronous=NORMAL: a commit survives the process being killed (what resume relies
            # on) without an fsync per trial event; only a power cut may lose the last commits.
            if not self.read_only:
                db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise self._damaged(exc) from None
        try:
            with db:  # one transaction, committed on exit
                yield db
        except sqlite3.Error as exc:
            raise self._damaged(exc) from None
        finally:
            db.close()

    def _damaged(self, exc: Exception) -> RunError:
        where = f"{os.path.dirname(self.shown) or '.'}: {os.path.basename(self.path)}"
        text = " ".join(str(exc).split())
        if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
            return RunError(f"{where} is busy ({text}); another process holds it")
        return RunError(f"{where} is damaged: {text}")

    def start(self, budget: int, spec: dict, flops: int, params: int, seed: int, proposal: dict | None = None,
              rewritten: int | None = None) -> int:
        with self._connect() as db:
            cur = db.execute("INSERT INTO trials (budget, status, spec, spec_key, flops, params, seed, started, "
                             "proposal, rewritten) VALUES (?, 'running', ?, ?, ?, ?, ?, ?, ?, ?)",
                             (budget, json.dumps(spec), spec_key(spec), flops, params, seed, time.time(),
                              json.dumps(proposal) if proposal is not None else None, rewritten))
            return int(cur.lastrowid)

    def finish(self, trial_id: int, status: str, metrics: dict, score: float | None, error: str | None,
               seconds: float, reward: float | None = None, test_score: float | None = None,
               data: dict | None = None, repro: dict | None = None, rungs: list | None = None,
               bracket: int | None = None) -> None:
        with self._connect() as db:
            db.execute("UPDATE trials SET status=?, metrics=?, score=?, error=?, seconds=?, ended=?, reward=?, "
                       "test_score=?, data=?, repro=?, rungs=?, bracket=COALESCE(?, bracket) WHERE id=?",
                       (status, json.dumps(metrics), score, error, seconds, time.time(), reward, test_score,
                        _json_or_null(data), _json_or_null(repro), _json_or_null(rungs), bracket, trial_id))

    def set_stage(self, trial_id: int, stage: str, plugin: str | None) -> None:
        """The stage a running trial has entered: what a trial process that dies leaves behind to be named by."""
        with self._connect() as db:
            db.execute("UPDATE trials SET stage=? WHERE id=? AND status='running'",
                       (json.dumps({"stage": stage, "plugin": plugin}), trial_id))

    def mark_interrupted(self) -> None:
        """The running rows of a search stopped by Ctrl-C or SIGTERM: their trials did not end the process (a
        resume runs them again without counting it against them)."""
        with self._connect() as db:
            for row in db.execute("SELECT id, stage FROM trials WHERE status='running'").fetchall():
                stage = json.loads(row["stage"]) if row["stage"] else {}
                db.execute("UPDATE trials SET stage=? WHERE id=?", (json.dumps({**stage, "interrupted": True}),
                                                                    row["id"]))

    def fail_orphans(self, budget: int, since: float, why: str) -> list[int]:
        """Rows of ``budget`` started at or after ``since`` and still running once every trial process that could
        finish them has ended (a process that exited, crashed or was killed mid-trial): failed, with ``why``
        and the stage they were in. Returns their ids."""
        failed = []
        with self._connect() as db:
            rows = db.execute("SELECT id, stage, started FROM trials WHERE budget=? AND status='running' AND "
                              "started >= ?", (budget, since)).fetchall()
            for row in rows:
                at = where_it_was(json.loads(row["stage"]) if row["stage"] else None)
                db.execute("UPDATE trials SET status='failed', error=?, ended=?, seconds=? WHERE id=?",
                           (f"the trial process ended without a result{at}: {why}", time.time(),
                            time.time() - row["started"], row["id"]))
                failed.append(int(row["id"]))
        return failed

    def set_rungs(self, trial_id: int, rungs: list) -> None:
        """A trial's rungs alone (a failed continuation, or asha's decision), its result unchanged."""
        with self._connect() as db:
            db.execute("UPDATE trials SET rungs=? WHERE id=?", (json.dumps(rungs), trial_id))

    def next_bracket(self, budget: int) -> int:
        with self._connect() as db:
            row = db.execute("SELECT MAX(bracket) AS b FROM trials WHERE budget=?", (budget,)).fetchone()
        return (row["b"] + 1) if row and row["b"] is not None else 0

    def record(self, row: dict[str, Any]) -> int:
        """A finished trial evaluated elsewhere (a remote machine), written whole in one transaction."""
        now = time.time()
        with self._connect() as db:
            cur = db.execute(
                "INSERT INTO trials (budget, status, spec, spec_key, flops, params, metrics, score, error, seconds, "
                "seed, started, ended, proposal, rewritten, reward, test_score, data, repro) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["budget"], row["status"], json.dumps(row["spec"]), spec_key(row["spec"]), row["flops"],
                 row["params"], json.dumps(row["metrics"]), row["score"], row["error"], row["seconds"], row["seed"],
                 now - row["seconds"], now, json.dumps(row["proposal"]) if row.get("proposal") is not None else None,
                 row.get("rewritten"), row["reward"], row.get("test_score"), _json_or_null(row.get("data")),
                 _json_or_null(row.get("repro"))))
            return int(cur.lastrowid)

    def bump(self, budget: int, name: str, by: int = 1) -> None:
        with self._connect() as db:
            db.execute("INSERT INTO counters (budget, name, value) VALUES (?, ?, ?) "
                       "ON CONFLICT (budget, name) DO UPDATE SET value = value + excluded.value", (budget, name, by))

    def counter(self, budget: int, name: str) -> int:
        with self._connect() as db:
            row = db.execute("SELECT value FROM counters WHERE budget=? AND name=?", (budget, name)).fetchone()
        return int(row["value"]) if row else 0

    def trials(self, budget: int | None = None, status: str | None = None) -> list[dict[str, Any]]:
        query, args = "SELECT * FROM trials WHERE 1=1", []
        if budget is not None:
            query, args = query + " AND budget=?", args + [budget]
        if status is not None:
            query, args = query + " AND status=?", args + [status]
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", args).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            try:
                d["spec"] = json.loads(d["spec"])
                d["metrics"] = json.loads(d["metrics"]) if d["metrics"] else {}
                d["proposal"] = json.loads(d["proposal"]) if d.get("proposal") else None
                d["data"] = json.loads(d["data"]) if d.get("data") else None
                d["repro"] = json.loads(d["repro"]) if d.get("repro") else None
                d["rungs"] = json.loads(d["rungs"]) if d.get("rungs") else None
                d["stage"] = json.loads(d["stage"]) if d.get("stage") else None
            except (TypeError, ValueError) as exc:
                raise self._damaged(ValueError(f"trial {d.get('id')}: {exc}")) from None
            if not isinstance(d["spec"], dict) or not isinstance(d["metrics"], dict):
                raise self._damaged(ValueError(f"trial {d.get('id')}: spec or metrics is not a JSON object"))
            if d["status"] == OK and not isinstance(d["score"], (int, float)):
                # a finished trial without a usable score cannot be ranked: read it as failed
                d["status"], d["error"] = FAILED, d.get("error") or f"stored score is {d['score']!r}"
                if status is not None and status != FAILED:
                    continue
            out.append(d)
        return out

    def rewards(self, budget: int) -> list[float]:
        """What the strategy received for the finished trials of ``budget``."""
        with self._connect() as db:
            rows = db.execute("SELECT reward FROM trials WHERE budget=? AND status='ok' AND reward IS NOT NULL",
                              (budget,)).fetchall()
        return [float(r["reward"]) for r in rows]

    def lookup(self, budget: int, key: str) -> dict[str, Any] | None:
        """A finished trial of the same architecture under the same budget, if any."""
        with self._connect() as db:
            row = db.execute("SELECT id, status, score, reward FROM trials WHERE budget=? AND spec_key=? "
                             "AND status IN ('ok', 'failed') ORDER BY id LIMIT 1", (budget, key)).fetchone()
        return dict(row) if row else None

    def delete(self, trial_id: int) -> None:
        with self._connect() as db:
            db.execute("DELETE FROM trials WHERE id=?", (trial_id,))
