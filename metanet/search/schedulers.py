"""The schedulers of a multi-fidelity search in a run's store: sh and hyperband brackets climbed (and the NNI
middleware of the sequential engine that forms them and holds results back until a bracket is done), and after a
kill, every rung a trial had earned but not run (sh, hyperband, asha). Idempotent: a trial that holds a rung is
never evaluated at it again. The ladder, its rules and the checkpoints are :mod:`metanet.search.fidelity`.
"""
from __future__ import annotations

from typing import Any

from metanet.search.fidelity import (HANDOFF, asha_continues, brackets, drop_checkpoint, ladder_of, rung_reached,
                                     rung_score)


def complete_bracket(run, budget: int, bracket: int, s: dict[str, Any], echo=lambda *_: None) -> None:
    """Continue the best of each rung of ``bracket`` (sh, hyperband) until it reaches the top rung; trials
    that already hold a rung are not evaluated again. Then the bracket's checkpoints are dropped."""
    from metanet.runs.store import OK
    from metanet.search.trial import continue_trial
    ladder = ladder_of(s)

    def members():
        return [r for r in run.store.trials(budget) if r.get("bracket") == bracket and r["status"] == OK
                and rung_reached(r) >= 0]

    rows = members()
    if not rows:
        return
    start = min(min(g["rung"] for g in r["rungs"]) for r in rows)
    n = len(rows)
    for k in range(start + 1, ladder.top + 1):
        below = sorted((r for r in rows if rung_score(r, k - 1) is not None),
                       key=lambda r: (-rung_score(r, k - 1), r["id"]))
        for row in below[:ladder.kept(n, k, start)]:
            if rung_reached(row) < k:
                echo(f"fidelity: trial {row['id']} continued to rung {k} ({ladder.rungs[k]} steps)")
                continue_trial(run, row, k, s)
        rows = members()
    for r in rows:
        drop_checkpoint(run.path, r["id"])


def resume_ladders(run, budget: int, s: dict[str, Any], echo=lambda *_: None) -> None:
    """After a kill: every bracket of ``budget`` completed (sh, hyperband), and every asha trial that had
    decided to go on continued from its checkpoint. No finished rung is evaluated again."""
    from metanet.runs.store import OK
    from metanet.search.trial import continue_trial
    ladder = ladder_of(s)
    rows = [r for r in run.store.trials(budget) if r["status"] == OK and r.get("rungs")]
    if s["fidelity"]["scheduler"] == "asha":
        for row in rows:
            while True:
                k = rung_reached(row)
                last = next((g for g in row["rungs"] if g["rung"] == k), {})
                if k >= ladder.top or not last.get("continue"):
                    break
                echo(f"fidelity: trial {row['id']} continued to rung {k + 1} ({ladder.rungs[k + 1]} steps)")
                outcome = continue_trial(run, row, k + 1, s)
                row = next(r for r in run.store.trials(budget) if r["id"] == row["id"])
                if outcome["status"] != OK or rung_reached(row) <= k:
                    break
                if rung_reached(row) < ladder.top:
                    recorded = [rung_score(r, k + 1) for r in run.store.trials(budget)]
                    go_on = asha_continues(rung_score(row, k + 1), recorded, ladder.eta)
                    rungs = [*row["rungs"][:-1], {**row["rungs"][-1], "continue": go_on}]
                    run.store.set_rungs(row["id"], rungs)
                    row = {**row, "rungs": rungs}
            drop_checkpoint(run.path, row["id"])
        return
    for bracket in sorted({r["bracket"] for r in rows if r.get("bracket") is not None}):
        complete_bracket(run, budget, bracket, s, echo)


def scheduler_middleware(run, budget: int, s: dict[str, Any], echo=lambda *_: None):
    """NNI middleware of the sequential engine for sh and hyperband: it groups the strategy's proposals into
    brackets, lets each be evaluated at its bracket's first rung (tagged on the model for the trial), holds
    the results back, and when a bracket is full (or the strategy waits for one of its models) continues
    its best rung by rung; only then does the strategy receive each trial's score, that of the highest rung
    it reached."""
    from metanet.quiet import quiet
    with quiet():
        from nni.nas.execution.event import ModelEventType
        from nni.nas.space import ModelStatus
        from nni.nas.strategy.middleware import StrategyMiddleware
    ladder = ladder_of(s)
    plan = brackets(ladder, s["fidelity"]["scheduler"])

    class FidelityScheduler(StrategyMiddleware):
        def __init__(self):
            super().__init__()
            self._open: dict | None = None   # {"id", "start", "size", "models"}
            self._held: dict[int, dict] = {}   # id(model) -> {"model", "final", "status"}

        def _initialize_engine(self, engine) -> None:
            engine.register_model_event_callback(ModelEventType.FinalMetric, self._on_final)
            engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_end)
            engine.register_model_event_callback(ModelEventType.IntermediateMetric, self._on_intermediate)

        def _cleanup(self) -> None:
            # the strategy is done (its trials ran out): the open bracket is climbed now, so that the models NNI
            # waits for before the experiment ends get their status
            if self._open is not None:
                self._close()
            for held in list(self._held.values()):
                self._release(held)
            self.engine.unregister_model_event_callback(ModelEventType.FinalMetric, self._on_final)
            self.engine.unregister_model_event_callback(ModelEventType.TrainingEnd, self._on_end)
            self.engine.unregister_model_event_callback(ModelEventType.IntermediateMetric, self._on_intermediate)

        def _on_intermediate(self, event) -> None:
            self.dispatch_model_event(ModelEventType.IntermediateMetric, metric=event.metric, model=event.model)

        def _on_final(self, event) -> None:
            held = self._held.get(id(event.model))
            if held is None or HANDOFF.replayed:
                self._held.pop(id(event.model), None)
                self.dispatch_model_event(ModelEventType.FinalMetric, metric=event.metric, model=event.model)
                return
            event.prevent_default()  # the model's metric and status are set when the bracket releases it
            held["final"] = event.metric

        def _on_end(self, event) -> None:
            held = self._held.get(id(event.model))
            if held is None:
                self.dispatch_model_event(ModelEventType.TrainingEnd, status=event.status, model=event.model)
                return
            event.prevent_default()
            held["status"], held["trial"] = event.status, HANDOFF.trial
            if event.status != ModelStatus.Trained or HANDOFF.trial is None or HANDOFF.replayed:
                self._release(held)  # failed, or no row of its own: nothing for the bracket to continue
            elif self._open is not None:
                held["bracket"] = self._open["id"]
                self._open["members"] += 1

        def _release(self, held: dict) -> None:
            self._held.pop(id(held["model"]), None)
            if held.get("final") is not None:
                self.dispatch_model_event(ModelEventType.FinalMetric, metric=held["final"], model=held["model"])
            self.dispatch_model_event(ModelEventType.TrainingEnd, status=held.get("status") or ModelStatus.Failed,
                                      model=held["model"])

        def submit_models(self, *models) -> None:
            for model in models:
                if self._open is None:
                    start, size = next(plan)
                    self._open = {"id": run.store.next_bracket(budget), "start": start, "size": size, "members": 0}
                self._held[id(model)] = {"model": model}
                HANDOFF.bracket, HANDOFF.trial, HANDOFF.replayed = (self._open["id"], self._open["start"]), None, False
                try:
                    self.engine.submit_models(model)  # the sequential engine evaluates it now, at the first rung
                finally:
                    HANDOFF.bracket = None
                if self._open is not None and self._open["members"] >= self._open["size"]:
                    self._close()

        def _close(self) -> None:
            bracket, self._open = self._open, None
            complete_bracket(run, budget, bracket["id"], s, echo)
            rewards = {r["id"]: r for r in run.store.trials(budget)}
            for held in list(self._held.values()):
                if held.get("bracket") != bracket["id"]:
                    continue
                row = rewards.get(held.get("trial"))
                if row is not None and row.get("reward") is not None:
                    held["final"] = float(row["reward"])  # the score of the highest rung it reached
                self._release(held)

        def wait_models(self, *models) -> None:
            if self._open is not None and (not models or any(id(m) in self._held for m in models)):
                self._close()

        def list_models(self, status=None):
            return self.engine.list_models(status)

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state_dict: dict) -> None:
            pass

    return FidelityScheduler()
