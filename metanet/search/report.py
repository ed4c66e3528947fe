"""What a finished (or running) search reports: the per-budget table, the Pareto plot, the trial list."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from metanet.budget import format_flops
from metanet.runs.directory import RunDir
from metanet.runs.store import FAILED, OK


@dataclass
class SearchSummary:
    run_dir: Path
    best: dict[int, dict | None]
    trials: int
    failed: int
    screened: dict[int, int]
    table: str
    plot: Path | None
    finished: int = 0                # trials that finished with a score, every budget
    first_error: str | None = None   # the error of the first failed trial (trial id: message)
    final: dict[int, dict] | None = None  # the second phase per budget (metanet.search.driver.final_phase)

    def to_json(self) -> dict:
        best = {str(b): (r and {"id": r["id"], "flops": r["flops"], "params": r["params"], "score": r["score"],
                                "test_score": r.get("test_score")})
                for b, r in self.best.items()}
        return {"run_dir": str(self.run_dir), "trials": self.trials, "failed": self.failed,
                "screened": {str(k): v for k, v in self.screened.items()}, "best": best,
                "plot": str(self.plot) if self.plot else None,
                "final": None if self.final is None else {str(b): v for b, v in self.final.items()}}

    def final_table(self) -> str:
        """The second phase, per budget: each re-evaluated trial's search and final scores."""
        from metanet.budget import format_flops
        lines = []
        for b, phase in (self.final or {}).items():
            lines.append(f"final phase {format_flops(b)} ({','.join(phase['stages'])}): {phase['dir']}")
            lines.append(f"{'id':>6} {'search':>8} {'final':>8} {'rank':>5}")
            for t in phase["trials"]:
                final = "-" if t["final_score"] is None else f"{t['final_score']:.4f}"
                lines.append(f"{t['id']:>6} {t['score']:>8.4f} {final:>8} {t['final_rank'] or '-':>5}")
        return "\n".join(lines)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal FLOPs and higher or equal score)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def summarize(run: RunDir, write: bool = True) -> SearchSummary:
    """The per-budget table (and, with ``write``, summary.txt and the Pareto plot in the run)."""
    store = run.store if write else run.read_store()
    cfg = run.config
    best = run.best(store)
    counts = {b: run.counts(b, store) for b in cfg.flops}
    # the best is chosen on the validation score; its test score is reported beside it, never used
    lines = [f"{'budget':>8} {'trials':>6} {'failed':>6} {'screened':>8} {'best id':>7} {'FLOPs':>9} {'params':>8} "
             f"{'val':>8} {'test':>8}"]
    for b in cfg.flops:
        c, br = counts[b], best[b]
        lines.append(f"{format_flops(b):>8} {c['trials']:>6} {c['failed']:>6} {c['screened']:>8} "
                     + (f"{br['id']:>7} {format_flops(br['flops']):>9} {format_flops(br['params']):>8} "
                        f"{br['score']:>8.4f} {_fmt(br.get('test_score')):>8}"
                        if br else f"{'-':>7} {'-':>9} {'-':>8} {'-':>8} {'-':>8}"))
    table = "\n".join(lines)
    ok = store.trials(status=OK)
    plot = None
    if write:
        (run.path / run.SUMMARY).write_text(table + "\n")
        plot = _plot(run, ok) if ok else None
    failed = store.trials(status=FAILED)
    first_error = f"trial {failed[0]['id']}: {' '.join(str(failed[0]['error']).split())}" if failed else None
    return SearchSummary(run.path, best, sum(c["trials"] for c in counts.values()),
                         sum(c["failed"] for c in counts.values()), {b: c["screened"] for b, c in counts.items()},
                         table, plot, len(ok), first_error)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def results_rows(run: RunDir, top: int | None = None) -> list[dict]:
    """The trials of a run for ``metanet results``: per budget, best first (never writes into the run).

    ``score`` is the validation score the search optimised, ``test_score`` the same formula on the
    test splits; with ``--repeats``, both are means over the seeds and ``score_std`` their spread.
    """
    keys = ("id", "budget", "status", "spec", "flops", "params", "score", "test_score", "metrics", "error",
            "seconds", "seed", "proposal", "rewritten", "reward", "data", "repro", "rungs", "bracket")
    rows = []
    for r in run.by_budget(top, store=run.read_store()):
        row = {k: r.get(k) for k in keys}
        row["score_std"] = r["metrics"].get("score_std")
        row["score_se"] = r["metrics"].get("score_se")
        row["repeats"] = int(r["metrics"].get("repeats", 1)) if r["status"] == OK else None
        rows.append(row)
    return rows


def results_table(rows: list[dict]) -> str:
    """One line per trial: ``val`` with its standard error (binomial over the validation images, or across
    --repeats), and under a multi-fidelity search the rungs it climbed (steps of each) and the ladder."""
    from metanet.search.fidelity import ladder_table
    from metanet.search_spaces.spec import ArchSpec, SpecError
    ladder = any(r.get("rungs") for r in rows)
    lines = [f"{'id':>4} {'budget':>7} {'status':>7} {'FLOPs':>8} {'params':>8} {'val':>13} {'test':>7}  "
             + (f"{'rungs (steps)':<16} " if ladder else "") + "layout / error"]
    for r in rows:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        spread = r.get("score_std") if r.get("score_std") is not None else r.get("score_se")
        if r["score"] is not None and spread is not None:
            score = f"{r['score']:.4f}±{spread:.4f}"
        steps = "/".join(str(g["steps"]) for g in r.get("rungs") or [] if g.get("score") is not None)
        if r["status"] == FAILED:
            detail = r["error"]
        else:
            try:
                detail = ArchSpec.from_dict(r["spec"]).describe()
            except SpecError as exc:  # e.g. an operator of a plugin that is not loaded now
                detail = str(exc)
        lines.append(f"{r['id']:>4} {format_flops(r['budget']):>7} {r['status']:>7} {format_flops(r['flops']):>8} "
                     f"{format_flops(r['params']):>8} {score:>13} {_fmt(r.get('test_score')):>7}  "
                     + (f"{steps or '-':<16} " if ladder else "") + f"{(detail or '')[:100]}")
    table = ladder_table(rows)
    return "\n".join(lines) + (f"\n{table}" if table else "")


def operator_mix(rows: list[dict]) -> dict[int, dict[str, dict[str, float]]]:
    """Per budget and stage, the share of each operator among the finished trials' architectures."""
    from metanet.search_spaces.spec import NUM_STAGES, stage_key
    out: dict[int, dict[str, dict[str, float]]] = {}
    for budget in sorted({r["budget"] for r in rows}):
        done = [r for r in rows if r["budget"] == budget and r["status"] == OK]
        if not done:
            continue
        per_stage = {}
        for i in range(NUM_STAGES):
            ops = [r["spec"][stage_key(i, "op")] for r in done]
            per_stage[f"s{i}"] = {op: ops.count(op) / len(ops) for op in sorted(set(ops))}
        out[budget] = per_stage
    return out


def operator_mix_table(rows: list[dict]) -> str:
    lines = []
    for budget, stages in operator_mix(rows).items():
        n = sum(r["budget"] == budget and r["status"] == OK for r in rows)
        lines.append(f"operators evaluated under {format_flops(budget)} ({n} finished trials):")
        for stage, mix in stages.items():
            lines.append(f"  {stage}: " + ", ".join(f"{op} {share:.0%}" for op, share in
                                                     sorted(mix.items(), key=lambda kv: -kv[1])))
    return "\n".join(lines)


def _plot(run: RunDir, ok: list[dict]) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = run.config
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for b in cfg.flops:
        mine = [r for r in ok if r["budget"] == b]
        ax.scatter([r["flops"] / 1e6 for r in mine], [r["score"] for r in mine], s=18, alpha=0.7,
                   label=f"budget {format_flops(b)}")
        ax.axvline(b / 1e6, color="grey", lw=0.6, ls=":")
    pts = [(r["flops"], r["score"]) for r in ok]
    front = [pts[i] for i in pareto_front(pts)]
    ax.step([f / 1e6 for f, _ in front], [s for _, s in front], where="post", color="black", lw=1.2,
            label="Pareto front")
    ax.scatter([f / 1e6 for f, _ in front], [s for _, s in front], marker="*", s=90, color="black", zorder=3)
    ax.set_xlabel(f"MFLOPs (MACs) at {cfg.resolution}px")
    ax.set_ylabel("validation score (what the search optimised)")
    ax.set_title(f"metanet search: {cfg.strategy}, stages {','.join(cfg.stages)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run.path / run.PLOT
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
