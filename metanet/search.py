"""The search driver: NNI explores the unified space under FLOP budgets; every trial is kept.

For each budget of the family, one NNI experiment runs the chosen strategy over the space. In the
default ``project`` budget mode, each proposal is mapped to the architecture a seeded walk reaches
inside the FLOP band (analytic estimator, no model built); in ``screen`` mode proposals outside the
band are dropped by NNI's ``Filter`` middleware. Either way nothing outside the band is built or
trained, and the run counts what was screened. Trials are evaluated by the stage plugins and written
to the run directory's SQLite store the moment they end; ``resume`` re-runs what was in flight.
"""
from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .budget import format_flops, parse_budgets
from .store import TrialStore, spec_key

ENGINES = ("sequential", "ts")
BUDGET_MODES = ("project", "screen")
CONFIG_FILE = "config.json"
STORE_FILE = "trials.sqlite"


class SearchError(ValueError):
    """A search that cannot start; the message names the option."""


@dataclass
class SearchConfig:
    space: str = "unified"
    flops: list[int] = field(default_factory=lambda: [300_000_000])
    band: tuple[float, float] = (0.9, 1.0)
    budget_mode: str = "project"
    strategy: str = "random"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    trials: int = 6
    stages: list[str] = field(default_factory=lambda: ["zero-cost", "amateur", "downstream"])
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    score: dict[str, float] | None = None
    data: str = "digits"
    proxy_resolution: int = 32
    resolution: int = 224
    seed: int = 0
    out: str | None = None
    engine: str = "sequential"
    concurrency: int = 1
    port: int = 8080
    training_service: str = "local"   # or a JSON/YAML file listing remote machines
    invalid_score: float = -1.0        # reported to the strategy for failed trials
    plugins: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SearchConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = [k for k in data if k not in known]
        if unknown:
            raise SearchError(f"{source}: unknown option {unknown[0]!r} (options: {', '.join(sorted(known))})")
        data = dict(data)
        if "flops" in data:
            flops = data["flops"]
            try:
                data["flops"] = parse_budgets(flops) if isinstance(flops, str) else \
                    sorted({int(parse_budgets(str(f))[0]) for f in flops})
            except (ValueError, TypeError) as exc:
                raise SearchError(f"{source}: flops: {exc}") from None
        if "stages" in data and isinstance(data["stages"], str):
            data["stages"] = [s.strip() for s in data["stages"].split(",") if s.strip()]
        if "band" in data:
            data["band"] = tuple(float(x) for x in data["band"])
        cfg = cls(**data)
        cfg.validate(source)
        return cfg

    def validate(self, source: str = "config") -> None:
        if self.engine not in ENGINES:
            raise SearchError(f"{source}: engine: unknown engine {self.engine!r} (expected one of {', '.join(ENGINES)})")
        if self.budget_mode not in BUDGET_MODES:
            raise SearchError(f"{source}: budget_mode: expected one of {', '.join(BUDGET_MODES)}")
        if not (0 < self.band[0] < self.band[1]):
            raise SearchError(f"{source}: band: need 0 < low < high, got {self.band}")
        for name in ("trials", "concurrency", "proxy_resolution", "resolution"):
            if int(getattr(self, name)) < 1:
                raise SearchError(f"{source}: {name}: must be a positive integer")
        if not self.stages:
            raise SearchError(f"{source}: stages: name at least one stage")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or TOML file holding the same options as the command-line flags."""
    from .files import load_structured
    data = load_structured(path, "config", SearchError)
    if not isinstance(data, dict):
        raise SearchError(f"{path}: expected a mapping of options")
    return {k.replace("-", "_"): v for k, v in data.items()}


# -- trials ----------------------------------------------------------------------------------

_data_cache: dict[tuple, Any] = {}


def _settings(cfg: SearchConfig, run_dir: Path, budget: int) -> dict[str, Any]:
    """What a trial needs, JSON-serialisable so NNI can ship it to a trial process."""
    return {"run_dir": str(run_dir), "budget": budget, "stages": cfg.stages, "settings": cfg.settings,
            "score": cfg.score, "data": cfg.data, "proxy_resolution": cfg.proxy_resolution,
            "resolution": cfg.resolution, "seed": cfg.seed, "plugins": cfg.plugins,
            "invalid_score": cfg.invalid_score,
            # trial processes share the cores: oversubscribed OpenMP threads spin and crawl
            "threads": max(1, (os.cpu_count() or 1) // cfg.concurrency) if cfg.engine == "ts" else None}


def evaluate_spec(spec, s: dict[str, Any]) -> tuple[float, dict]:
    """Evaluate one architecture and write it to the store; returns (score to report, row)."""
    from metanet.data import load_data
    from metanet.plugin_manager import get_plugin_manager
    from metanet.search_spaces.estimate import estimate
    from metanet.stages import evaluate_candidate

    store = TrialStore(Path(s["run_dir"]) / STORE_FILE)
    spec_dict = spec.to_dict()
    seen = store.lookup(s["budget"], spec_key(spec_dict))
    if seen is not None:  # the same architecture again (another proposal projected onto it)
        store.bump(s["budget"], "duplicates")
        return (seen["score"] if seen["status"] == "ok" else s["invalid_score"]), seen
    est = estimate(spec, s["resolution"])
    trial_id = store.start(s["budget"], spec_dict, est.flops, est.params, s["seed"])
    start = time.perf_counter()
    try:
        pm = get_plugin_manager(s["plugins"])
        key = (s["data"], s["proxy_resolution"], s["seed"])
        if key not in _data_cache:
            _data_cache[key] = load_data(pm, s["data"], s["proxy_resolution"], s["seed"])
        result = evaluate_candidate(spec, s["stages"], _data_cache[key], config=s["settings"], pm=pm,
                                    score_weights=s["score"], seed=s["seed"],
                                    trial={"id": trial_id, "budget": s["budget"]})
        status, metrics, score = ("ok" if result.status == "finished" else "failed"), result.metrics, result.score
        error = None
        if result.error:
            error = f"stage {result.error['stage']} (plugin {result.error['plugin']}): {result.error['message']}"
        if status == "ok" and (score is None or not math.isfinite(score)):
            status, error = "failed", f"score is {score}"
    except Exception as exc:  # data or plugin trouble outside the stages: this trial fails, the search goes on
        status, metrics, score, error = "failed", {}, None, f"{type(exc).__name__}: {exc}"
    store.finish(trial_id, status, metrics, score if status == "ok" else None, error, time.perf_counter() - start)
    if status == "ok":
        keep_best_weights(store, Path(s["run_dir"]), s["budget"], trial_id, result.state, s["proxy_resolution"])
    row = {"id": trial_id, "status": status, "score": score}
    return (score if status == "ok" else s["invalid_score"]), row


WEIGHTS_DIR = "weights"
KEEP_WEIGHTS = 3  # per budget: the trained backbones of the best trials, for export


def weights_path(run_dir: Path, trial_id: int) -> Path:
    return Path(run_dir) / WEIGHTS_DIR / f"trial_{trial_id}.safetensors"


def keep_best_weights(store: TrialStore, run_dir: Path, budget: int, trial_id: int, state: dict,
                      img_size: int) -> None:
    """Save the trial's trained backbone if it is among the best of its budget; drop those that fell out."""
    stage = next((name for name in ("generalist", "amateur") if state.get(name, {}).get("weights")), None)
    if stage is None:
        return  # nothing trained the backbone (e.g. zero-cost only): export will say so
    ranked = sorted((r for r in store.trials(budget, status="ok")), key=lambda r: -r["score"])
    keep = {r["id"] for r in ranked[:KEEP_WEIGHTS]}
    if trial_id in keep:
        from safetensors.torch import save_file
        path = weights_path(run_dir, trial_id)
        path.parent.mkdir(exist_ok=True)
        tensors = {k: v.contiguous() for k, v in state[stage]["weights"].items()}
        save_file(tensors, str(path), metadata={"stage": stage, "img_size": str(img_size), "trial": str(trial_id)})
    for r in ranked[KEEP_WEIGHTS:]:
        weights_path(run_dir, r["id"]).unlink(missing_ok=True)


def nni_trial(model, settings: dict[str, Any]) -> None:
    """The function NNI's FunctionalEvaluator calls with each frozen model (in-process or in a trial process)."""
    import nni
    if settings.get("threads"):
        import torch
        torch.set_num_threads(settings["threads"])
    score, _ = evaluate_spec(model.spec, settings)
    nni.report_final_result(float(score))


def budget_filter(cfg_space, budget: int, cfg: SearchConfig, store: TrialStore):
    """NNI ``Filter`` function: True when the proposal is (or projects to) an in-band architecture."""
    from metanet.search_spaces.estimate import estimate
    from metanet.search_spaces.nni_space import project
    from metanet.search_spaces.spec import ArchSpec, SpecError
    from metanet.search_spaces.unified import repair_sample

    lo, hi = cfg.band[0] * budget, cfg.band[1] * budget

    def keep(model) -> bool:
        try:
            sample = repair_sample(model.sample) if cfg.budget_mode == "project" else model.sample
            spec = ArchSpec.from_sample(sample)
        except SpecError:
            ok = False
        else:
            if cfg.budget_mode == "project":
                ok = project(spec, cfg_space, budget, cfg.band, cfg.resolution, cfg.seed) is not None
            else:
                ok = lo <= estimate(spec, cfg.resolution).flops <= hi
        if not ok:
            store.bump(budget, "screened")
        return ok
    return keep


# -- the run ---------------------------------------------------------------------------------

@dataclass
class SearchSummary:
    run_dir: Path
    best: dict[int, dict | None]
    trials: int
    failed: int
    screened: dict[int, int]
    table: str
    plot: Path | None


def prepare_run(cfg: SearchConfig, resume: bool = False) -> tuple[Path, TrialStore]:
    run_dir = Path(cfg.out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}")
    if not resume:
        if (run_dir / STORE_FILE).exists():
            raise SearchError(f"{run_dir}: already holds a search; use --resume {run_dir} or another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.out = str(run_dir)
        (run_dir / CONFIG_FILE).write_text(cfg.to_json())
    return run_dir, TrialStore(run_dir / STORE_FILE)


def load_run(run_dir: str | os.PathLike) -> SearchConfig:
    path = Path(run_dir) / CONFIG_FILE
    if not path.exists():
        raise SearchError(f"{run_dir}: not a search run directory (no {CONFIG_FILE})")
    data = json.loads(path.read_text())
    return SearchConfig.from_dict(data, source=str(path))


def check_budgets(cfg: SearchConfig) -> None:
    from metanet.search_spaces.unified import get_space
    try:
        space = get_space(cfg.space)
    except KeyError as exc:
        raise SearchError(f"space: {exc.args[0]}") from None
    lo, hi = space.flops_range(cfg.resolution)
    for b in cfg.flops:
        if b * cfg.band[1] < lo or b * cfg.band[0] > hi:
            raise SearchError(f"flops: budget {format_flops(b)} is outside what space '{space.name}' reaches at "
                              f"{cfg.resolution}px: {format_flops(lo)} to {format_flops(hi)} FLOPs")


def run_search(cfg: SearchConfig, resume: bool = False, progress: bool | None = None,
               echo=print) -> SearchSummary:
    """Run (or resume) a search; returns the summary. The Python API of ``metanet search``."""
    from metanet.plugin_manager import get_plugin_manager
    from metanet.search_spaces.unified import get_space

    cfg.validate()
    pm = get_plugin_manager(cfg.plugins)
    for stage in cfg.stages:
        try:
            pm.get("stages", stage)
        except KeyError as exc:
            raise SearchError(f"stages: {exc.args[0]}") from None
    try:
        pm.get("strategies", cfg.strategy)
    except KeyError as exc:
        raise SearchError(f"strategy: {exc.args[0]}") from None
    from metanet.stages import stage_config
    for stage, overrides in cfg.settings.items():
        if stage not in cfg.stages:
            raise SearchError(f"settings: stage {stage!r} is not among the stages {','.join(cfg.stages)}")
        try:
            stage_config(pm, stage, overrides)
        except KeyError as exc:
            raise SearchError(f"settings: {exc.args[0]}") from None
    check_budgets(cfg)
    run_dir, store = prepare_run(cfg, resume)
    space = get_space(cfg.space)
    total = cfg.trials * len(cfg.flops)
    bar = _Progress(store, total, enabled=sys.stderr.isatty() if progress is None else progress)
    echo(f"search: {cfg.strategy} over '{cfg.space}', budgets {', '.join(format_flops(b) for b in cfg.flops)}, "
         f"{cfg.trials} trials each, stages {','.join(cfg.stages)}; run directory {run_dir}")
    try:
        for budget in cfg.flops:
            settings = _settings(cfg, run_dir, budget)
            # Trials that were in flight when a previous process died run again, first.
            from metanet.search_spaces.spec import ArchSpec
            for row in store.trials(budget, status="running"):
                store.delete(row["id"])
                evaluate_spec(ArchSpec.from_dict(row["spec"]), settings)
            # Proposals that land on an architecture already evaluated count as NNI trials but add no
            # row (the stored score is replayed): run again, with a fresh strategy seed, until the
            # budget has its trials.
            for attempt in range(8):
                done = len(store.trials(budget, status="ok")) + len(store.trials(budget, status="failed"))
                if done >= cfg.trials:
                    break
                _run_nni(cfg, space, budget, cfg.trials - done, settings, store, echo, seed_offset=done + attempt)
    finally:
        bar.close()
    summary = summarize(run_dir, cfg, store)
    best = {b: (r and {"id": r["id"], "flops": r["flops"], "score": r["score"], "spec": r["spec"]})
            for b, r in summary.best.items()}
    for problem in pm.notify("metanet_search_finished", run={"out_dir": str(run_dir), "trials": summary.trials,
                                                            "failed": summary.failed, "best": best}):
        echo(f"warning: {problem}")
    return summary


def _run_nni(cfg, space, budget, trials, settings, store, echo, seed_offset: int = 0) -> None:
    from metanet.quiet import quiet
    with quiet():
        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.experiment import NasExperiment, NasExperimentConfig
        from nni.nas.strategy.middleware import Chain, Deduplication, Filter

        from metanet.plugin_manager import get_plugin_manager
        from metanet.search_spaces.nni_space import UnifiedSpace
    import logging
    logging.getLogger("nni").setLevel(logging.ERROR)
    pm = get_plugin_manager(cfg.plugins)
    registered = pm.get("strategies", cfg.strategy)
    strategy = registered.obj(seed=cfg.seed + budget % 9973 + 7919 * seed_offset, **cfg.strategy_options)
    strategy = Chain(strategy, Deduplication("replay"),
                     Filter(budget_filter(space, budget, cfg, store), metric_for_invalid=cfg.invalid_score,
                            patience=100000, retain_history=False))
    model_space = UnifiedSpace(space, num_classes=0, img_size=cfg.proxy_resolution, budget=budget, band=cfg.band,
                               resolution=cfg.resolution, budget_mode=cfg.budget_mode, seed=cfg.seed,
                               constrained=registered.options.get("constraints", True))
    evaluator = FunctionalEvaluator(nni_trial, settings=settings)
    if cfg.engine == "sequential":
        config = NasExperimentConfig("sequential", "simplified")
    else:
        config = NasExperimentConfig("ts", "simplified", training_service_config(cfg))
        config.trial_concurrency = cfg.concurrency
        config.trial_gpu_number = 0
        echo(f"NNI web UI: http://localhost:{cfg.port} (budget {format_flops(budget)})")
    config.max_trial_number = trials
    exp = NasExperiment(model_space, evaluator, strategy, config=config)
    if cfg.engine == "sequential":
        exp.run()
    else:
        exp.run(port=cfg.port)


def training_service_config(cfg: SearchConfig):
    """NNI's ``local`` training service, or ``remote`` over SSH from a file listing the machines."""
    if cfg.training_service == "local":
        return "local"
    from metanet.remote import remote_service_config
    return remote_service_config(cfg.training_service)


# -- reporting --------------------------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (fewer or equal FLOPs and higher or equal score)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def summarize(run_dir: Path, cfg: SearchConfig, store: TrialStore | None = None) -> SearchSummary:
    store = store or TrialStore(Path(run_dir) / STORE_FILE)
    rows = store.trials()
    ok = [r for r in rows if r["status"] == "ok"]
    best = {}
    for b in cfg.flops:
        mine = [r for r in ok if r["budget"] == b]
        best[b] = max(mine, key=lambda r: r["score"]) if mine else None
    screened = {b: store.counter(b, "screened") for b in cfg.flops}
    lines = [f"{'budget':>8} {'trials':>6} {'failed':>6} {'screened':>8} {'best id':>7} {'FLOPs':>9} {'params':>8} "
             f"{'score':>8}"]
    for b in cfg.flops:
        mine = [r for r in rows if r["budget"] == b]
        nfail = sum(r["status"] == "failed" for r in mine)
        br = best[b]
        lines.append(f"{format_flops(b):>8} {len(mine):>6} {nfail:>6} {screened[b]:>8} "
                     + (f"{br['id']:>7} {format_flops(br['flops']):>9} {format_flops(br['params']):>8} "
                        f"{br['score']:>8.4f}" if br else f"{'-':>7} {'-':>9} {'-':>8} {'-':>8}"))
    table = "\n".join(lines)
    (Path(run_dir) / "summary.txt").write_text(table + "\n")
    plot = _plot(Path(run_dir), cfg, ok) if ok else None
    return SearchSummary(Path(run_dir), best, len(rows), sum(r["status"] == "failed" for r in rows), screened,
                         table, plot)


def _plot(run_dir: Path, cfg: SearchConfig, ok: list[dict]) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    ax.set_ylabel("score")
    ax.set_title(f"metanet search: {cfg.strategy}, stages {','.join(cfg.stages)}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = run_dir / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


class _Progress:
    """A progress bar on a terminal (trials done / total, best score, screened); silent otherwise."""

    def __init__(self, store: TrialStore, total: int, enabled: bool):
        self._stop = threading.Event()
        self._thread = None
        if not enabled:
            return
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc="trials", unit="trial", file=sys.stderr)
        self._thread = threading.Thread(target=self._loop, args=(store,), daemon=True)
        self._thread.start()

    def _loop(self, store: TrialStore) -> None:
        while not self._stop.wait(1.0):
            try:
                rows = store.trials()
            except Exception:
                continue
            done = [r for r in rows if r["status"] in ("ok", "failed")]
            scores = [r["score"] for r in done if r["score"] is not None]
            self.bar.n = len(done)
            self.bar.set_postfix(best=f"{max(scores):.4f}" if scores else "-",
                                 failed=sum(r["status"] == "failed" for r in done), refresh=False)
            self.bar.refresh()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.bar.close()
