"""Training a weight-sharing supernet once, and loading it to score candidates in seconds.

``metanet supernet train`` trains :class:`metanet.search_spaces.supernet_model.Supernet` over the budget-centred
space(s) of ``--flops`` with BigNAS's sandwich rule and in-place distillation: every step trains the
largest sub-network on the labels, and the smallest and ``random_subnets`` uniformly drawn in-band ones
on the largest's (detached) predictions, their losses summed into one update. It runs on Lightning Fabric
through :class:`metanet.train.runtime.Runtime` like the stages (precision, devices), and checkpoints into its
directory:

- ``supernet.json``: what it was trained for (budgets, band, space, resolutions, data, settings, step);
- ``supernet.safetensors``: the shared weights (what scoring loads), replaced atomically at each save;
- ``checkpoint.pt``: weights, optimiser and step together, for ``--resume`` after a kill
  (``torch.load(weights_only=True)``);
- ``lock``: one trainer per directory (``flock``, dropped by the kernel when the trainer dies).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from metanet.errors import ConfigError, RunError, SupernetError
from metanet.atomic import replace_atomically

FORMAT = 1
INFO, WEIGHTS, CHECKPOINT, LOCK = "supernet.json", "supernet.safetensors", "checkpoint.pt", "lock"


@dataclass
class SupernetSettings:
    """What ``metanet supernet train`` trains; stored in ``supernet.json``."""

    flops: list[int] = field(default_factory=lambda: [600_000_000])
    band: tuple[float, float] = (0.9, 1.0)
    space: str = "unified"
    resolution: int = 224            # deployment resolution of the budgets (FLOPs counted there)
    proxy_resolution: int = 64       # the resolution it trains and scores at (the search's --proxy-resolution)
    data: str = "digits"
    data_dir: str | None = None      # the folder of an hfds/ or wds/ dataset
    cache: bool = True               # decode the images once (False: per step, for data larger than memory)
    source: str | None = None        # upstream label source it learns (default: the data's first)
    val_fraction: float = 0.2
    min_val_images: int = 1000
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: float = 0.05
    random_subnets: int = 2
    clip_grad: float = 5.0
    save_every: int = 100
    seed: int = 0
    accelerator: str = "auto"
    precision: str = "32"
    devices: int = 1
    plugins: list[str] = field(default_factory=list)

    def check(self) -> None:
        for name in ("steps", "batch_size", "save_every", "devices"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}: expected an integer >= 1, got {value!r}", param=name)
        if isinstance(self.random_subnets, bool) or not isinstance(self.random_subnets, int) \
                or self.random_subnets < 0:
            raise ConfigError(f"random_subnets: expected an integer >= 0, got {self.random_subnets!r}",
                              param="random_subnets")
        for name in ("lr", "weight_decay", "clip_grad"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name}: expected a finite number >= 0, got {value!r}", param=name)
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup: expected a fraction in [0, 1), got {self.warmup!r}", param="warmup")
        if not self.flops:
            raise ConfigError("flops: at least one budget is needed", param="flops")

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["band"] = list(self.band)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str) -> "SupernetSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SupernetError(f"{source}: unknown setting {unknown[0]!r}")
        try:
            out = cls(**data)
            out.band = tuple(out.band)
            out.check()
        except (TypeError, ValueError) as exc:
            raise SupernetError(f"{source}: {exc}") from None
        return out


# -- the directory ----------------------------------------------------------------------------------

class SupernetDir:
    """A supernet's directory: its files, and the trainer's lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock_fd: int | None = None

    def exists(self) -> bool:
        return (self.path / INFO).is_file()

    def info(self) -> dict[str, Any]:
        path = self.path / INFO
        if not path.is_file():
            raise SupernetError(f"{self.path}: not a supernet directory (no {INFO}; train one with "
                                "`metanet supernet train --out DIR`)")
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SupernetError(f"{path}: cannot be read ({' '.join(str(exc).split())})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT or not isinstance(info.get("settings"), dict):
            raise SupernetError(f"{path}: not a supernet description of format {FORMAT}")
        return info

    def settings(self) -> SupernetSettings:
        return SupernetSettings.from_json(self.info()["settings"], str(self.path / INFO))

    def acquire(self) -> None:
        from metanet.atomic import exclusive_lock
        from metanet.writable import make_dirs
        make_dirs(self.path, "out", SupernetError)
        self._lock_fd = exclusive_lock(
            self.path / LOCK, "the supernet's lock file",
            lambda holder: f"{self.path}: another `metanet supernet train` is writing it ({holder}); wait for it "
                           "to end or stop it")

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


# -- building -----------------------------------------------------------------------------------------

def budget_spaces(settings: SupernetSettings, pm=None):
    from metanet.plugin.manager import registry
    from metanet.search_spaces.budget_space import budget_space
    pm = pm or registry(settings.plugins)
    space = pm.space(settings.space)
    return [budget_space(space, b, tuple(settings.band), settings.resolution) for b in settings.flops]


def _data(settings: SupernetSettings, pm):
    from metanet.data.load import load_cached
    data = load_cached(pm, settings.data, settings.proxy_resolution, settings.seed, settings.val_fraction,
                      data_dir=settings.data_dir, cache=settings.cache, min_val_images=settings.min_val_images)
    sources = data.require_sources([settings.source] if settings.source else None)
    name = settings.source or next(iter(sources))
    return data, name, sources[name]


def _schedule_lr(settings: SupernetSettings, step: int) -> float:
    """Linear warm-up, then cosine to 1% (per step, a pure function of the step so that resume continues it)."""
    warm = int(settings.warmup * settings.steps)
    if step < warm:
        return settings.lr * (step + 1) / warm
    t = (step - warm) / max(1, settings.steps - warm)
    return settings.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# what may change when a training is resumed: how long, and on what hardware
RESUMABLE = ("steps", "accelerator", "precision", "devices")


def train(settings: SupernetSettings, out: str | os.PathLike, resume: bool = False,
          echo: Callable[[str], None] = print, changes: dict[str, Any] | None = None,
          named_plugins: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """Train the supernet ``settings`` describe into ``out``, or with ``resume`` continue the one there (its
    stored settings, with ``changes`` to the :data:`RESUMABLE` ones); returns the summary ``--json`` prints."""
    from metanet.plugin.manager import registry
    from metanet.train.runtime import Runtime

    sdir = SupernetDir(out)
    if resume:
        if not sdir.exists():
            raise SupernetError(f"{sdir.path}: nothing to resume (no {INFO})")
        fixed = sorted(k for k in (changes or {}) if k not in RESUMABLE)
        if fixed:
            raise ConfigError(f"{fixed[0]}: a resumed supernet keeps what it was trained for (only "
                              f"{', '.join(RESUMABLE)} may change)", param=fixed[0])
        settings = dataclasses.replace(sdir.settings(), **(changes or {}))
        from metanet.plugin.manager import unnamed_plugins
        missing = unnamed_plugins(settings.plugins, named_plugins)
        if missing:  # supernet.json is only a file: its plugin modules are imported only when named again
            from metanet.errors import PluginError
            raise PluginError(f"{sdir.path}: supernet.json lists plugin module(s) {', '.join(missing)}, which are "
                              f"imported only when named again: metanet {' '.join('-p ' + m for m in missing)} "
                              f"supernet train --resume --out {sdir.path}", missing[0])
    else:
        if sdir.path.is_dir() and any(sdir.path.iterdir()):
            raise RunError(f"{sdir.path}: exists and is not empty; use --resume to continue a supernet there "
                           "or choose another --out", param="out")
    from metanet.writable import check_creatable
    check_creatable(sdir.path, "out", RunError)  # before the data is read and the space derived
    settings.check()
    from metanet.search_spaces.memory import check_image_fits
    check_image_fits(settings.proxy_resolution, settings.batch_size, accelerator=settings.accelerator)
    pm = registry(settings.plugins)
    data, source, split = _data(settings, pm)  # data trouble surfaces before the directory is made
    spaces = budget_spaces(settings, pm)
    runtime = Runtime.create(settings.accelerator, settings.precision, settings.devices)
    sdir.acquire()
    try:
        if not resume:
            _write_info(sdir, settings, source, split, step=0)
        return runtime.launch(_train_ranks, settings, sdir.path, spaces, data.resolution, data.in_chans, source, split,
                              resume, echo)
    finally:
        sdir.release()


def _write_info(sdir: SupernetDir, settings: SupernetSettings, source: str, split, step: int,
                extra: dict[str, Any] | None = None) -> None:
    info = {"format": FORMAT, "settings": settings.to_json(), "source": source, "classes": list(split.classes),
            "num_classes": split.num_classes, "in_chans": split_in_chans(split), "step": step, **(extra or {})}
    replace_atomically(sdir.path / INFO, lambda p: p.write_text(json.dumps(info, indent=2)))


def split_in_chans(split) -> int:
    x, _ = split.train[0]
    return int(x.shape[0])


def _train_ranks(settings: SupernetSettings, path: Path, spaces, resolution: int, in_chans: int, source: str,
                 split, resume: bool, echo) -> dict[str, Any]:
    from metanet.train.runtime import current
    from metanet.search_spaces.supernet_model import Supernet
    from metanet.train.loop import LossLog, batches

    runtime = current()
    device = runtime.device
    sdir = SupernetDir(path)
    supernet = Supernet(spaces, resolution, split.num_classes, in_chans, seed=settings.seed)
    from timm.optim import param_groups_weight_decay
    # fused: one kernel over every parameter with a gradient (3x faster than the loop on 68M CPU parameters)
    opt = torch.optim.AdamW(param_groups_weight_decay(supernet, settings.weight_decay), lr=settings.lr,
                            fused=device.type in ("cpu", "cuda"))
    step = 0
    if resume and (path / CHECKPOINT).exists():
        try:
            ckpt = torch.load(path / CHECKPOINT, map_location="cpu", weights_only=True)
            supernet.load_shared_state(ckpt["weights"])
            opt.load_state_dict(ckpt["optimizer"])
            step = int(ckpt["step"])
        except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
            raise SupernetError(f"{path / CHECKPOINT}: damaged ({' '.join(str(exc).split())[:200]})") from None
    supernet.to(device)
    for state in opt.state.values():  # the optimiser's moments follow the weights to the device
        for k, v in state.items():
            if torch.is_tensor(v):  # fused AdamW keeps its step counts on the parameters' device too
                state[k] = v.to(device)
    opt = runtime.fabric.setup_optimizers(opt)
    runtime.broadcast_state([supernet])
    largest, smallest = supernet.largest(), supernet.smallest()
    log = LossLog(window=20)
    # a fresh stream per (re)start, seeded by the step it starts at
    stream = batches(split.train, settings.batch_size, settings.seed + step, device)
    start, started_at = time.perf_counter(), step
    with runtime.active():
        while step < settings.steps:
            rng = random.Random(settings.seed * 1_000_003 + step)  # the same subnets in every rank
            for group in opt.param_groups:
                group["lr"] = _schedule_lr(settings, step)
            supernet.train()
            x, y = next(stream)
            logits = supernet(x, largest)
            loss = F.cross_entropy(logits, y)
            teacher = F.softmax(logits.detach().float(), -1)
            for spec in [smallest] + [supernet.sample(rng) for _ in range(settings.random_subnets)]:
                student = F.log_softmax(supernet(x, spec).float(), -1)
                loss = loss + F.kl_div(student, teacher, reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=False):
                runtime.fabric.backward(loss)
            runtime.average_gradients(supernet.parameters())
            if settings.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_([p for p in supernet.parameters() if p.grad is not None],
                                               settings.clip_grad)
            opt.step()
            runtime.broadcast_state([supernet], buffers_only=True)
            log.add(loss)
            step += 1
            if runtime.rank == 0 and (step % settings.save_every == 0 or step == settings.steps):
                _save(sdir, supernet, opt, step, settings, source, split)
                rate = (step - started_at) / (time.perf_counter() - start)
                echo(f"step {step}/{settings.steps}  loss {log.summary()['train_loss_last']:.3f}  "
                     f"{rate:.2f} steps/s")
    seconds = time.perf_counter() - start
    return {"out": str(path), "step": step, "steps": settings.steps, "resumed_from": started_at if resume else None,
            "seconds": round(seconds, 2),
            "steps_per_second": round((step - started_at) / seconds, 3) if seconds > 0 else None,
            "images_per_second": round((step - started_at) * settings.batch_size * (2 + settings.random_subnets)
                                       / seconds, 1) if seconds > 0 else None,
            "shared_parameters": supernet.num_shared(), "largest": largest.to_dict(), "smallest": smallest.to_dict(),
            "budgets": settings.flops, "resolution": settings.proxy_resolution}


def _save(sdir: SupernetDir, supernet, opt, step: int, settings, source: str, split) -> None:
    from safetensors.torch import save_file
    state = {k: v.detach().cpu().contiguous() for k, v in supernet.shared_state().items()}
    # resume reads one file holding weights, optimiser and step together; scoring reads the safetensors
    replace_atomically(sdir.path / CHECKPOINT, lambda p: torch.save(
        {"step": step, "weights": state, "optimizer": opt.state_dict()}, p))
    replace_atomically(sdir.path / WEIGHTS, lambda p: save_file(state, str(p), metadata={"step": str(step)}))
    _write_info(sdir, settings, source, split, step)


# -- loading for scoring ----------------------------------------------------------------------------

_loaded: dict[tuple, Any] = {}


def load(path: str | os.PathLike, device: torch.device | str = "cpu"):
    """The trained supernet in ``path`` (cached per process while its weights file is unchanged)."""
    from safetensors import safe_open
    from metanet.search_spaces.supernet_model import Supernet

    sdir = SupernetDir(path)
    info = sdir.info()
    settings = sdir.settings()
    weights = sdir.path / WEIGHTS
    if not weights.is_file():
        raise SupernetError(f"{sdir.path}: no {WEIGHTS} yet (training has not saved a step)")
    stat = weights.stat()
    key = (str(weights.resolve()), stat.st_mtime_ns, stat.st_size, str(device))
    if key in _loaded:
        return _loaded[key]
    try:
        with safe_open(str(weights), "pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise SupernetError(f"{weights}: damaged ({' '.join(str(exc).split())[:200]})") from None
    shapes = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("classifier.")}
    # the spaces come from this process's plugins: supernet.json's plugin list is never imported from here
    from metanet.plugin.manager import registry
    net = Supernet(budget_spaces(settings, registry()), settings.proxy_resolution, int(info["num_classes"]),
                   int(info.get("in_chans", 3)), shapes=shapes)
    net.load_shared_state(state)
    net.info = info
    net.settings = settings
    _loaded.clear()  # one supernet per process at a time: they are large
    _loaded[key] = net.to(device).eval()
    return _loaded[key]
