"""What a trial needs to be re-run exactly, and the re-run: ``metanet evaluate --rerun RUN TRIAL``.

Every trial stores a record beside its metrics (the ``repro`` column): the seed and repeats, the stages with
their settings resolved with the defaults of the day, the score's weights, how its data was read (``--data``,
``--data-dir``, ``--downstream``, proxy resolution, validation fraction) with the data's fingerprint (images
and a hash of the listing and the split, :mod:`metanet.data.fingerprint`), the runtime (accelerator,
precision, devices, compile, deterministic kernels, CPU threads) and the versions of metanet, torch, timm
and Python. :func:`rerun` evaluates the stored architecture again from that record alone, in this process
and without writing to the run, and says whether every metric came out the same to the last digit.

On CPU a re-run on the same machine matches exactly (every stage draws from seeded generators, and
deterministic kernels are on). A different thread count, CPU, torch or timm can change the last digits of
floating-point sums; the comparison names what differs from the record. On GPUs, cuDNN's algorithm choice and
atomic reductions are not deterministic unless the trial ran with ``--deterministic``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metanet.errors import RunError
from metanet.evaluate.record import settings_from, versions


@dataclass
class Rerun:
    trial: int
    run_dir: str
    status: str
    matches: bool
    metrics: int                                 # metrics compared
    differences: dict[str, list] = field(default_factory=dict)   # metric -> [stored, now]
    data_changed: bool = False
    changed: dict[str, list] = field(default_factory=dict)       # record entries that differ now: [then, now]
    recorded: bool = True                         # False: the run predates records; its config was used
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"trial": self.trial, "run_dir": self.run_dir, "status": self.status, "matches": self.matches,
                "metrics": self.metrics, "differences": self.differences, "data_changed": self.data_changed,
                "changed": self.changed, "recorded": self.recorded, "error": self.error}

    def summary(self) -> str:
        if self.matches:
            return f"trial {self.trial}: reproduced, {self.metrics} metrics identical to the last digit"
        if self.error:
            return f"trial {self.trial}: the re-run failed: {self.error}"
        shown = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(self.differences.items())[:3])
        why = f"; what changed since: {', '.join(self.changed)}" if self.changed else ""
        data = "; the data changed since (fingerprint differs)" if self.data_changed else ""
        return f"trial {self.trial}: differs in {len(self.differences)} of {self.metrics} metrics ({shown}){data}{why}"


def _find(run, trial_id: int) -> dict[str, Any]:
    for row in run.read_store().trials():
        if row["id"] == trial_id:
            return row
    raise RunError(f"{run.path}: no trial {trial_id}")


def rerun(run_dir: str | Path, trial_id: int) -> Rerun:
    """Evaluate trial ``trial_id`` of ``run_dir`` again from its record; nothing is written to the run."""
    import torch

    from metanet.data.fingerprint import bundle_fingerprint
    from metanet.plugin.manager import registry
    from metanet.runs.directory import RunDir
    from metanet.search_spaces.spec import ArchSpec
    from metanet.search.trial import _evaluate, data_cache_dir, settings_data, trial_settings

    run = RunDir.open(run_dir)
    row = _find(run, trial_id)
    if row["status"] == "running":
        raise RunError(f"{run.path}: trial {trial_id} never finished; there is nothing to compare with")
    base = trial_settings(run.config, run.path, row["budget"])
    repro = row.get("repro")
    settings = settings_from(repro, base) if repro else dict(base, threads=None)
    cache = data_cache_dir(run.path)
    settings["data_cache"] = str(cache) if cache.is_dir() else None  # the same pixels, already decoded
    changed: dict[str, list] = {}
    if repro:
        for key, then in repro["versions"].items():
            if versions().get(key) != then:
                changed[f"versions.{key}"] = [then, versions().get(key)]
    threads = torch.get_num_threads()
    if settings.get("threads"):
        torch.set_num_threads(settings["threads"])  # reductions are summed in the trial's order
    from metanet.data.load import forget_loaded
    forget_loaded()  # read the data as it is now: a fingerprint of a stale bundle would prove nothing
    try:
        data = settings_data(registry(settings["plugins"]), settings)
        fingerprint = bundle_fingerprint(data)
        outcome = _evaluate(ArchSpec.from_dict(row["spec"]), settings, trial_id=trial_id)
    finally:
        torch.set_num_threads(threads)
    data_changed = bool(repro) and {k: repro["data"].get(k) for k in fingerprint} != fingerprint
    if data_changed:
        changed["data"] = [{k: repro["data"].get(k) for k in fingerprint}, fingerprint]
    stored, now = row["metrics"] or {}, outcome["metrics"] or {}
    keys = sorted(set(stored) | set(now))
    differences = {k: [stored.get(k), now.get(k)] for k in keys if stored.get(k) != now.get(k)}
    if row["score"] != outcome["score"]:
        differences["score"] = [row["score"], outcome["score"]]
    same_status = row["status"] == outcome["status"]
    if not same_status:
        differences["status"] = [row["status"], outcome["status"]]
    return Rerun(trial_id, str(run.path), outcome["status"], not differences and same_status, len(keys),
                 differences, data_changed, changed, bool(repro), outcome["error"])
