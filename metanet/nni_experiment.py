"""The NNI side of a search: the strategy with its middlewares, the budget filter, the experiment.

For each budget one NNI experiment runs the registered strategy over the space. In ``project``
mode each proposal is mapped to the architecture a seeded walk reaches inside the FLOP band; in
``screen`` mode proposals outside the band are dropped by NNI's ``Filter`` middleware. Either way
nothing outside the band is built or trained, and the run counts what was screened.
"""
from __future__ import annotations

import logging

from .budget import format_flops
from .quiet import quiet
from .store import TrialStore


def budget_filter(cfg_space, budget: int, cfg, store: TrialStore):
    """NNI ``Filter`` function: True when the proposal is (or projects to) an in-band architecture."""
    from .search_spaces.estimate import estimate
    from .search_spaces.nni_space import project
    from .search_spaces.spec import ArchSpec, SpecError
    from .search_spaces.unified import repair_sample

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


def training_service_config(cfg):
    """NNI's ``local`` training service, or ``remote`` over SSH from a file listing the machines."""
    if cfg.training_service == "local":
        return "local"
    from .remote import remote_service_config
    return remote_service_config(cfg.training_service)


def run_experiment(cfg, space, budget: int, trials: int, settings: dict, store: TrialStore, echo,
                   seed_offset: int = 0) -> None:
    """One NNI experiment of ``trials`` trials for ``budget``; trials write to the store themselves."""
    with quiet():
        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.experiment import NasExperiment, NasExperimentConfig
        from nni.nas.strategy.middleware import Chain, Deduplication, Filter

        from .search_spaces.nni_space import UnifiedSpace
    from .plugin_manager import registry
    from .trial import nni_trial

    logging.getLogger("nni").setLevel(logging.ERROR)
    registered = registry(cfg.plugins).strategy(cfg.strategy)
    strategy = registered.create(seed=cfg.seed + budget % 9973 + 7919 * seed_offset, **cfg.strategy_options)
    strategy = Chain(strategy, Deduplication("replay"),
                     Filter(budget_filter(space, budget, cfg, store), metric_for_invalid=cfg.invalid_score,
                            patience=100000, retain_history=False))
    model_space = UnifiedSpace(space, num_classes=0, img_size=cfg.proxy_resolution, budget=budget, band=cfg.band,
                               resolution=cfg.resolution, budget_mode=cfg.budget_mode, seed=cfg.seed,
                               constrained=registered.constraints)
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
