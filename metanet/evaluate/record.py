"""A trial's reproduction record: everything that re-runs it exactly (seed, stages with their settings resolved,
the score, how its data was read with the data's fingerprint, the runtime and the library versions). The search
stores it with every trial; :mod:`metanet.search.reproduce` re-runs from it.
"""
from __future__ import annotations

import platform
from typing import Any


def versions() -> dict[str, str]:
    import timm
    import torch

    from metanet import __version__
    return {"metanet": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "python": platform.python_version()}


def record(pm, s: dict[str, Any], data) -> dict[str, Any]:
    """The reproduction record of a trial run with settings ``s`` on ``data``."""
    import torch

    from metanet.data.fingerprint import bundle_fingerprint
    from metanet.evaluate.candidate import check_stages
    return {
        "seed": s["seed"], "repeats": s.get("repeats", 1), "stages": list(s["stages"]),
        "settings": check_stages(pm, list(s["stages"]), s.get("settings")), "score": s.get("score"),
        "data": {"data": s["data"], "data_dir": s.get("data_dir"), "downstream": list(s.get("downstream") or []),
                 "proxy_resolution": s["proxy_resolution"], "val_fraction": s.get("val_fraction"),
                 "min_val_images": s.get("min_val_images"),
                 "cache": s.get("cache", True), **bundle_fingerprint(data)},
        "runtime": {"accelerator": s.get("accelerator", "auto"), "precision": s.get("precision", "32"),
                    "devices": s.get("devices", 1), "compile": s.get("compile", False),
                    "deterministic": s.get("deterministic", False), "threads": torch.get_num_threads()},
        "versions": versions(),
        "plugins": list(s.get("plugins") or []),
    }


def settings_from(repro: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """Trial settings that re-create the record's trial (``base``: the run's settings for what it lacks)."""
    d, rt = repro["data"], repro["runtime"]
    return {**base, "seed": repro["seed"], "repeats": repro["repeats"], "stages": repro["stages"],
            "settings": repro["settings"], "score": repro["score"], "data": d["data"], "data_dir": d["data_dir"],
            "downstream": d["downstream"], "proxy_resolution": d["proxy_resolution"], "val_fraction": d["val_fraction"],
            "min_val_images": d.get("min_val_images"),
            "cache": d["cache"], "accelerator": rt["accelerator"], "precision": rt["precision"], "devices": rt["devices"],
            "compile": rt["compile"], "deterministic": rt["deterministic"], "threads": rt["threads"]}
