"""The options of a search, normalised in one place for flags, config files and the Python API.

Each field of :class:`SearchConfig` carries its parser, its help text and (where it has one) its
command-line flag; :meth:`SearchConfig.from_dict` runs the same parsers whatever the source, so
``band: "0.9,1.0"`` in a YAML file, ``--band 0.9,1.0`` and ``band=(0.9, 1.0)`` in Python give the same
config, and every default is written once, here.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from metanet.budget import parse_budgets, parse_flops
from metanet.errors import ConfigError

ENGINES = ("sequential", "ts")
ACCELERATORS = ("auto", "cpu", "cuda")   # as metanet.runtime (kept import-free here)
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
BUDGET_MODES = ("screen", "soft", "project")


# -- parsers: (value, option name) -> normalised value, or ConfigError naming the option --------------

def _text(value, name):
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name}: expected text, got {value!r}", param=name)
    return value


def _optional_text(value, name):
    return None if value is None else _text(value, name)


def _integer(minimum: int, maximum: float = math.inf) -> Callable:
    def parse(value, name):
        if isinstance(value, str):
            try:
                value = int(value)
            except ValueError:
                raise ConfigError(f"{name}: expected an integer, got {value!r}", param=name) from None
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{name}: expected an integer, got {value!r}", param=name)
        if not minimum <= value <= maximum:
            bound = f"at least {minimum}" if maximum == math.inf else f"{minimum}-{maximum}"
            raise ConfigError(f"{name}: expected {bound}, got {value}", param=name)
        return int(value)
    return parse


def _optional_integer(minimum: int) -> Callable:
    parse = _integer(minimum)
    return lambda value, name: None if value is None else parse(value, name)


def _number(value, name):
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        out = math.nan
    if not math.isfinite(out):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}", param=name)
    return out


def _soft_weight(value, name):
    """MnasNet's exponent (-0.07, -0.15): beyond +-10 the reward of a proposal off its budget over- or underflows
    (2**1e3 is inf), and the strategy would learn from infinities and zeros."""
    out = _number(value, name)
    if not -10 <= out <= 10:
        raise ConfigError(f"{name}: expected a number in [-10, 10] (MnasNet: -0.07), got {value!r}", param=name)
    return out


def _fraction(value, name):
    out = _number(value, name)
    if not 0 < out < 1:
        raise ConfigError(f"{name}: expected a fraction strictly between 0 and 1, got {value!r}", param=name)
    return out


def _host(value, name):
    """An IP address to listen on; ``localhost`` is 127.0.0.1 (names could resolve to anything)."""
    import ipaddress
    if value == "localhost":
        return "127.0.0.1"
    try:
        if not isinstance(value, str):  # ip_address would read an integer as an address
            raise ValueError(value)
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"{name}: expected an IP address of this machine (127.0.0.1, or 0.0.0.0 for every "
                          f"interface), got {value!r}", param=name) from None


def _flag(value, name):
    if not isinstance(value, bool):
        raise ConfigError(f"{name}: expected true or false, got {value!r}", param=name)
    return value


def _choice(options: tuple[str, ...]) -> Callable:
    def parse(value, name):
        if value not in options:
            raise ConfigError(f"{name}: expected one of {', '.join(options)}, got {value!r}", param=name)
        return value
    return parse


def _names(value, name):
    """``"a,b"`` or ``["a", "b"]`` -> ["a", "b"]; empty entries dropped."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{name}: expected a comma-separated list of names, got {value!r}", param=name)
    return [v.strip() for v in value if v.strip()]


def parse_stages(value, name="stages"):
    out = _names(value, name)
    if not out:
        raise ConfigError(f"{name}: name at least one stage", param=name)
    twice = sorted({s for s in out if out.count(s) > 1})
    if twice:
        raise ConfigError(f"{name}: stage {twice[0]!r} is listed twice", param=name)
    return out


def parse_fidelity(value, name: str = "fidelity") -> tuple[int, int] | None:
    """``"20:180"`` (or ``[20, 180]``) -> (20, 180): a multi-fidelity search's training steps; None stays None."""
    if value is None:
        return None
    parts = value.split(":") if isinstance(value, str) else value
    try:
        lo, hi = (int(str(v).strip()) for v in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected MIN:MAX training steps, e.g. 20:180; got {value!r}", param=name) from None
    if not 1 <= lo < hi:
        raise ConfigError(f"{name}: need 1 <= MIN < MAX steps, got {value!r}", param=name)
    return lo, hi


def _optional_choice(options: tuple[str, ...]) -> Callable:
    parse = _choice(options)
    return lambda value, name: None if value is None else parse(value, name)


def _optional_stages(value, name):
    return None if value is None else parse_stages(value, name)


DEFAULT_STAGES = ["zero-cost", "amateur", "downstream"]


def default_stages(has_tasks: bool) -> list[str]:
    """The stages of a search that names none: downstream only where the data has held-out tasks."""
    return list(DEFAULT_STAGES) if has_tasks else [s for s in DEFAULT_STAGES if s != "downstream"]


def _final_stages(value, name):
    return parse_stages(value, name) if _names(value, name) else []


def _flops(value, name):
    try:
        if isinstance(value, str):
            return parse_budgets(value)
        if isinstance(value, (list, tuple)) and value:
            return sorted({parse_flops(v) for v in value})
        return [parse_flops(value)]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: {exc}", param=name) from None


def parse_band(value, name="band") -> tuple[float, float]:
    parts = value.split(",") if isinstance(value, str) else value
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected LOW,HIGH fractions of the budget, e.g. 0.9,1.0; got {value!r}",
                          param=name) from None
    if not (0 < lo < hi <= 1):
        raise ConfigError(f"{name}: need 0 < LOW < HIGH <= 1, got {value!r}", param=name)
    return lo, hi


def _score(value, name):
    from metanet.evaluate.candidate import parse_score
    return parse_score(value)


def _mapping(value, name):
    if not isinstance(value, dict):
        raise ConfigError(f"{name}: expected a mapping, got {value!r}", param=name)
    return dict(value)


def _settings(value, name):
    out = {}
    for stage, values in _mapping(value, name).items():
        out[stage] = _mapping(values, f"{name}.{stage}")
    return out


def parse_sets(items) -> dict[str, dict[str, Any]]:
    """``["amateur.max_steps=5", ...]`` -> ``{"amateur": {"max_steps": 5}}``; values read as JSON when they parse."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        stage, dot, name = key.partition(".")
        if not eq or not dot or not stage or not name:
            raise ConfigError(f"expected STAGE.SETTING=VALUE, got {item!r}", param="set")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(stage, {})[name] = value
    return out


def merge_settings(base: dict[str, dict], extra: dict[str, dict]) -> dict[str, dict]:
    merged = {stage: dict(values) for stage, values in base.items()}
    for stage, values in extra.items():
        merged[stage] = {**merged.get(stage, {}), **values}
    return merged


def option(default, parse: Callable, help: str = "", flag: str | None = None, **click_args):
    """A config field: its default, its parser, and how the command line offers it."""
    factory = (lambda: type(default)(default)) if isinstance(default, (list, dict)) else None
    meta = {"parse": parse, "help": help, "flag": flag, "click": click_args}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SearchConfig:
    space: str = option("unified", _text, "Search space.", "--space")
    flops: list[int] = option([300_000_000], _flops, "FLOP budget(s), e.g. 600M or 300M,600M,1.2G.", "--flops")
    band: tuple[float, float] = option((0.9, 1.0), parse_band, "Accepted FLOPs as LOW,HIGH fractions of the budget.",
                                       "--band")
    budget_mode: str = option("screen", _choice(BUDGET_MODES),
                              "screen: proposals outside the band are never trained, the strategy gets a penalty "
                              "growing with their distance; soft: MnasNet reward score*(flops/budget)^w; project: "
                              "REWRITE proposals into the band by a walk (the strategy no longer controls what is "
                              "evaluated).", "--budget-mode", type="choice:" + ",".join(BUDGET_MODES))
    soft_weight: float = option(-0.07, _soft_weight, "The exponent w of the soft constraint (MnasNet: -0.07).",
                                "--soft-weight", type="float")
    strategy: str = option("random", _text, "random, evolution, tpe, ppo or a plugin's.", "--strategy")
    strategy_options: dict[str, Any] = option({}, _mapping, "Keyword arguments for the strategy factory.")
    trials: int = option(6, _integer(1), "Trials per budget.", "--trials", type="int>=1")
    stages: list[str] | None = option(None, _optional_stages, "Stage plugins in order  [default: zero-cost,amateur,"
                                      "downstream; zero-cost,amateur when the data has no downstream tasks].",
                                      "--stages")
    settings: dict[str, dict[str, Any]] = option({}, _settings, "Stage settings, {stage: {key: value}}.")
    score: dict[str, float] | None = option(None, _score, "Score as weighted metrics, e.g. downstream.acc=1 "
                                            "(default: the last scoring stage's metric).", "--score")
    fidelity: tuple[int, int] | None = option(None, parse_fidelity, "Multi-fidelity search over the training steps of the "
                                              "training stages, MIN:MAX (e.g. 20:180): trials climb a ladder of "
                                              "rungs MAX/eta^k and the best are continued from their checkpoints.",
                                              "--fidelity")
    eta: int = option(3, _integer(2), "Reduction factor of the fidelity ladder: a third (eta 3) of a rung goes on.",
                      "--eta", type="int>=2")
    scheduler: str | None = option(None, _optional_choice(("sh", "hyperband", "asha")),
                                   "sh, hyperband or asha (default: sh on the sequential engine, asha on ts).",
                                   "--scheduler", type="choice:sh,hyperband,asha")
    final_stages: list[str] = option([], _final_stages, "A second phase: after the search, re-evaluate the best "
                                     "--final-top trials of each budget with these stages (e.g. amateur,expert,"
                                     "generalist,downstream after --stages supernet); both scores are reported.",
                                     "--final-stages")
    final_top: int = option(3, _integer(1), "Trials per budget the second phase re-evaluates.", "--final-top",
                            type="int>=1")
    data: str = option("digits", _text, "digits; a folder (train/<class>/ with optional val/ and test/, folders or "
                       ".tar files; or INTERN's upstream/ and downstream/); or hfds/NAME, wds/NAME with --data-dir.",
                       "--data")
    data_dir: str | None = option(None, _optional_text, "Folder holding an hfds/ or wds/ dataset (timm's --data-dir; "
                                  "nothing is downloaded).", "--data-dir")
    downstream: list[str] = option([], _names, "Folders of held-out downstream tasks added to the data, comma-"
                                   "separated: each an ImageFolder task, or a folder of them.", "--downstream")
    cache: bool = option(True, _flag, "Decode and resize every image once per search, shared by all trials "
                         "(--no-cache: decode per step, for data larger than memory).", "--cache/--no-cache",
                         type="flag")
    proxy_resolution: int = option(64, _integer(8), "Image size the stages train at (64: every stage that may "
                                   "hold attention sees at least 2x2 tokens).", "--proxy-resolution", type="int>=8")
    val_fraction: float = option(0.2, _fraction, "Share of each training set held out for validation: rewards "
                                 "are computed on it, test sets are only reported.", "--val-fraction",
                                 type="fraction")
    min_val_images: int = option(1000, _integer(0), "A carved validation split holds at least this many images "
                                 "(at most a quarter of the training set): fewer cannot resolve small differences.",
                                 "--min-val-images", type="int>=0")
    accelerator: str = option("auto", _choice(ACCELERATORS), "Where trials train (auto: a GPU when the trial "
                              "sees one).", "--accelerator", type="choice:" + ",".join(ACCELERATORS))
    precision: str = option("32", _choice(PRECISIONS), "Training precision of the stages (Lightning Fabric's; "
                            "bf16-mixed also on CPU).", "--precision", type="choice:" + ",".join(PRECISIONS))
    devices: int = option(1, _integer(1), "Devices each trial trains on: above 1, its stages run data-parallel "
                          "in that many processes (Fabric's DDP launcher; GPUs, or CPU processes with "
                          "--accelerator cpu).", "--devices", type="int>=1")
    compile: bool = option(False, _flag, "torch.compile the candidate's stem and stages before the stages train "
                           "it (pays off on GPUs for long stages).", "--compile/--no-compile", type="flag")
    deterministic: bool = option(False, _flag, "Deterministic kernels on GPUs too (cuDNN, cuBLAS, atomics-free "
                                 "reductions; slower). On CPU they are always used, and trials reproduce to the last "
                                 "digit.", "--deterministic/--no-deterministic", type="flag")
    repeats: int = option(1, _integer(1), "Evaluate each candidate with this many seeds; the score is their mean.",
                          "--repeats", type="int>=1")
    resolution: int = option(224, _integer(16), "Deployment resolution at which FLOPs are counted.", "--resolution",
                             type="int>=16")
    seed: int = option(0, _integer(0, 2**32 - 1), "Random seed (0 to 2**32-1, as NumPy and NNI's strategies take).",
                       "--seed", type="int")
    out: str | None = option(None, _optional_text, "Run directory (default: runs/search-<time>).", "--out")
    engine: str = option("sequential", _choice(ENGINES),
                         "sequential: in-process; ts: NNI training service, trials as processes.", "--engine",
                         type="choice:" + ",".join(ENGINES))
    concurrency: int = option(1, _integer(1), "Parallel trials (ts engine).", "--concurrency", type="int>=1")
    gpus_per_trial: int | None = option(None, _optional_integer(0), "GPUs NNI assigns to each trial (ts engine; "
                                        "default: 1 where this machine has GPUs, else 0; on remote machines NNI "
                                        "leaves GPUs as they are).", "--gpus-per-trial", type="int>=0")
    trials_per_gpu: int = option(1, _integer(1), "Trials NNI may place on one GPU (ts engine).", "--trials-per-gpu",
                                 type="int>=1")
    port: int = option(8080, _integer(1, 65535), "NNI web UI port (ts engine).", "--port", type="port")
    web_host: str = option("127.0.0.1", _host, "Address NNI's web UI and REST API listen on (ts engine): 127.0.0.1 "
                           "keeps them to this machine; 0.0.0.0 opens them to every network it is on (anyone "
                           "who reaches the port can control the search).", "--web-host")
    training_service: str = option("local", _text, "local, or a YAML/JSON file listing remote machines "
                                   "(NNI remote over SSH).", "--training-service")
    invalid_score: float = option(-1.0, _number, "Reported to the strategy for failed trials.")
    plugins: list[str] = option([], _names, "Plugin modules to load (as -p).")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "SearchConfig":
        """Parse and validate ``data`` (from flags, a config file or Python); errors name the option."""
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of options")
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in data.items():
            name = key.replace("-", "_") if isinstance(key, str) else key
            if name not in known:
                raise ConfigError(f"{source}: unknown option {key!r} (options: {', '.join(sorted(known))})")
            try:
                values[name] = known[name].metadata["parse"](value, name)
            except ConfigError as exc:
                # a failed command (exit 1) whichever source the value came from
                where = f"{source}: " if source not in ("options", "config") else ""
                raise ConfigError(f"{where}{exc}") from None
        return cls(**values)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        return asdict(cls())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def stage_setup(self) -> dict[str, Any]:
        """What a stage's ``check`` hook sees of the search it is about to join."""
        return {"data": self.data, "proxy_resolution": self.proxy_resolution, "resolution": self.resolution,
                "space": self.space, "flops": list(self.flops), "band": tuple(self.band)}


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A YAML or TOML file holding the same options as the command-line flags."""
    from .files import load_structured
    data = load_structured(path, "config", ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options")
    return data


def format_default(value: Any) -> str:
    """A default as a user writes it on the command line: ``300M``, ``0.9,1.0``, ``zero-cost,amateur``."""
    if isinstance(value, (list, tuple)):
        return ",".join(format_default(v) for v in value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1_000_000:
        from metanet.budget import format_flops
        return format_flops(value)
    return str(value)
