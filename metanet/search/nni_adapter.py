"""The NNI side of a search: the strategy with its middlewares, the budget screen, the experiment.

For each budget one NNI experiment runs the registered strategy over the budget-centred space
(:mod:`metanet.search_spaces.budget_space`). In ``screen`` mode (the default) a proposal outside the
FLOP band is never built: :class:`BudgetScreen` scores it from the estimator in microseconds with a
penalty that grows with its distance from the band, so the strategy learns where the band is; in
``soft`` mode proposals are trained and rewarded MnasNet-style (proposals beyond half or twice the
budget are still screened). Only the opt-in ``project`` mode rewrites proposals, by a walk over the
absolute space, and every trial records how many choices the walk changed.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import sys
import tempfile
import time
import warnings
from pathlib import Path

from metanet.budget import format_flops
from metanet.errors import ConfigError, MetanetError, RunError
from metanet.quiet import quiet
from metanet.runs.store import TrialStore


SOFT_LIMITS = (0.5, 2.0)  # soft mode: proposals outside these multiples of the budget are still screened


def screen_penalty(distance: float, rewards: list[float], invalid_score: float) -> float:
    """The reward of a screened proposal at ``distance`` (ln of its FLOPs' ratio to the band's edge).

    Just below the worst trained reward, minus the distance in units of the rewards' spread, so a
    strategy sees a slope toward the band on the scale of its own rewards (naswot scores in the
    hundreds, accuracies in [0, 1]); before any trial finished, ``invalid_score - distance``.
    """
    if not rewards:
        return invalid_score - distance
    spread = (max(rewards) - min(rewards)) or abs(min(rewards)) or 1.0
    return min(rewards) - spread * (0.1 + distance)


MISSES = 5000  # proposals in a row outside the band after which the band is taken for too narrow to search


class _OwnErrorsSaidOnce(logging.Filter):
    """NNI logs "Strategy failed to execute." before it re-raises what a strategy raised; for metanet's own
    one-line errors (raised by its middlewares) the CLI says it, once."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not isinstance(sys.exc_info()[1], MetanetError)


logging.getLogger("nni.nas.strategy.base").addFilter(_OwnErrorsSaidOnce())


def budget_screen(space, budget: int, cfg, store: TrialStore):
    """NNI middleware: proposals outside the band are scored, counted and never submitted."""
    with quiet():
        from nni.nas.strategy.middleware import Filter

    limits = SOFT_LIMITS if cfg.budget_mode == "soft" else None

    class BudgetScreen(Filter):
        def __init__(self):
            super().__init__(self.admit, patience=100000, retain_history=False)
            self._penalty: dict[int, float | None] = {}
            self._rewards: list[float] | None = None  # the trained rewards, re-read after each trial
            self._counts = {"proposals": 0, "screened": 0}  # written to the store once per trial
            self._missed = 0  # proposals screened since the last one in the band

        def penalty(self, model) -> float | None:
            """None for a proposal to train; else a reward below every trained one, lower the farther it is."""
            flops = space.flops(space.decode(model.sample))
            if limits is not None:
                lo, hi = limits[0] * budget, limits[1] * budget
                distance = math.log(lo / flops) if flops < lo else math.log(flops / hi) if flops > hi else 0.0
            else:
                distance = space.distance(flops)
            if distance == 0:
                return None
            if self._rewards is None:
                self._rewards = store.rewards(budget)
            return screen_penalty(distance, self._rewards, cfg.invalid_score)

        def admit(self, model) -> bool:
            return self._penalty[id(model)] is None

        def flush(self) -> None:
            for name, n in self._counts.items():
                if n:
                    store.bump(budget, name, n)
                    self._counts[name] = 0

        def submit_models(self, *models) -> None:
            for model in models:
                self._penalty[id(model)] = penalty = self.penalty(model)
                self._counts["proposals"] += 1
                if penalty is None:
                    self.flush()
                    self._rewards = None
                    self._missed = 0
                else:
                    self._counts["screened"] += 1
                    self._missed += 1
                    if self._missed >= MISSES:
                        self.flush()
                        lo, hi = cfg.band[0] * budget, cfg.band[1] * budget
                        raise ConfigError(f"band: {MISSES:,} proposals in a row fell outside the FLOP band "
                                          f"{lo:,.0f}-{hi:,.0f} of budget {format_flops(budget)}: too narrow for the "
                                          "strategy to land in; widen --band (default 0.9,1.0)")
                self.metric_for_invalid = penalty  # what Filter reports for this model, if it filters it
                super().submit_models(model)
                self._penalty.pop(id(model))

    return BudgetScreen()


def trial_keeper(store: TrialStore, on_record=None, lost_row=None):
    """The middleware next to NNI's training-service engine: it holds the models in flight, and writes
    the rows that trials on remote machines send back with their final metric; ``lost_row(model)`` gives the
    failed row of a remote trial whose process ended without sending one (it exited or was killed).

    NNI's engine keeps only weak references to submitted models and drops a metric whose model is gone:
    without a strong reference (random search and the budget screen keep none) no strategy ever saw a
    reward from a trial process. Remote trials never see the run directory: each reports
    ``{"default": reward, "metanet_row": row}`` through NNI's own channel, and the row lands here.
    """
    with quiet():
        from nni.nas.execution.event import ModelEventType
        from nni.nas.space import ModelStatus
        from nni.nas.strategy.middleware import StrategyMiddleware

    class TrialKeeper(StrategyMiddleware):
        def __init__(self):
            super().__init__()
            self._inflight: dict[int, object] = {}
            self._recorded: set[int] = set()

        def _initialize_engine(self, engine) -> None:
            engine.register_model_event_callback(ModelEventType.FinalMetric, self._on_final)
            engine.register_model_event_callback(ModelEventType.TrainingEnd, self._on_end)

        def _on_final(self, event) -> None:
            metric = event.metric
            if isinstance(metric, dict) and isinstance(metric.get("metanet_row"), dict):
                self._recorded.add(id(event.model))
                trial_id = store.record(metric["metanet_row"])
                if on_record is not None:
                    on_record(trial_id, metric["metanet_row"])

        def _on_end(self, event) -> None:
            self._inflight.pop(id(event.model), None)
            if lost_row is not None and event.status == ModelStatus.Failed and id(event.model) not in self._recorded:
                try:
                    row = lost_row(event.model)
                except Exception:  # the model's sample could not be read back: NNI's own record keeps the trial
                    row = None
                if row is not None:
                    store.record(row)
            self._recorded.discard(id(event.model))

        def _cleanup(self) -> None:
            # kept registered: a strategy that needs no rewards (random) is cleaned up when it has submitted its
            # last model, and the trials' metrics arrive after that; the engine ends with the experiment
            pass

        # the strategy's and the upper middlewares' callbacks go through to the engine, as NNI's filters do
        def register_model_event_callback(self, event_type, callback) -> None:
            super().register_model_event_callback(event_type, callback)
            self.engine.register_model_event_callback(event_type, callback)

        def unregister_model_event_callback(self, event_type, callback) -> None:
            super().unregister_model_event_callback(event_type, callback)
            self.engine.unregister_model_event_callback(event_type, callback)

        def submit_models(self, *models) -> None:
            for model in models:
                self._inflight[id(model)] = model
            self.engine.submit_models(*models)

        def list_models(self, status=None):
            return self.engine.list_models(status)

        def state_dict(self) -> dict:
            return {}  # nothing of its own: the store is the state

        def load_state_dict(self, state_dict: dict) -> None:
            pass

    return TrialKeeper()


def budget_filter(cfg_space, budget: int, cfg, store: TrialStore):
    """Project mode's NNI ``Filter`` function: True when the proposal projects to an in-band architecture."""
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


def local_gpu_count() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


_SECRET = re.compile(r"""((?:password|passphrase)['"]?\s*[:=]\s*)(?:(['"])(.*?)\2|([^'",)\s]+))""",
                     re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with SSH passwords and passphrases (as NNI's config reprs and JSON print them) masked."""
    return _SECRET.sub(lambda m: f"{m.group(1)}{m.group(2) or ''}***{m.group(2) or ''}", text)


def resolve_gpus(cfg, local_gpus: int) -> tuple[int | None, str | None]:
    """GPUs per trial for NNI (None: NNI leaves GPUs as they are) and a note for the user.

    The user's number when given; otherwise ``--devices`` per trial (one by default) on a local machine
    with GPUs and none without (NNI would hide nothing), and NNI's own view on remote machines, which
    this one cannot see. NNI's 0 hides every GPU from a trial, so it is never chosen where there are GPUs.
    """
    from metanet.errors import ConfigError
    devices = getattr(cfg, "devices", 1)
    on_gpus = getattr(cfg, "accelerator", "auto") != "cpu"
    if cfg.gpus_per_trial is not None and on_gpus and devices > 1 and cfg.gpus_per_trial < devices:
        raise ConfigError(f"devices: {devices} per trial, but --gpus-per-trial gives each trial "
                          f"{cfg.gpus_per_trial} GPU(s)", param="devices")
    if cfg.gpus_per_trial is not None:
        if cfg.gpus_per_trial > 0 and cfg.training_service == "local" and local_gpus == 0:
            raise ConfigError(f"gpus_per_trial: {cfg.gpus_per_trial} GPU(s) per trial, but this machine has no GPU "
                              "(NNI would wait for one forever)", param="gpus_per_trial")
        return cfg.gpus_per_trial, None
    if cfg.training_service != "local":
        return None, None
    if local_gpus:
        return (devices if on_gpus else 1), None
    return 0, "note: no GPU on this machine: trials run on CPU"


# NNI 3.0's manager (Node.js, nni_node/main.js) calls ``listen(port)`` with no address, so it listens on
# every interface, and neither its command line (yargs, strict) nor NNI's Python API offers one. This
# file, preloaded into that one node process through NODE_OPTIONS, gives every TCP ``listen`` without an
# address (or with a wildcard one) the address asked for. NNI's Python side and local trials always
# reach the manager at ``localhost``: bound to another single address, the manager is also forwarded
# from 127.0.0.1. The hook takes itself out of the environment at once, so the processes the manager
# starts (trials) neither inherit it nor fail when its file is gone.
NODE_LISTEN_HOOK = r"""'use strict';
const net = require('net');
const host = process.env.METANET_NNI_HOST;
const before = process.env.METANET_NNI_NODE_OPTIONS;
if (before) { process.env.NODE_OPTIONS = before; } else { delete process.env.NODE_OPTIONS; }
delete process.env.METANET_NNI_NODE_OPTIONS;
delete process.env.METANET_NNI_HOST;
if (host) {
  const listen = net.Server.prototype.listen;
  const wildcard = (h) => h === undefined || h === null || h === '' || h === '0.0.0.0' || h === '::';
  const forward = !['127.0.0.1', '0.0.0.0', '::'].includes(host);
  const isPort = (a) => typeof a === 'number' || (typeof a === 'string' && /^[0-9]+$/.test(a));
  net.Server.prototype.listen = function (...args) {
    const a = args[0];
    let tcp = false;
    if (isPort(a)) {
      tcp = true;
      if (typeof args[1] === 'string') { if (wildcard(args[1])) args[1] = host; } else { args.splice(1, 0, host); }
    } else if (a !== null && typeof a === 'object' && !('path' in a) && !('fd' in a) && !('handle' in a)
               && !('_handle' in a) && ('port' in a || 'host' in a)) {
      tcp = true;
      if (wildcard(a.host)) args[0] = Object.assign({}, a, { host });
    } else if (a === undefined || typeof a === 'function') {
      tcp = true;
      args.unshift(0, host);
    }
    const server = listen.apply(this, args);
    if (tcp && forward) {
      server.prependOnceListener('listening', () => {
        const port = server.address().port;
        const relay = net.createServer((client) => {
          const upstream = net.connect({ port, host });
          client.pipe(upstream).pipe(client);
          client.on('error', () => upstream.destroy());
          upstream.on('error', () => client.destroy());
        });
        relay.on('error', (error) => server.emit('error', error));
        listen.call(relay, port, '127.0.0.1');
        server.once('close', () => relay.close());
      });
    }
    return server;
  };
}
"""

WILDCARD_HOSTS = ("0.0.0.0", "::")


def is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


def _node_quoted(path: str) -> str:
    """``path`` as one NODE_OPTIONS word (node splits it on spaces, honouring double quotes and backslashes)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextlib.contextmanager
def nni_listens_on(host: str):
    """A NNI manager started inside this block listens on ``host`` only (see :data:`NODE_LISTEN_HOOK`).

    The hook's file lives only as long as the block: node reads it when it starts, and NNI's launcher
    returns once the manager answers on its port."""
    names = ("NODE_OPTIONS", "METANET_NNI_HOST", "METANET_NNI_NODE_OPTIONS")
    saved = {name: os.environ.get(name) for name in names}
    with tempfile.TemporaryDirectory(prefix="metanet-nni-") as folder:
        hook = Path(folder) / "listen.js"
        hook.write_text(NODE_LISTEN_HOOK)
        before = saved["NODE_OPTIONS"] or ""
        os.environ["METANET_NNI_NODE_OPTIONS"] = before
        os.environ["METANET_NNI_HOST"] = host
        os.environ["NODE_OPTIONS"] = f"{before} --require {_node_quoted(str(hook))}".strip()
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def listening_experiment(host: str):
    """NNI's ``NasExperiment`` whose manager listens on ``host`` (its launcher takes no address)."""
    with quiet():
        from nni.nas.experiment import NasExperiment

    class Experiment(NasExperiment):
        def _start_nni_manager(self, *args, **kwargs):
            with nni_listens_on(host):
                return super()._start_nni_manager(*args, **kwargs)

    return Experiment


def check_web_host(cfg, manager_ip: str | None = None) -> None:
    """``--web-host`` must be an address of this machine, and one the remote machines can reach: they
    connect back to ``manager_ip`` (the machines file's ``nni_manager_ip``; NNI guesses one without it)."""
    from metanet.errors import ConfigError
    host = cfg.web_host
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
    except OSError as exc:
        raise ConfigError(f"web_host: {host} is not an address of this machine ({exc.strerror})",
                          param="web_host") from None
    if cfg.training_service == "local" or host in WILDCARD_HOSTS:
        return
    where = f"{manager_ip} (nni_manager_ip of {cfg.training_service})" if manager_ip else \
        f"an address NNI guesses for this machine (no nni_manager_ip in {cfg.training_service})"
    if manager_ip is None or not is_loopback(manager_ip):
        if is_loopback(host):
            raise ConfigError(f"web_host: NNI's manager would listen on {host} only, but the machines connect back "
                              f"to {where}; pass --web-host with that address (or 0.0.0.0 for every interface)"
                              + ("" if manager_ip else " and set nni_manager_ip"), param="web_host")
        if manager_ip is not None and ipaddress.ip_address(manager_ip) != ipaddress.ip_address(host):
            raise ConfigError(f"web_host: NNI's manager would listen on {host} only, but the machines connect back "
                              f"to {where}", param="web_host")


def web_ui_url(cfg) -> str:
    host = cfg.web_host
    shown = "localhost" if host in WILDCARD_HOSTS else f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{cfg.port}"
    if host in WILDCARD_HOSTS:
        return f"{url}, open to every network this machine is on (--web-host {host})"
    return url + (" (this machine only; --web-host opens it)" if is_loopback(host) else "")


def experiment_config(cfg, trials: int, local_gpus: int | None = None):
    """NNI's experiment config: the sequential engine, or the training-service engine on the local
    machine or on the machines of ``--training-service``, with NNI assigning GPUs to trials."""
    with quiet():
        from nni.nas.experiment import NasExperimentConfig
    if cfg.engine == "sequential":
        config = NasExperimentConfig("sequential", "simplified")
    else:
        remote = cfg.training_service != "local"
        config = NasExperimentConfig("ts", "simplified", "remote" if remote else "local")
        if remote:
            from metanet.search.remote import remote_service_config
            remote_service_config(cfg.training_service, config.training_service)
            # NNI hands the trial runners the experiment-level address; the service's alone is not used
            if isinstance(config.training_service.nni_manager_ip, str):
                config.nni_manager_ip = config.training_service.nni_manager_ip
        gpus, _ = resolve_gpus(cfg, local_gpu_count() if local_gpus is None else local_gpus)
        if gpus is not None:
            config.training_service.trial_gpu_number = gpus
            if gpus:
                # NNI's default rejects a GPU any process uses: a desktop's display would stall every trial
                if not remote:
                    config.training_service.use_active_gpu = True
                    config.training_service.max_trial_number_per_gpu = cfg.trials_per_gpu
                else:
                    for m in config.training_service.machine_list:
                        m.max_trial_number_per_gpu = cfg.trials_per_gpu
                        if m.use_active_gpu is None:
                            m.use_active_gpu = True
        config.trial_concurrency = cfg.concurrency
        host = getattr(cfg, "web_host", "127.0.0.1")
        if remote and config.nni_manager_ip is None and host not in WILDCARD_HOSTS and not is_loopback(host):
            config.nni_manager_ip = host  # the one address the manager listens on is where machines connect
    config.max_trial_number = trials
    return config


def run_experiment(cfg, space, budget: int, trials: int, settings: dict, store: TrialStore, echo,
                   seed_offset: int = 0) -> None:
    """One NNI experiment of ``trials`` trials for ``budget``; trials write to the store themselves."""
    with quiet():
        from nni.nas.evaluator import FunctionalEvaluator
        from nni.nas.experiment import NasExperiment
        from nni.nas.strategy.middleware import Chain, Deduplication, Filter

        from metanet.search_spaces.nni_space import BudgetModelSpace, UnifiedSpace
    from metanet.search_spaces.budget_space import budget_space
    from metanet.plugin.manager import registry
    from metanet.search.trial import nni_trial

    logging.getLogger("nni").setLevel(logging.ERROR)
    registered = registry(cfg.plugins).strategy(cfg.strategy)
    strategy = registered.create(seed=(cfg.seed + budget % 9973 + 7919 * seed_offset) % 2**32, **cfg.strategy_options)
    if cfg.budget_mode == "project":
        screen = Filter(budget_filter(space, budget, cfg, store), metric_for_invalid=cfg.invalid_score,
                        patience=100000, retain_history=False)
        model_space = UnifiedSpace(space, num_classes=0, img_size=cfg.proxy_resolution, budget=budget, band=cfg.band,
                                   resolution=cfg.resolution, budget_mode="project", seed=cfg.seed,
                                   constrained=registered.constraints)
    else:
        bspace = budget_space(space, budget, cfg.band, cfg.resolution)
        screen = budget_screen(bspace, budget, cfg, store)
        model_space = BudgetModelSpace(bspace, num_classes=0, img_size=cfg.proxy_resolution, seed=cfg.seed)
    warm_start(strategy, store, budget)
    middlewares = [Deduplication("replay"), screen]
    if settings.get("fidelity") and settings["fidelity"]["scheduler"] in ("sh", "hyperband"):
        from metanet.search.schedulers import scheduler_middleware
        from metanet.runs.directory import RunDir
        middlewares.append(scheduler_middleware(RunDir(settings["run_dir"]), budget, settings, echo))
    if cfg.engine != "sequential":
        on_record = lost_row = None
        if cfg.training_service != "local":
            from metanet.runs.directory import RunDir
            from metanet.search.remote import weights_fetcher
            on_record = weights_fetcher(cfg.training_service, RunDir(Path(store.path).parent), echo)
            lost_row = lost_trial_row(cfg, space, budget, bspace if cfg.budget_mode != "project" else None)
        middlewares.append(trial_keeper(store, on_record, lost_row))
    chain = Chain(strategy, *middlewares)
    evaluator = FunctionalEvaluator(nni_trial, settings=settings)
    config = experiment_config(cfg, trials)
    if cfg.engine != "sequential":
        echo(f"NNI web UI (budget {format_flops(budget)}): {web_ui_url(cfg)}")
        exp = listening_experiment(cfg.web_host)(model_space, evaluator, chain, config=config)
    else:
        exp = NasExperiment(model_space, evaluator, chain, config=config)
    # NNI copies the trial code folder, which a NAS experiment fixes to the working directory, to every
    # remote machine; trials need none (metanet is installed there): run from an empty one in the run directory
    workdir = contextlib.nullcontext()
    if cfg.engine != "sequential" and cfg.training_service != "local":
        code = Path(store.path).parent / "nni-code"
        code.mkdir(exist_ok=True)
        (code / "README").write_text("NNI's trial code folder, copied to every machine; metanet trials need no code "
                                     "from here (NNI refuses an empty one).\n")
        workdir = contextlib.chdir(code)
    if cfg.engine != "sequential":
        # the manager and its web UI end with the search; NNI keeps the experiment, which `nnictl view` shows again
        with open(Path(store.path).parent / "nni-experiments.jsonl", "a") as log:
            log.write(json.dumps({"budget": budget, "experiment": exp.id, "port": cfg.port}) + "\n")
    try:
        with warnings.catch_warnings():
            # screened proposals are counted in the store, not kept in NNI's history
            warnings.filterwarnings("ignore", message="Filter middleware currently does not list models")
            if cfg.engine == "sequential":
                # NNI's run takes Ctrl-C as the end of this experiment and returns: the search would go on with
                # the next; the signal is kept and raised again once NNI has stopped the experiment
                from metanet.search.nni_lifecycle import Interrupted, stop_on_signals
                with stop_on_signals() as received:
                    exp.run()
                if received:
                    raise Interrupted(received[0])
            else:
                _wait_for_port(cfg.port)  # the manager of a previous experiment may still be letting go of it
                started = time.time()
                with workdir:
                    _run_watched(exp, cfg.port, budget, store)
                # every trial process has ended: a row still running belongs to one that died before finishing it
                for trial_id in store.fail_orphans(budget, started, "it exited, crashed or was killed (os._exit, a "
                                                   "signal, the out-of-memory killer); its output is in NNI's trial "
                                                   f"logs, ~/nni-experiments/{exp.id}/environments/"):
                    echo(f"trial {trial_id}: its process ended without a result; failed")
                echo(f"NNI experiment {exp.id} (budget {format_flops(budget)}) ended with its web UI; to see it "
                     f"again: metanet ui {Path(store.path).parent} --port {cfg.port}")
    except (KeyboardInterrupt, MetanetError):
        raise
    except Exception as exc:
        # NNI's manager may outlive a failed start and hold its port ("Port not idle" on the next try):
        # stop it, and say what failed in one line; finished trials are in the store already
        from metanet.search.nni_lifecycle import stop_experiment
        stop_experiment(exp)
        first = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else type(exc).__name__
        raise RunError(f"NNI experiment for budget {format_flops(budget)} failed: {first} "
                       f"(NNI's log: ~/nni-experiments/{getattr(exp, 'id', '?')}/log)") from None
    finally:
        if hasattr(screen, "flush"):
            screen.flush()


def lost_trial_row(cfg, space, budget: int, bspace=None):
    """``model -> row``: the failed row of a remote trial whose process ended without reporting (the machine ran
    it, so only its architecture is known here)."""
    from metanet.search_spaces.estimate import estimate
    from metanet.search_spaces.nni_space import resolve_spec

    def row(model) -> dict:
        sample = dict(model.sample)
        spec = bspace.decode(sample) if bspace is not None else \
            resolve_spec(sample, space, budget, cfg.band, cfg.resolution, cfg.budget_mode, cfg.seed)
        est = estimate(spec, cfg.resolution)
        return {"budget": budget, "status": "failed", "spec": spec.to_dict(), "flops": est.flops,
                "params": est.params, "metrics": {}, "score": None, "seconds": 0.0, "seed": cfg.seed, "reward": None,
                "error": "the trial process on a remote machine ended without a result: it exited, crashed or was "
                         "killed (os._exit, a signal, the out-of-memory killer); its output is in NNI's trial logs"}
    return row


DEAF_STOP_S = 5.0  # the stop a manager the watchdog gave up on gets before it is killed


def _run_watched(exp, port: int, budget: int, store: TrialStore) -> None:
    """``exp.run(port)`` of the training-service engine, ended whatever happens: a lost channel message or a
    silent manager is a one-line error naming it, a signal an :class:`~metanet.search.nni_lifecycle.Interrupted`;
    either way the manager is stopped (killed if it does not stop) and the finished trials stay in the store."""
    import requests

    from metanet.search.nni_lifecycle import (Interrupted, Watchdog, silence_broken_channel,
                                             stop_experiment, stop_on_signals, strict_json)

    watch = Watchdog(port)
    interrupted: KeyboardInterrupt | None = None
    with strict_json():
        try:
            with stop_on_signals() as received, watch:
                # NNI's run, without its own Ctrl-C handling, whose stop waits for the manager without limit
                exp.start(port)
                exp._wait_completion()
        except KeyboardInterrupt as exc:
            interrupted = exc
            silence_broken_channel()
        except requests.exceptions.RequestException as exc:
            # NNI's own status poll timed out (a manager that is hung, or stopped, keeps its socket open) or was
            # refused (one that is gone): the same cause the watchdog names, whichever noticed it first
            watch.note(f"NNI's manager on port {port} stopped answering ({type(exc).__name__})")
            silence_broken_channel()
        finally:
            with watch:  # the channel's failures during the stop stay out of the terminal too
                watch.stand_down()
                # a manager found dead or deaf will not acknowledge a stop: killed after a short grace
                stop_experiment(exp, **({"timeout_s": DEAF_STOP_S} if watch.cause is not None else {}))
    if watch.cause is not None:
        run = Path(store.path).parent
        raise RunError(f"NNI experiment for budget {format_flops(budget)} failed: {watch.cause}; finished trials "
                       f"are kept (metanet search --resume {run}; NNI's log: ~/nni-experiments/{exp.id}/log)")
    if interrupted is not None:
        raise Interrupted(received[0] if received else signal.SIGINT) from None


def _wait_for_port(port: int, seconds: float = 20.0) -> None:
    import socket
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("localhost", port)) != 0:
                return
        time.sleep(0.5)


def warm_start(strategy, store: TrialStore, budget: int) -> str:
    """Give a new strategy the progress the store holds (a resumed run, or a later attempt of this one).

    Regularized evolution gets its population back (the latest finished trials, as NNI's aging
    population holds them) and never re-proposes a stored architecture; random search needs no
    state (its seed moves on); TPE and PPO start from their prior: NNI keeps no state for them
    that could be rebuilt from the store. Returns which of these happened.
    """
    from metanet.runs.store import OK
    with quiet():
        from nni.nas.strategy import RegularizedEvolution
        from nni.nas.strategy.evolution import Individual
        from nni.nas.strategy.utils import _to_hashable
    rows = [r for r in store.trials(budget) if r.get("proposal")]
    if not rows or not isinstance(strategy, RegularizedEvolution):
        return "none" if rows else "fresh"
    finished = [r for r in rows if r["status"] == OK and r["reward"] is not None]
    state = strategy.state_dict()
    state["population"] = [Individual(r["proposal"], r["reward"]) for r in finished[-strategy.population_size:]]
    state["individual_counter"] = len(rows)
    if "dedup_history" in state:
        state["dedup_history"] = [_to_hashable(r["proposal"]) for r in rows]
    strategy.load_state_dict(state)
    return "population"
