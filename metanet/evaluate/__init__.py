"""Evaluating one candidate: the stage context and the loop that runs the stages a user picked, in order, on
an architecture and turns their metrics into its score and standard error (:mod:`.candidate`), and each
trial's reproduction record with ``evaluate --rerun`` (:mod:`.reproduce`).

May import: :mod:`metanet.errors`, :mod:`metanet.plugin`, :mod:`metanet.data`, :mod:`metanet.search_spaces`,
:mod:`metanet.train` (and, for a re-run, the run it re-runs through :mod:`metanet.search`, lazily).
"""
# an evaluation's outcome (the run store adds "running" for trials in flight); here, so that reading a store
# needs no torch
OK, FAILED = "ok", "failed"

_EXPORTS = {name: "metanet.evaluate.candidate" for name in (
    "StageContext", "TrialResult", "evaluate_candidate", "evaluate_repeated", "run_stage", "check_stages",
    "preflight_stages", "default_score_weights", "parse_score", "check_score_stages", "combine_score",
    "combine_test_score", "combine_se", "test_metric")}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'metanet.evaluate' has no attribute {name!r}")
