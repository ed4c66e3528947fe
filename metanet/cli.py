"""The ``metanet`` command line: one click group, shared options, ``--json`` for machines.

The commands are wiring: counting, ranking and formatting live in the modules that own them.
Errors are translated once, by the group: a :class:`metanet.errors.MetanetError` becomes one line
(exit status 2 when it is about a command-line option, else 1). Heavy imports (torch, timm, fvcore,
NNI) happen inside the commands that need them, so ``--help`` answers quickly.
"""
from __future__ import annotations

import dataclasses
import json
import random
import sys

import click

from . import __version__
from .budget import format_flops, parse_flops
from .errors import MetanetError


class MetanetGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MetanetError as exc:
            if exc.param:
                raise click.BadParameter(str(exc), param_hint=f"'--{exc.param.replace('_', '-')}'") from None
            raise click.ClickException(str(exc)) from None


def _budget(ctx, param, value):
    try:
        return None if value is None else parse_flops(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _band(ctx, param, value):
    from .search_config import parse_band
    try:
        return parse_band(value)
    except MetanetError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1]) from None


def _load_spec(source: str):
    from .search_spaces.metanet import as_spec
    return as_spec(source)


def _registry():
    from .plugin_manager import registry
    return registry(click.get_current_context().find_root().obj.get("plugins", ()))


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
resolution_option = click.option("--resolution", "-r", type=click.IntRange(min=16), default=224, show_default=True,
                                 help="Deployment input resolution at which FLOPs are counted.")
space_option = click.option("--space", "space_name", default="unified", show_default=True, help="Search space name.")
num_classes_option = click.option("--num-classes", type=click.IntRange(min=0), default=1000, show_default=True,
                                  help="Classifier size included in the figures.")
band_option = click.option("--band", callback=_band, default="0.9,1.0", show_default=True,
                           help="Accepted FLOPs as LOW,HIGH fractions of the budget.")


def budget_option(help_text: str):
    return click.option("--flops", "budget", callback=_budget, default=None, help=help_text)


set_option = click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a stage setting.")

_CLICK_TYPES = {"int": int, "float": float, "int>=0": click.IntRange(min=0), "int>=1": click.IntRange(min=1),
                "int>=2": click.IntRange(min=2), "int>=8": click.IntRange(min=8), "int>=16": click.IntRange(min=16), "port": click.IntRange(1, 65535),
                "fraction": click.FloatRange(0, 1, min_open=True, max_open=True)}


def config_option(name: str, **overrides):
    """The flag of a :class:`SearchConfig` field, its help and default taken from the field itself."""
    from .search_config import SearchConfig, format_default
    f = {f.name: f for f in dataclasses.fields(SearchConfig)}[name]
    meta = f.metadata
    kind = meta["click"].get("type")
    ctype = click.Choice(kind.split(":", 1)[1].split(",")) if kind and kind.startswith("choice:") \
        else _CLICK_TYPES.get(kind)
    default = SearchConfig.defaults()[name]
    help_text = meta["help"] + (f"  [default: {format_default(default)}]" if default not in (None, [], {}) else "")
    kwargs = {"type": ctype, "default": None, "help": help_text, **overrides}
    if kind == "flag":  # --x/--no-x; None when neither is given, so a config file's value stands
        del kwargs["type"]
    if "default" in overrides:
        kwargs["help"], kwargs["show_default"] = meta["help"], True
    return click.option(meta["flag"], name, **kwargs)


def search_options(fn):
    from .search_config import SearchConfig
    for f in reversed(dataclasses.fields(SearchConfig)):
        if f.metadata.get("flag"):
            fn = config_option(f.name)(fn)
    return fn


@click.group(cls=MetanetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metanet")
@click.option("-p", "--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Load a plugin by module path (repeatable); also METANET_PLUGINS=mod1,mod2.")
@click.pass_context
def cli(ctx, plugins):
    """metanet: architecture search over INTERN's unified conv + transformer space.

    FLOPs are multiply-accumulates (fvcore's default operators plus attention), as in timm and
    the MetaNet/UniNet papers.
    """
    ctx.obj = {"plugins": plugins}
    if plugins:
        _registry()  # a named plugin that cannot load is an error now, whatever the command


@cli.group()
def space():
    """Inspect and sample the search space."""


@space.command("show")
@space_option
@resolution_option
@budget_option("Show the budget-centred space a search samples under this budget instead.")
@band_option
@json_option
def space_show(space_name, resolution, budget, band, as_json):
    """The choices per stage, the size of the space and its FLOP range (or, with --flops, a budget's space)."""
    from .search_spaces.unified import get_space
    _registry()
    if budget is not None:
        return _show_budget_space(get_space(space_name), budget, band, resolution, as_json)
    data = get_space(space_name).describe(resolution)
    if as_json:
        return _emit_json(data)
    click.echo(f"space '{data['space']}': stem 3x3/2 -> 6 stages -> 1x1 conv 1280 -> pool -> classifier")
    click.echo(f"  stem_width: {data['global']['stem_width']}   head_dim: {data['global']['head_dim']}")
    for i, st in enumerate(data["stages"]):
        click.echo(f"  s{i} (stride {st['stride']}): op {st['op']}")
        click.echo(f"      depth {st['depth']}  width {st['width']}  expand {st['expand']}  dsm {st['dsm']}")
    click.echo(f"size: {data['size']:.4g} valid architectures ({data['size_unconstrained']:.4g} before constraints)")
    click.echo(f"FLOPs at {resolution}px: {format_flops(data['flops_min'])} to {format_flops(data['flops_max'])}")


def _show_budget_space(sp, budget, band, resolution, as_json):
    from .search_spaces.budget_space import budget_space
    bs = budget_space(sp, budget, band, resolution)
    data = {**bs.describe(), **bs.in_band_share(2000)}
    if as_json:
        return _emit_json(data)
    click.echo(f"space '{bs.name}' at {resolution}px, band {format_flops(bs.lo)}-{format_flops(bs.hi)}: "
               f"stem {bs.stem_width}, head_dim {bs.head_dim}")
    for i, bases in enumerate(data["bases"]):
        click.echo(f"  s{i}: " + ", ".join(f"{k} x{v['depth']} w{v['width']}" for k, v in bases.items()
                                           if k in bs.choices()[f"s{i}_op_dsm"]))
        click.echo(f"      width x{bs.choices()[f's{i}_width_mult']}  depth {bs.choices()[f's{i}_depth_delta']}  "
                   f"expand {bs.choices()[f's{i}_expand']}")
    click.echo(f"not offered (cannot fit the band): {', '.join(f'{k}={v}' for k, v in bs.pruned) or 'none'}")
    click.echo(f"uniform proposals in the band: {data['in_band']:.1%} of {data['proposals']}")


@space.command("sample")
@space_option
@click.option("--seed", type=int, default=None, help="Random seed (default: random).")
@budget_option("FLOP budget, e.g. 600M or 1.5G: the sample lands inside the band of it.")
@band_option
@resolution_option
def space_sample(space_name, seed, budget, band, resolution):
    """Print one architecture spec as JSON on stdout."""
    from .search_spaces.unified import get_space, sample_within_budget
    _registry()
    sp = get_space(space_name)
    rng = random.Random(seed)
    spec = sp.random_spec(rng) if budget is None else \
        sample_within_budget(sp, budget, rng, band=band, resolution=resolution)
    click.echo(spec.to_json())


@cli.command("flops")
@click.argument("spec")
@resolution_option
@click.option("--count", is_flag=True, help="Also build the model and count it with fvcore (+attention).")
@num_classes_option
@json_option
def flops_cmd(spec, resolution, count, num_classes, as_json):
    """FLOPs and parameters of SPEC, with a per-stage breakdown.

    SPEC is a spec JSON file, a preset name (metanet_b4, uninet_b1 ...) or timm:MODEL for any timm
    model (always counted), to compare a searched backbone with known ones.
    """
    if spec.startswith("timm:"):
        from .counter import count_timm_model
        data = count_timm_model(spec[5:], resolution, num_classes)
    else:
        from .search_spaces.estimate import flops_report
        _registry()
        data = flops_report(_load_spec(spec), spec, resolution, num_classes, count)
    if as_json:
        return _emit_json(data)
    click.echo(f"{data['spec']} at {resolution}x{resolution}")
    if "stages" in data:
        click.echo(f"  {'part':<6} {'FLOPs':>10} {'params':>10}  layout")
        for name, part in data["stages"].items():
            click.echo(f"  {name:<6} {format_flops(part['flops']):>10} {format_flops(part['params']):>10}  "
                       f"{part.get('layout', '')}")
    click.echo(f"FLOPs:  {format_flops(data['flops'])} ({data['flops']:,})")
    click.echo(f"params: {format_flops(data['params'])} ({data['params']:,})")
    if "flops_counted" in data:
        click.echo(f"counted (fvcore + attention): {format_flops(data['flops_counted'])} "
                   f"({data['flops_counted']:,}); params {data['params_counted']:,}")
        click.echo(f"conv/linear/matmul only (MetaNet's table): {format_flops(data['flops_matmul_only'])}")


@cli.command("build")
@click.argument("spec")
@resolution_option
@click.option("--num-classes", type=click.IntRange(min=0), default=1000, show_default=True)
@json_option
def build_cmd(spec, resolution, num_classes, as_json):
    """Build the plain model of SPEC and run one forward pass on a random image."""
    import torch

    from .counter import count_params
    from .search_spaces.metanet import MetaNet
    _registry()
    arch = _load_spec(spec)
    torch.manual_seed(0)
    model = MetaNet(arch, num_classes=num_classes, img_size=resolution).eval()
    x = torch.randn(1, 3, resolution, resolution)
    with torch.no_grad():
        out = model(x)
        feats = model.forward_features(x)
    data = {"spec": spec, "resolution": resolution, "params": count_params(model), "output_shape": list(out.shape),
            "features_shape": list(feats.shape), "feature_info": model.feature_info,
            "finite": bool(torch.isfinite(out).all())}
    if as_json:
        return _emit_json(data)
    click.echo(f"built {spec}: {format_flops(data['params'])} params; {arch.describe()}")
    click.echo(f"forward 1x3x{resolution}x{resolution} -> logits {tuple(out.shape)}, "
               f"features {tuple(feats.shape)}, finite: {data['finite']}")
    for f in model.feature_info:
        click.echo(f"  feature {f['module']:<9} {f['num_chs']:>5} channels, stride {f['reduction']}")


@cli.command("plugins")
@json_option
def plugins_cmd(as_json):
    """List every plugin, built-in or external, with its source, version, hooks and registrations."""
    from .registered import KINDS
    pm = _registry()
    data = pm.describe()
    if as_json:
        return _emit_json(data)
    for r in data["plugins"]:
        click.echo(f"{r['name']} ({r['source']}{', ' + r['version'] if r['version'] else ''})")
        click.echo(f"    hooks: {', '.join(r['hooks']) or '-'}")
        mine = [f"{KINDS[kind][1].kind} {name}" for kind, table in data["registered"].items()
                for name, plugin in table.items() if plugin == r["name"]]
        if mine:
            click.echo(f"    registers: {', '.join(mine)}")
    for kind, table in data["registered"].items():
        if table:
            click.echo(f"{kind}: {', '.join(sorted(table))}")


def _search_default(name: str):
    from .search_config import SearchConfig
    return SearchConfig.defaults()[name]


def warn_small_attention_grids(arch, resolution: int) -> None:
    from .search_spaces.spec import small_attention_grids
    small = small_attention_grids([{st.op, st.dsm} for st in arch.stages], resolution)
    if small:
        click.echo(f"warning: at {resolution}px these attention stages see fewer than 2x2 tokens and degenerate "
                   f"to near-linear maps: {'; '.join(small)}", err=True)


EVALUATE_STAGES = "zero-cost,amateur,expert,generalist,downstream"


@cli.command("evaluate")
@click.argument("spec", required=False)
@click.option("--rerun", nargs=2, type=(click.Path(file_okay=False), click.IntRange(min=1)), default=None,
              metavar="RUN_DIR TRIAL", help="Re-run a stored trial from its reproduction record and say whether "
              "every metric matches (exit 1 if not); takes no other evaluation option.")
@click.option("--stages", default=None,
              help=f"Stage plugins to run, in order  [default: {EVALUATE_STAGES}; without downstream when the data "
                   "has no downstream tasks].")
@config_option("data", default="digits")
@config_option("data_dir")
@config_option("downstream")
@config_option("cache", default=True)
@config_option("proxy_resolution", default=_search_default("proxy_resolution"))
@config_option("val_fraction", default=_search_default("val_fraction"))
@config_option("min_val_images", default=_search_default("min_val_images"))
@config_option("repeats", default=1)
@config_option("accelerator", default="auto")
@config_option("precision", default="32")
@config_option("devices", default=1)
@config_option("compile", default=False)
@config_option("deterministic", default=False)
@set_option
@config_option("score")
@config_option("seed", default=0)
@json_option
@click.pass_context
def evaluate_cmd(ctx, spec, rerun, stages, data, data_dir, downstream, cache, proxy_resolution, val_fraction,
                 min_val_images, repeats, accelerator, precision, devices, compile, deterministic, sets, score, seed,
                 as_json):
    """Run evaluation stages on one architecture and print its metrics and score.

    ``score`` comes from the validation splits (what a search optimises), ``test_score`` from the test
    splits. The same command, seed and data give the same numbers. With --rerun RUN_DIR TRIAL, a stored
    trial is evaluated again as it was recorded and compared metric by metric.
    """
    if rerun is not None:
        given = [p.opts[0] for p in ctx.command.params if p.name not in ("rerun", "as_json", "spec")
                 and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
        if spec is not None or given:
            raise click.UsageError("--rerun re-runs the trial as it was recorded; give no SPEC or other evaluation "
                                   f"option{' (got ' + given[0] + ')' if given else ''}")
        return _rerun(*rerun, as_json)
    if spec is None:
        raise click.UsageError("give SPEC (a spec file, JSON or preset name), or --rerun RUN_DIR TRIAL")
    from .data import load_data
    from .search_config import _names, parse_sets, parse_stages
    from .stages import check_score_stages, check_stages, evaluate_repeated, parse_score, preflight_stages
    from .store import OK
    pm = _registry()
    arch = _load_spec(spec)
    settings, weights = parse_sets(sets), parse_score(score)
    stage_list = parse_stages(stages) if stages is not None else None
    if stage_list is not None:
        if weights:
            check_score_stages(weights, stage_list)  # before any training
        preflight_stages(pm, stage_list, check_stages(pm, stage_list, settings),
                         {"data": data, "proxy_resolution": proxy_resolution})
    warn_small_attention_grids(arch, proxy_resolution)
    bundle = load_data(pm, data, proxy_resolution, seed, val_fraction, data_dir=data_dir,
                       downstream=_names(downstream or [], "downstream"), cache=cache, min_val_images=min_val_images)
    if stage_list is None:  # the default stages the data can serve, checked as given ones are
        stage_list = [s for s in EVALUATE_STAGES.split(",") if s != "downstream" or bundle.tasks]
        if weights:
            check_score_stages(weights, stage_list)
        preflight_stages(pm, stage_list, check_stages(pm, stage_list, settings),
                         {"data": data, "proxy_resolution": proxy_resolution})
    for note in dict.fromkeys(bundle.notes):
        click.echo(note, err=True)
    from .runtime import Runtime
    runtime = Runtime.create(accelerator, precision, devices, compile, deterministic)  # a bad choice fails here
    result = evaluate_repeated(arch, stage_list, bundle, config=settings, pm=pm, score_weights=weights, seed=seed,
                               repeats=repeats, accelerator=accelerator, precision=precision, devices=devices,
                               compile=compile, deterministic=deterministic)
    if as_json:
        _emit_json({"status": result.status, "score": result.score, "test_score": result.test_score,
                    "metrics": result.metrics, "seconds": round(result.seconds, 2), "error": result.error,
                    "runtime": runtime.describe()})
    else:
        for k, v in result.metrics.items():
            click.echo(f"{k:<40} {v:.4f}")
    if result.status != OK:
        err = result.error
        raise click.ClickException(f"stage '{err['stage']}' failed (plugin {err['plugin'] or 'unknown'}): "
                                   f"{err['message']}")


def _rerun(run_dir: str, trial: int, as_json: bool) -> None:
    from .errors import RunError
    from .plugin_manager import refuse_unnamed_plugins
    from .reproduce import rerun
    from .run_dir import RunDir
    refuse_unnamed_plugins(RunDir.open(run_dir).config.plugins,
                           click.get_current_context().find_root().obj.get("plugins", ()), run_dir,
                           f"evaluate --rerun {run_dir} {trial}")
    _registry()
    result = rerun(run_dir, trial)
    if as_json:
        _emit_json(result.to_json())
    else:
        for key, (then, now) in result.differences.items():
            click.echo(f"{key:<40} {then!r:>22} -> {now!r}")
    if not result.matches:
        raise RunError(result.summary())
    if not as_json:
        click.echo(result.summary())


@cli.command("search")
@search_options
@set_option
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="YAML or TOML file with the same options; flags override it.")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False), default=None,
              help="Continue the search in RUN_DIR: finished trials are kept, in-flight ones re-run.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def search_cmd(ctx, sets, config_file, resume_dir, as_json, **flags):
    """Search architectures under FLOP budgets; every trial is stored in the run directory.

    With no arguments: the digits data, a 300M budget, 6 random trials, stages
    zero-cost,amateur,downstream (a few minutes on 2 CPU cores).
    """
    from .errors import ConfigError, RunError
    from .run_dir import RunDir
    from .search import run_search
    from .search_config import SearchConfig, load_config_file, merge_settings, parse_sets
    given = {k: v for k, v in flags.items() if v is not None}
    if resume_dir:
        if given or config_file or sets:
            raise ConfigError("--resume continues a run as it was configured; give no other search options")
        cfg = RunDir.open(resume_dir).config
        cfg.out = resume_dir  # the run is the directory named, wherever it was first started
        from .plugin_manager import refuse_unnamed_plugins
        refuse_unnamed_plugins(cfg.plugins, ctx.find_root().obj.get("plugins", ()), resume_dir, "search --resume")
    else:
        data = load_config_file(config_file) if config_file else {}
        data.update(given)
        if sets:
            data["settings"] = merge_settings(data.get("settings") or {}, parse_sets(sets))
        data["plugins"] = list(ctx.find_root().obj.get("plugins", ()))
        cfg = SearchConfig.from_dict(data, source=config_file or "options")
    summary = run_search(cfg, resume=bool(resume_dir), echo=(lambda m: click.echo(m, err=True)))
    if as_json:
        _emit_json(summary.to_json())
    else:
        click.echo(summary.table)
        if summary.final:
            click.echo(summary.final_table())
        click.echo(f"run directory: {summary.run_dir}   (metanet results {summary.run_dir})")
        if summary.plot:
            click.echo(f"plot: {summary.plot}")
    if summary.finished == 0:  # kept in the store, but a search that found nothing did not succeed
        raise RunError(f"no trial finished ({summary.failed} failed"
                       + (f"; first error: {summary.first_error}" if summary.first_error else "")
                       + f"); the trials are in {summary.run_dir}")


@cli.group()
def supernet():
    """Train a weight-sharing supernet once; score candidates with it (--stages supernet)."""


@supernet.command("train")
@click.option("--flops", "budgets", default="600M", show_default=True,
              help="FLOP budget(s) whose budget-centred spaces it covers, e.g. 600M or 300M,600M.")
@band_option
@space_option
@click.option("--resolution", type=click.IntRange(min=16), default=224, show_default=True,
              help="Deployment resolution at which the budgets' FLOPs are counted.")
@click.option("--proxy-resolution", type=click.IntRange(min=8), default=64, show_default=True,
              help="Image size it trains at (a search scoring with it must use the same).")
@click.option("--data", default="digits", show_default=True, help="digits, a folder or hfds/, wds/ (as for search).")
@click.option("--data-dir", default=None, help="Folder holding an hfds/ or wds/ dataset.")
@click.option("--cache/--no-cache", "cache", default=True, show_default=True,
              help="Decode every image once (--no-cache: per step, for data larger than memory).")
@click.option("--source", default=None, help="The upstream label source it learns (default: the data's first).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Its directory (default: runs/supernet-<time>).")
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Training steps  [default: 400].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-3, show_default=True)
@click.option("--random-subnets", type=click.IntRange(min=0), default=2, show_default=True,
              help="Random sub-networks per step, besides the largest and the smallest (sandwich rule).")
@click.option("--save-every", type=click.IntRange(min=1), default=100, show_default=True,
              help="Checkpoint every N steps (and at the end).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--accelerator", type=click.Choice(["auto", "cpu", "cuda"]), default=None,
              help="Where it trains  [default: auto].")
@click.option("--precision", type=click.Choice(["32", "bf16-mixed", "16-mixed"]), default=None,
              help="Training precision  [default: 32].")
@click.option("--devices", type=click.IntRange(min=1), default=None, help="Data-parallel ranks  [default: 1].")
@click.option("--resume", is_flag=True, help="Continue the supernet in --out from its last checkpoint.")
@json_option
@click.pass_context
def supernet_train(ctx, budgets, band, space_name, resolution, proxy_resolution, data, data_dir, cache, source, out_dir,
                   steps, batch_size, lr, random_subnets, save_every, seed, accelerator, precision, devices, resume,
                   as_json):
    """Train a supernet over the budget-centred space(s) of --flops (BigNAS sandwich rule, in-place
    distillation); checkpointed to --out, resumable with --resume after a kill."""
    import time as _time
    from . import supernet as sn
    from .errors import ConfigError
    try:
        flops = [parse_flops(b) for b in budgets.split(",") if b.strip()]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--flops'") from None
    if resume:
        if not out_dir:
            raise ConfigError("--resume needs --out DIR, the supernet to continue", param="out")
        src = ctx.get_parameter_source
        changes = {k: v for k, v in (("steps", steps), ("accelerator", accelerator), ("precision", precision),
                                     ("devices", devices)) if v is not None}
        fixed = [name for name in ("budgets", "band", "space_name", "resolution", "proxy_resolution", "data",
                                   "data_dir", "cache", "source",
                                   "batch_size", "lr", "random_subnets", "save_every", "seed")
                 if src(name) == click.core.ParameterSource.COMMANDLINE]
        if fixed:
            raise ConfigError(f"--resume continues the supernet as it was configured; only --steps, --accelerator, "
                              f"--precision and --devices may change (got --{fixed[0].replace('_name', '').replace('_', '-')})")
        settings = sn.SupernetSettings()
    else:
        settings = sn.SupernetSettings(
            flops=flops, band=band, space=space_name, resolution=resolution, proxy_resolution=proxy_resolution,
            data=data, data_dir=data_dir, cache=cache, source=source, steps=steps or sn.SupernetSettings.steps, batch_size=batch_size, lr=lr, random_subnets=random_subnets,
            save_every=save_every, seed=seed, accelerator=accelerator or "auto", precision=precision or "32",
            devices=devices or 1, plugins=list(ctx.find_root().obj.get("plugins", ())))
        changes = None
    out_dir = out_dir or _time.strftime("runs/supernet-%Y%m%d-%H%M%S")
    summary = sn.train(settings, out_dir, resume=resume, changes=changes, echo=lambda m: click.echo(m, err=True),
                       named_plugins=tuple(ctx.find_root().obj.get("plugins", ())))
    if as_json:
        _emit_json(summary)
    else:
        click.echo(f"supernet: {summary['out']}  step {summary['step']}/{summary['steps']}  "
                   f"{summary['shared_parameters'] / 1e6:.1f}M shared parameters  {summary['seconds']:.0f} s")
        click.echo(f"score candidates with: metanet search --stages supernet --set supernet.path={summary['out']} "
                   f"--flops {','.join(format_flops(b) for b in summary['budgets'])} "
                   f"--proxy-resolution {summary['resolution']}")


@cli.command("results")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--top", "top", type=click.IntRange(min=1), default=None, help="Only the K best per budget.")
@json_option
def results_cmd(run_dir, top, as_json):
    """The trials of a search run, best per budget first."""
    from .report import operator_mix_table, results_rows, results_table
    from .run_dir import RunDir
    _registry()
    rows = results_rows(RunDir.open(run_dir), top)
    if as_json:
        return click.echo(json.dumps(rows, indent=2))
    click.echo(results_table(rows))
    click.echo(operator_mix_table(rows))


@cli.command("proxy-check")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--top", "top", type=click.IntRange(min=3), default=8, show_default=True,
              help="Trials to re-evaluate: the best half of them, and an even spread over the rest.")
@set_option
@click.option("--proxy-resolution", type=click.IntRange(min=8), default=None,
              help="Re-evaluate at this image size (default: the run's).")
@click.option("--repeats", type=click.IntRange(min=1), default=None,
              help="Seeds per re-evaluation (default: the run's).")
@click.option("--seed", type=int, default=None,
              help="Re-evaluate with this seed (data split and initialisation; default: the run's). With no other "
                   "change: the noise ceiling, how well the proxy agrees with itself.")
@click.option("--stages", default=None, metavar="STAGES",
              help="Re-evaluate with these stages instead of the run's (e.g. amateur, to check supernet scores "
                   "against stand-alone training); scored by their last scoring stage's metric.")
@budget_option("Only the trials of this budget of the run (e.g. 300M).")
@click.option("--noise-ceiling", is_flag=True, help="Also re-evaluate the trials with the search's own proxy under "
              "another seed: the noise ceiling (its tau against itself), the signal-to-noise ratio and a verdict.")
@json_option
def proxy_check_cmd(run_dir, top, sets, proxy_resolution, repeats, seed, stages, budget, noise_ceiling, as_json):
    """Does the search's proxy rank architectures as a longer/larger evaluation does?

    Re-evaluates K finished trials of RUN_DIR with the run's stages and the --set overrides
    (e.g. --set amateur.max_steps=400) and prints Kendall's tau and Spearman's rho between the
    search-time and the re-evaluated validation scores. Re-evaluations are kept in
    RUN_DIR/proxy-check-<key>/; the same command again resumes them.
    """
    from .plugin_manager import refuse_unnamed_plugins
    from .proxy_check import proxy_check
    from .run_dir import RunDir
    from .search_config import parse_sets
    _registry()
    refuse_unnamed_plugins(RunDir.open(run_dir).config.plugins, click.get_current_context().find_root().obj.get(
        "plugins", ()), run_dir, "proxy-check")
    from .search_config import parse_stages
    result = proxy_check(run_dir, top, parse_sets(sets), proxy_resolution, repeats, budget, seed,
                         echo=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)),
                         stages=parse_stages(stages) if stages is not None else None, noise_ceiling=noise_ceiling)
    if as_json:
        return _emit_json(result.to_json())
    click.echo(result.table())
    click.echo(f"re-evaluations: {result.check_dir}   (metanet results {result.check_dir})")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--budget", default=None, help="The best trial of this budget (e.g. 300M).")
@click.option("--rank", type=click.IntRange(min=1), default=None,
              help="The K-th best trial (1 = best), within --budget if given.")
@click.option("--trial", "trial_id", type=click.IntRange(min=1), default=None, help="A trial by id.")
@click.option("--format", "formats", default="", help="Also write: torchscript, onnx (comma-separated).")
@click.option("--num-classes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Classifier size of the exported model (0: pooled features).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@json_option
def export_cmd(run_dir, out_dir, budget, rank, trial_id, formats, num_classes, force, as_json):
    """Export a searched backbone as a folder timm, TorchScript and ONNX users load as is."""
    from .export import export_run
    if trial_id is not None and (budget or rank):
        raise click.BadParameter("--trial picks one trial; do not combine it with --budget or --rank")
    _registry()
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    result = export_run(run_dir, out_dir, budget=budget, rank=rank, trial=trial_id, formats=fmts,
                        num_classes=num_classes, force=force)
    if as_json:
        return _emit_json({"out_dir": str(result.out_dir), "trial": result.trial["id"], "trained": result.trained,
                           "files": [str(f) for f in result.files], "load": result.load_line})
    click.echo(f"exported trial {result.trial['id']} to {result.out_dir}: " + ", ".join(f.name for f in result.files))
    click.echo(result.note)
    click.echo("load it with:")
    click.echo(result.load_line)


@cli.command("presets")
@json_option
def presets_cmd(as_json):
    """The released MetaNet and UniNet models, as points of the default space."""
    from .search_spaces.presets import preset_rows
    rows = preset_rows()
    if as_json:
        return _emit_json(rows)
    for r in rows:
        click.echo(f"{r['name']:<12} {r['input_size']:>4}px  {format_flops(r['flops']):>8} FLOPs  "
                   f"{format_flops(r['params']):>8} params  {r['description']}"
                   + ("" if r["in_space"] else f"  (outside the default space: {r['outside']})"))


@cli.command("convert")
@click.argument("checkpoint")
@click.option("--preset", help="The released model the checkpoint is (metanet_b4, uninet_b1, ...).")
@click.option("--arch", help="Or the architecture as a spec file, JSON text or preset name.")
@click.option("--out", required=True, help="The .safetensors file to write.")
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
@json_option
def convert_cmd(checkpoint, preset, arch, out, force, as_json):
    """Convert weights of the official MetaNet (gv-benchmark) or UniNet code to metanet's module names.

    The result loads strictly into the preset or spec, e.g. with
    timm.create_model('uninet_b1', pretrained=True, pretrained_cfg_overlay=dict(file=OUT)).
    """
    from .convert import convert_checkpoint
    from .search_spaces.presets import PRESETS
    if bool(preset) == bool(arch):
        raise click.UsageError("give exactly one of --preset and --arch")
    if preset and preset not in PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})", param_hint="--preset")
    spec = PRESETS[preset].spec if preset else _load_spec(arch)
    result = convert_checkpoint(checkpoint, spec, out, force=force)
    if as_json:
        return _emit_json(result)
    click.echo(f"wrote {result['out']}: {result['tensors']} tensors, {format_flops(result['params'])} parameters, "
               f"{result['num_classes']} classes ({result['family']} checkpoint)")


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="metanet", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted", err=True)
        sys.exit(130)
