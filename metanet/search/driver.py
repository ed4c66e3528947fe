"""The search driver: NNI explores the space under FLOP budgets; every trial is kept.

:func:`run_search` checks everything a user can get wrong before the run directory is created,
then, for each budget of the family, re-runs the trials a killed process left in flight and runs
NNI experiments (:mod:`metanet.search.nni_adapter`) until the budget has its trials. Trials write to the
run's store the moment they end (:mod:`metanet.search.trial`); the summary comes from :mod:`metanet.search.report`.
"""
from __future__ import annotations

import os
import sys

from metanet.budget import format_flops
from metanet.errors import ConfigError, RunError, UnknownName
from metanet.search.progress import Progress
from metanet.search.report import SearchSummary, summarize
from metanet.runs.directory import RunDir
from metanet.runs.config import SearchConfig
from metanet.runs.store import DONE, OK, RUNNING
from metanet.writable import check_creatable


def check_config(cfg: SearchConfig):
    """Everything that would make the run fail, checked before anything is written; returns the space and the
    data (loaded, checked and, where trials run in this process or beside it, decoded once). A search that
    names no stages gets its defaults here, from the data (:func:`metanet.runs.config.default_stages`)."""
    from metanet.plugin.manager import registry
    from metanet.runs.config import default_stages
    from metanet.search_spaces.unified import get_space
    from metanet.evaluate.candidate import check_stages

    pm = registry(cfg.plugins)
    strategy = _lookup("strategy", pm.strategy, cfg.strategy)
    strategy.check_options(cfg.strategy_options)
    check_strategy_starts(strategy, cfg)
    space = _lookup("space", get_space, cfg.space)
    for stage in (cfg.stages or []) + cfg.final_stages:
        _lookup("stages", pm.stage, stage)
    check_engine(cfg)
    remote = cfg.engine == "ts" and cfg.training_service != "local"
    if not remote:  # the data is decoded here at this size (other machines are theirs to size)
        from metanet.search_spaces.memory import check_image_fits
        check_image_fits(cfg.proxy_resolution, accelerator=cfg.accelerator)
    data = check_data(pm, cfg)
    if cfg.stages is None:
        cfg.stages = default_stages(bool(data.tasks))
        if not data.tasks:
            data.notes.append(f"stages: {','.join(cfg.stages)} (data '{data.name}' has no downstream tasks; add "
                              "held-out ImageFolder tasks with --downstream DIR for the downstream stage)")
    both = list(dict.fromkeys(cfg.stages + cfg.final_stages))
    configs = check_stages(pm, both, cfg.settings)
    from metanet.evaluate.candidate import check_stage_data
    check_stage_data(pm, both, configs, data)
    if not remote:
        from metanet.evaluate.candidate import step_size
        check_image_fits(cfg.proxy_resolution, step_size(pm, both, configs)[0], accelerator=cfg.accelerator)
    if cfg.final_stages:
        from metanet.evaluate.candidate import check_score_stages, default_score_weights
        check_score_stages(default_score_weights(cfg.final_stages, pm), cfg.final_stages)
    check_score(pm, cfg)
    from metanet import fidelity
    fidelity.check(cfg, pm)
    note = validation_note(data)
    if note:
        data.notes.append(note)
    if cfg.fidelity is None:
        from metanet.train.loop import epoch_cap_notes
        largest = max((len(sp.train) for sp in data.sources.values()), default=0)
        data.notes.extend(epoch_cap_notes({n: configs[n] for n in cfg.stages if pm.stage(n).fidelity}, largest))
    from metanet.search_spaces.budget_space import budget_space
    for b in cfg.flops:
        try:
            if cfg.budget_mode != "project":  # derived now, cached for the experiments
                budget_space(space, b, cfg.band, cfg.resolution)
                continue
        except ConfigError:
            pass  # say why in terms of the space's range when that is the reason
        lo, hi = space.flops_range(cfg.resolution)
        if b * cfg.band[1] < lo or b * cfg.band[0] > hi:
            raise ConfigError(f"flops: budget {format_flops(b)} is outside what space '{space.name}' reaches "
                              f"at {cfg.resolution}px: {format_flops(lo)} to {format_flops(hi)} FLOPs")
        if cfg.budget_mode != "project":
            budget_space(space, b, cfg.band, cfg.resolution)  # raises its own one-line error
    from metanet.evaluate.candidate import preflight_stages
    preflight_stages(pm, both, configs, cfg.stage_setup())
    return space, data


def check_strategy_starts(strategy, cfg: SearchConfig) -> None:
    """One strategy made now, and dropped: a factory that fails (or returns something else than an NNI
    strategy) is one line naming its plugin before the run directory exists, not a half-made run."""
    import logging

    from metanet.quiet import quiet
    with quiet():
        import nni.nas.strategy  # noqa: F401 - NNI sets its loggers up as it is imported
    nni_logger = logging.getLogger("nni")
    level = nni_logger.level
    nni_logger.setLevel(logging.ERROR)  # NNI's strategies log their seeds as they are made
    try:
        strategy.create(seed=cfg.seed, **cfg.strategy_options)
    finally:
        nni_logger.setLevel(level)


def validation_note(data) -> str | None:
    """The warning, once, when the validation splits are too small for the differences a search resolves:
    below 1,000 images a score's binomial standard error exceeds 0.016 at 50% accuracy."""
    import math
    n = data.smallest_validation()
    if not n or n >= 1000:
        return None
    se = 0.5 / math.sqrt(n)
    return (f"warning: the smallest validation split has {n:,} images: a score's standard error reaches ±{se:.3f} "
            f"(binomial, at 50% accuracy), so architectures closer than {2 * se:.3f} are ordered by chance; give more "
            "images (--val-fraction, --min-val-images, more data) or --repeats")


def close_call_notes(run: RunDir, budgets) -> list[str]:
    """One line per budget whose best two trials (at the same rung) are closer than twice their standard error."""
    import math
    out = []
    for b in budgets:
        from metanet.runs.directory import top_steps
        ranked = [r for r in run.ranked(b, status=OK) if r["score"] is not None]
        if len(ranked) < 2 or top_steps(ranked[0]) != top_steps(ranked[1]):
            continue
        se = [r["metrics"].get("score_se") for r in ranked[:2]]
        if None in se:
            continue
        gap, both = ranked[0]["score"] - ranked[1]["score"], math.sqrt(se[0] ** 2 + se[1] ** 2)
        if gap < 2 * both:
            out.append(f"note: under {format_flops(b)} the best two trials ({ranked[0]['id']}, {ranked[1]['id']}) differ by "
                       f"{gap:.4f}, within twice their standard error ({both:.4f}): the data cannot tell them apart "
                       "(metanet proxy-check RUN --noise-ceiling measures how well the proxy ranks)")
    return out


def final_phase(cfg: SearchConfig, run: RunDir, echo) -> dict[int, dict]:
    """The second phase: the best ``final_top`` trials of each budget re-evaluated with ``final_stages``
    (into RUN/final-<key>/, resumable like proxy-check); per budget the re-evaluations, the best of them by
    the final score, and the rank agreement of the two phases."""
    from metanet.search.proxy_check import proxy_check
    out = {}
    for budget in cfg.flops:
        if not run.ranked(budget, status=OK):
            continue
        echo(f"final phase: the best {cfg.final_top} of {format_flops(budget)} with {','.join(cfg.final_stages)}")
        check = proxy_check(run.path, cfg.final_top, budget=budget, stages=cfg.final_stages, final=True,
                            echo=echo)
        scored = [t for t in check.trials if t["recheck_score"] is not None]
        best = max(scored, key=lambda t: t["recheck_score"]) if scored else None
        out[budget] = {"stages": list(cfg.final_stages), "dir": str(check.check_dir), "kendall_tau": check.kendall_tau,
                       "best": best and {"id": best["id"], "final_id": best["recheck_id"], "score": best["search_score"],
                                         "final_score": best["recheck_score"],
                                         "final_test_score": best["recheck_test_score"]},
                       "trials": [{"id": t["id"], "score": t["search_score"], "final_score": t["recheck_score"],
                                   "final_test_score": t["recheck_test_score"], "final_rank": t["recheck_rank"],
                                   "final_error": t["recheck_error"]} for t in check.trials]}
    return out


def stage_setup(cfg: SearchConfig) -> dict:
    """What a stage's ``check`` sees of a search (:meth:`SearchConfig.stage_setup`)."""
    return cfg.stage_setup()


def check_score(pm, cfg: SearchConfig) -> None:
    """Every metric of the score must come from a stage of the search, or every trial would fail."""
    from metanet.evaluate.candidate import check_score_stages, default_score_weights
    check_score_stages(cfg.score or default_score_weights(cfg.stages, pm), cfg.stages)


def check_data(pm, cfg: SearchConfig):
    """The data, loaded now (every split listed and checked; decoded once unless the trials run on other
    machines, which read it themselves), so that a missing folder or a bad image fails the command, not
    every trial; the trials of this process reuse it, those of a local training service map its pixels."""
    from metanet.data.timm_datasets import is_timm_name
    from metanet.errors import DataError, MetanetError
    from metanet.data.load import load_cached
    name, colon, path = cfg.data.partition(":")
    if colon and name in pm.registry["datasets"]:
        folder = path
    elif is_timm_name(cfg.data) and not os.path.isdir(cfg.data):
        folder = None
    elif os.sep in cfg.data or os.path.isdir(cfg.data):
        folder = cfg.data
    else:
        folder = None
        _lookup("data", pm.dataset, cfg.data)
    if folder is not None and not os.path.isdir(folder):
        raise DataError(f"data: {folder}: no such folder", param="data")
    remote = cfg.engine == "ts" and cfg.training_service != "local"
    try:
        return load_cached(pm, cfg.data, cfg.proxy_resolution, cfg.seed, cfg.val_fraction, data_dir=cfg.data_dir,
                          downstream=cfg.downstream, cache=cfg.cache and not remote, min_val_images=cfg.min_val_images)
    except MetanetError:
        raise
    except Exception as exc:  # what a loader raised would otherwise fail every trial the same way
        raise DataError(f"data: {cfg.data}: {type(exc).__name__}: {' '.join(str(exc).split())}") from None


def check_engine(cfg: SearchConfig) -> str | None:
    """Training-service options that need ``--engine ts``, the machines file and the GPUs asked for,
    checked before the run directory exists; returns the note to print about GPUs, if any."""
    if cfg.engine == "sequential":
        for name, value, default in (("training_service", cfg.training_service, "local"),
                                     ("gpus_per_trial", cfg.gpus_per_trial, None)):
            if value != default:
                raise ConfigError(f"{name}: needs --engine ts (the sequential engine runs trials in this process)",
                                  param=name)
        from metanet.train.runtime import Runtime
        # trials run here: what they ask for must exist here
        Runtime.create(cfg.accelerator, cfg.precision, cfg.devices)
        return None
    from metanet.search.nni_adapter import check_web_host, local_gpu_count, resolve_gpus
    manager_ip = None
    if cfg.training_service != "local":
        from metanet.search.remote import load_machines_file
        manager_ip = load_machines_file(cfg.training_service)[1]["nni_manager_ip"]
    check_web_host(cfg, manager_ip)
    return resolve_gpus(cfg, local_gpu_count())[1]


def attention_grid_warning(cfg: SearchConfig, space) -> str | None:
    """The once-per-run warning when the proxy resolution leaves a stage that may hold attention with
    fewer than 2x2 tokens (there attention cannot be ranked against convolution)."""
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.spec import NUM_STAGES, small_attention_grids
    choices = [set() for _ in range(NUM_STAGES)]
    if cfg.budget_mode == "project":
        for i in range(NUM_STAGES):
            choices[i] |= set(space.op[i]) | set(space.dsm[i])
    else:
        for b in cfg.flops:
            for i, bases in enumerate(budget_space(space, b, cfg.band, cfg.resolution).bases):
                choices[i] |= {name for pair in bases for name in pair}
    small = small_attention_grids(choices, cfg.proxy_resolution)
    if not small:
        return None
    return (f"at --proxy-resolution {cfg.proxy_resolution} these stages may hold attention but see fewer than 2x2 "
            f"tokens, where attention cannot be ranked: {'; '.join(small)}; use 64 or more")


def repair_missing_weights(cfg: SearchConfig, run: RunDir, budget: int, settings: dict, echo) -> None:
    """Finished trials among the kept best whose weights are missing (a process killed between an old
    version's row and its weights, or a deleted file) are evaluated again, so export never ships
    random weights for a trial the stages trained. Remote trials keep their weights on the machines."""
    from metanet.plugin.manager import registry
    from metanet.search.trial import repair_weights
    pm = registry(cfg.plugins)
    if cfg.training_service != "local" or not any(pm.stage(name).trains_backbone for name in cfg.stages):
        return
    tried: set[int] = set()
    while True:
        missing = [i for i in run.kept(budget) if i not in tried and not run.weights_path(i).exists()]
        if not missing:
            break
        row = next(r for r in run.store.trials(budget) if r["id"] == missing[0])
        tried.add(row["id"])
        echo(f"resume: trial {row['id']} finished but its kept weights are missing; evaluating it again")
        repair_weights(run, row, settings)
    run.drop_weights(budget)


RESTARTS = 3  # times a trial in flight when the search process died is run again before it is failed


def gave_up_on(store, row: dict, echo) -> bool:
    """Whether the in-flight ``row`` is failed instead of run again: the search process died while it ran
    more than :data:`RESTARTS` times (counted per architecture and budget; a search stopped by Ctrl-C or SIGTERM
    marks its rows interrupted, which does not count, so only kills and crashes do)."""
    from metanet.runs.store import FAILED, spec_key, where_it_was
    if (row.get("stage") or {}).get("interrupted"):
        return False
    key = f"restarts:{spec_key(row['spec'])}"
    restarts = store.counter(row["budget"], key)
    if restarts < RESTARTS:
        store.bump(row["budget"], key)
        return False
    error = (f"the search process died {restarts + 1} times while this trial ran{where_it_was(row.get('stage'))} "
             "(a crash, os._exit or the out-of-memory killer in it?); not run again")
    store.finish(row["id"], FAILED, {}, None, error, 0.0)
    echo(f"resume: trial {row['id']}: {error}")
    return True


def _lookup(option: str, find, name: str):
    try:
        return find(name)
    except UnknownName as exc:  # a failed command naming the option, whatever the lookup's own hint
        raise ConfigError(f"{option}: {exc}") from None


def run_search(cfg: SearchConfig, resume: bool = False, progress: bool | None = None,
               echo=print) -> SearchSummary:
    """Run (or, with ``resume``, continue the run in ``cfg.out``); the Python API of ``metanet search``.

    The run directory is locked for the whole search (:meth:`RunDir.acquire`)."""
    if resume:
        run = RunDir(cfg.out, cfg)
        if not (run.path / RunDir.CONFIG).is_file():
            raise RunError(f"{run.path}: not a search run directory (no {RunDir.CONFIG})")
        run.check_store()  # a damaged store is named now, before the run is touched
        check_creatable(run.path, "resume", RunError)  # a run on a read-only disk: before the checks, not after
        # locked before the checks, which take seconds (imports, data): a second writer fails at once
        run.acquire()
        try:
            space, data = check_config(cfg)
        except BaseException:
            run.release()
            raise
    else:
        if cfg.out:
            RunDir.refuse_existing(cfg.out)  # at once, not after the checks
        check_creatable(cfg.out or RunDir.DEFAULT_PARENT, "out", RunError)
        space, data = check_config(cfg)
        made_folder = not (cfg.out and os.path.isdir(cfg.out))
        run = RunDir.create(cfg)  # locked: a second writer fails at once, naming this process
    try:
        for note in dict.fromkeys(data.notes):
            echo(note)
        if cfg.engine == "ts" and cfg.training_service == "local" and cfg.cache:
            from metanet.data.decoded import write_cache
            from metanet.search.trial import data_cache_dir
            write_cache(data, data_cache_dir(run.path))  # the trial processes map these instead of decoding
        from metanet.search.nni_lifecycle import stop_on_signals
        with stop_on_signals():  # SIGTERM (a scheduler's preemption) stops it as Ctrl-C does: exit 143, rows marked
            return _run_locked(cfg, run, space, progress, echo)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt):
            try:
                run.store.mark_interrupted()
            except RunError:  # a store that cannot be written: its rows are counted as a kill would be
                pass
        if not resume and run.discard_unstarted(made_folder):
            what = f"the run's files were removed from {run.path}" if run.path.exists() else f"{run.path} was removed"
            echo(f"no trial had run: {what} (the same command starts the search afresh)")
        raise
    finally:
        run.release()


def _run_locked(cfg: SearchConfig, run: RunDir, space, progress, echo) -> SearchSummary:
    from metanet.search.nni_adapter import run_experiment
    from metanet.plugin.manager import registry
    from metanet.search_spaces.spec import ArchSpec
    from metanet.search.trial import evaluate_spec, trial_settings

    store = run.store
    total = cfg.trials * len(cfg.flops)
    bar = Progress(store, total, enabled=sys.stderr.isatty() if progress is None else progress)
    echo(f"search: {cfg.strategy} over '{cfg.space}', budgets {', '.join(format_flops(b) for b in cfg.flops)}, "
         f"{cfg.trials} trials each, stages {','.join(cfg.stages)}; run directory {run.path}")
    if cfg.fidelity is not None:
        from metanet.search.fidelity import Ladder, default_scheduler
        echo(f"fidelity: {cfg.scheduler or default_scheduler(cfg.engine)}, eta {cfg.eta}, rungs "
             f"{Ladder(*cfg.fidelity, cfg.eta).describe()} of the training stages")
    warning = attention_grid_warning(cfg, space)
    if warning:
        echo(f"warning: {warning}")
    note = check_engine(cfg)
    if note:
        echo(note)
    try:
        for budget in cfg.flops:
            settings = trial_settings(cfg, run.path, budget)
            remote_settings = dict(settings, run_dir=None) if cfg.engine == "ts" and cfg.training_service != "local" \
                else settings
            # Trials that were in flight when a previous process died run again, first (up to RESTARTS times:
            # a trial that ends the process itself, a crash in its stage, would otherwise end every resume).
            for row in store.trials(budget, status=RUNNING):
                if gave_up_on(store, row, echo):
                    continue
                store.delete(row["id"])
                run.weights_path(row["id"]).unlink(missing_ok=True)  # written before a row that never came
                evaluate_spec(ArchSpec.from_dict(row["spec"]), settings)
            repair_missing_weights(cfg, run, budget, settings, echo)
            if settings.get("fidelity"):  # rungs a killed process had earned but not run
                from metanet.search.schedulers import resume_ladders
                resume_ladders(run, budget, settings, echo)
            # Proposals that land on an architecture already evaluated count as NNI trials but add no
            # row (the stored score is replayed): run again, with a fresh strategy seed, until the
            # budget has its trials.
            for attempt in range(8):
                done = sum(r["status"] in DONE for r in store.trials(budget))
                if done >= cfg.trials:
                    break
                run_experiment(cfg, space, budget, cfg.trials - done, remote_settings, store, echo,
                               seed_offset=done + attempt)
                if settings.get("fidelity"):  # a bracket the experiment left open when its trials ran out
                    from metanet.search.schedulers import resume_ladders
                    resume_ladders(run, budget, settings, echo)
    finally:
        bar.close()
    summary = summarize(run)
    for note in close_call_notes(run, cfg.flops):
        echo(note)
    if cfg.final_stages and summary.finished:
        summary.final = final_phase(cfg, run, echo)
    best = {b: (r and {"id": r["id"], "flops": r["flops"], "score": r["score"], "spec": r["spec"]})
            for b, r in summary.best.items()}
    for problem in registry(cfg.plugins).notify("metanet_search_finished", run={
            "out_dir": str(run.path), "trials": summary.trials, "failed": summary.failed, "best": best}):
        echo(f"warning: {problem}")
    return summary
