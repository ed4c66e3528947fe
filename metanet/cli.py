"""The ``metanet`` command line: one click group, subcommands with help, ``--json`` for machines.

Heavy imports (torch, timm, fvcore, NNI) happen inside the commands that need them, so ``--help``
and the estimator-only commands answer quickly.
"""
from __future__ import annotations

import json
import random
import sys

import click

from . import __version__
from .budget import format_flops, parse_flops


def _budget(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_flops(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _band(ctx, param, value):
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LOW,HIGH fractions of the budget, e.g. 0.9,1.0; got {value!r}") from None
    if not 0 < lo < hi:
        raise click.BadParameter(f"need 0 < LOW < HIGH, got {value!r}")
    return lo, hi


def _space(name):
    from metanet.search_spaces.unified import get_space
    try:
        return get_space(name)
    except KeyError as exc:
        raise click.BadParameter(exc.args[0], param_hint="'--space'") from None


def _load_spec(source: str):
    from metanet.search_spaces.metanet import as_spec
    from metanet.search_spaces.spec import SpecError
    try:
        return as_spec(source)
    except SpecError as exc:
        raise click.ClickException(str(exc)) from None


def _emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))


resolution_option = click.option("--resolution", "-r", type=click.IntRange(min=16), default=224, show_default=True,
                                  help="Deployment input resolution at which FLOPs are counted.")
space_option = click.option("--space", "space_name", default="unified", show_default=True, help="Search space name.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
        _plugin_manager()  # a named plugin that cannot load is an error now, whatever the command


def _plugin_manager():
    from metanet.plugin_manager import PluginError, get_plugin_manager
    ctx = click.get_current_context()
    plugins = (ctx.find_root().obj or {}).get("plugins", ())
    try:
        return get_plugin_manager(plugins)
    except PluginError as exc:
        raise click.ClickException(str(exc)) from None


@cli.group()
def space():
    """Inspect and sample the search space."""


@space.command("show")
@space_option
@resolution_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def space_show(space_name, resolution, as_json):
    """The choices per stage, the size of the space and its FLOP range."""
    from metanet.search_spaces.spec import NUM_STAGES, STAGE_FIELDS, STRIDES, stage_key
    sp = _space(space_name)
    choices = sp.choices()
    lo, hi = sp.flops_range(resolution)
    data = {
        "space": sp.name,
        "global": {k: choices[k] for k in ("stem_width", "head_dim")},
        "stages": [{"stride": STRIDES[i], **{f: choices[stage_key(i, f)] for f in STAGE_FIELDS}}
                   for i in range(NUM_STAGES)],
        "size": sp.valid_size(),
        "size_unconstrained": sp.raw_size(),
        "resolution": resolution,
        "flops_min": lo,
        "flops_max": hi,
    }
    if as_json:
        _emit_json(data)
        return
    click.echo(f"space '{sp.name}': stem 3x3/2 -> 6 stages -> 1x1 conv 1280 -> pool -> classifier")
    click.echo(f"  stem_width: {data['global']['stem_width']}   head_dim: {data['global']['head_dim']}")
    for i, st in enumerate(data["stages"]):
        click.echo(f"  s{i} (stride {st['stride']}): op {st['op']}")
        click.echo(f"      depth {st['depth']}  width {st['width']}  expand {st['expand']}  dsm {st['dsm']}")
    click.echo(f"size: {data['size']:.4g} valid architectures ({data['size_unconstrained']:.4g} before constraints)")
    click.echo(f"FLOPs at {resolution}px: {format_flops(lo)} to {format_flops(hi)}")


@space.command("sample")
@space_option
@click.option("--seed", type=int, default=None, help="Random seed (default: random).")
@click.option("--flops", "budget", callback=_budget, default=None,
              help="FLOP budget, e.g. 600M or 1.5G: the sample lands inside the band of it.")
@click.option("--band", callback=_band, default="0.9,1.0", show_default=True,
              help="Accepted FLOPs as LOW,HIGH fractions of the budget.")
@resolution_option
def space_sample(space_name, seed, budget, band, resolution):
    """Print one architecture spec as JSON on stdout."""
    from metanet.search_spaces.unified import sample_within_budget
    sp = _space(space_name)
    rng = random.Random(seed)
    if budget is None:
        spec = sp.random_spec(rng)
    else:
        try:
            spec = sample_within_budget(sp, budget, rng, band=band, resolution=resolution)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--flops'") from None
    click.echo(spec.to_json())


@cli.command("flops")
@click.argument("spec")
@resolution_option
@click.option("--count", is_flag=True, help="Also build the model and count it with fvcore (+attention).")
@click.option("--num-classes", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Classifier size included in the figures.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def flops_cmd(spec, resolution, count, num_classes, as_json):
    """FLOPs and parameters of SPEC, with a per-stage breakdown.

    SPEC is a spec JSON file, a preset name (metanet_b4, uninet_b1 ...) or timm:MODEL for any timm
    model (always counted), to compare a searched backbone with known ones.
    """
    if spec.startswith("timm:"):
        data = _count_timm(spec[5:], resolution, num_classes)
    else:
        data = _flops_of_spec(spec, resolution, count, num_classes)
    if as_json:
        _emit_json(data)
        return
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


def _flops_of_spec(source, resolution, count, num_classes):
    from metanet.search_spaces.estimate import estimate
    arch = _load_spec(source)
    est = estimate(arch, resolution, num_classes)
    stages = {}
    for name, part in est.parts.items():
        entry = {"flops": part.flops, "params": part.params}
        if name[1:].isdigit():
            st = arch.stages[int(name[1:])]
            entry["layout"] = f"{st.op} x{st.depth}, width {st.width}, expand {st.expand:g}, dsm {st.dsm}"
        stages[name] = entry
    data = {"spec": source, "resolution": resolution, "flops": est.flops, "params": est.params, "stages": stages}
    if count:
        import torch
        from metanet.counter import count_flops, count_params
        from metanet.search_spaces.metanet import MetaNet
        torch.manual_seed(0)
        model = MetaNet(arch, num_classes=num_classes, img_size=resolution)
        counted = count_flops(model, resolution)
        data.update(flops_counted=counted.total, params_counted=count_params(model),
                    flops_matmul_only=counted.matmul_only)
    return data


def _count_timm(name, resolution, num_classes):
    import timm
    from metanet.counter import count_flops, count_params
    if name not in timm.list_models():
        raise click.ClickException(f"unknown timm model {name!r} (see timm.list_models())")
    model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    try:
        counted = count_flops(model, resolution)
    except Exception as exc:  # a timm model that cannot be traced at this size
        raise click.ClickException(f"timm:{name}: cannot count at {resolution}px ({str(exc).splitlines()[0]})") from None
    params = count_params(model)
    return {"spec": f"timm:{name}", "resolution": resolution, "flops": counted.total, "params": params,
            "flops_counted": counted.total, "params_counted": params, "flops_matmul_only": counted.matmul_only}


@cli.command("build")
@click.argument("spec")
@resolution_option
@click.option("--num-classes", type=click.IntRange(min=0), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def build_cmd(spec, resolution, num_classes, as_json):
    """Build the plain model of SPEC and run one forward pass on a random image."""
    import torch
    from metanet.counter import count_params
    from metanet.search_spaces.metanet import MetaNet
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
        _emit_json(data)
        return
    click.echo(f"built {spec}: {format_flops(data['params'])} params; {arch.describe()}")
    click.echo(f"forward 1x3x{resolution}x{resolution} -> logits {tuple(out.shape)}, "
               f"features {tuple(feats.shape)}, finite: {data['finite']}")
    for f in model.feature_info:
        click.echo(f"  feature {f['module']:<9} {f['num_chs']:>5} channels, stride {f['reduction']}")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins_cmd(as_json):
    """List every plugin, built-in or external, with its source, version and hooks."""
    pm = _plugin_manager()
    rows = [{"name": p.name, "source": p.source, "version": p.version, "hooks": p.hooks} for p in pm.plugins()]
    registered = {kind: {name: reg.plugin for name, reg in table.items()} for kind, table in pm.registry.items()}
    if as_json:
        _emit_json({"plugins": rows, "registered": registered})
        return
    for r in rows:
        click.echo(f"{r['name']} ({r['source']}{', ' + r['version'] if r['version'] else ''})")
        click.echo(f"    hooks: {', '.join(r['hooks']) or '-'}")
    for kind, table in registered.items():
        if table:
            click.echo(f"{kind}: {', '.join(sorted(table))}")


def _parse_sets(values) -> dict:
    out: dict = {}
    for item in values:
        key, eq, raw = item.partition("=")
        stage, dot, name = key.partition(".")
        if not eq or not dot or not stage or not name:
            raise click.BadParameter(f"expected STAGE.SETTING=VALUE, got {item!r}", param_hint="'--set'")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        out.setdefault(stage, {})[name] = value
    return out


@cli.command("evaluate")
@click.argument("spec")
@click.option("--stages", default="zero-cost,amateur,expert,generalist,downstream", show_default=True,
              help="Stage plugins to run, in order.")
@click.option("--data", "data_source", default="digits", show_default=True,
              help="A dataset name (digits) or a folder with upstream/ and downstream/.")
@click.option("--proxy-resolution", type=click.IntRange(min=8), default=32, show_default=True,
              help="Image size the stages train at (FLOPs are still counted at the deployment size).")
@click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a stage setting.")
@click.option("--score", default=None, help="Score as weighted metrics, e.g. downstream.acc=1,zero-cost.score=0.01.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def evaluate_cmd(spec, stages, data_source, proxy_resolution, sets, score, seed, as_json):
    """Run evaluation stages on one architecture and print its metrics and score."""
    from metanet.data import DataError, load_data
    from metanet.stages import evaluate_candidate, parse_score
    pm = _plugin_manager()
    arch = _load_spec(spec)
    stage_list = [s.strip() for s in stages.split(",") if s.strip()]
    try:
        weights = parse_score(score)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--score'") from None
    try:
        data = load_data(pm, data_source, proxy_resolution, seed)
        result = evaluate_candidate(arch, stage_list, data, config=_parse_sets(sets), pm=pm, score_weights=weights,
                                    seed=seed)
    except (DataError, KeyError) as exc:
        raise click.ClickException(exc.args[0] if exc.args else str(exc)) from None
    data_out = {"status": result.status, "score": result.score, "metrics": result.metrics,
                "seconds": round(result.seconds, 2), "error": result.error}
    if as_json:
        _emit_json(data_out)
    else:
        for k, v in result.metrics.items():
            click.echo(f"{k:<40} {v:.4f}")
    if result.status != "finished":
        err = result.error
        raise click.ClickException(f"stage '{err['stage']}' failed (plugin {err['plugin'] or 'unknown'}): "
                                   f"{err['message']}")


SEARCH_OPTIONS = ("space", "flops", "strategy", "trials", "stages", "data", "resolution", "proxy_resolution", "seed",
                  "out", "engine", "concurrency", "port", "band", "budget_mode", "training_service", "score")


@cli.command("search")
@click.option("--space", "space_name", default=None, help="Search space  [default: unified]")
@click.option("--flops", default=None, help="FLOP budget(s), e.g. 600M or 300M,600M,1.2G  [default: 300M]")
@click.option("--strategy", default=None, help="random, evolution, tpe, ppo or a plugin's  [default: random]")
@click.option("--trials", type=click.IntRange(min=1), default=None, help="Trials per budget  [default: 6]")
@click.option("--stages", default=None, help="Stage plugins in order  [default: zero-cost,amateur,downstream]")
@click.option("--set", "sets", multiple=True, metavar="STAGE.KEY=VALUE", help="Override a stage setting.")
@click.option("--score", default=None, help="Score as weighted metrics, e.g. downstream.acc=1.")
@click.option("--data", default=None, help="digits, or a folder with upstream/ and downstream/  [default: digits]")
@click.option("--resolution", type=click.IntRange(min=16), default=None,
              help="Deployment resolution at which FLOPs are counted  [default: 224]")
@click.option("--proxy-resolution", type=click.IntRange(min=8), default=None,
              help="Image size the stages train at  [default: 32]")
@click.option("--band", default=None, help="Accepted FLOPs as LOW,HIGH fractions of the budget  [default: 0.9,1.0]")
@click.option("--budget-mode", type=click.Choice(["project", "screen"]), default=None,
              help="project: map proposals into the band; screen: drop those outside  [default: project]")
@click.option("--seed", type=int, default=None, help="Random seed  [default: 0]")
@click.option("--out", default=None, help="Run directory  [default: runs/search-<time>]")
@click.option("--engine", type=click.Choice(["sequential", "ts"]), default=None,
              help="sequential: in-process; ts: NNI training service, trials as processes  [default: sequential]")
@click.option("--concurrency", type=click.IntRange(min=1), default=None, help="Parallel trials (ts engine).")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="NNI web UI port (ts engine).")
@click.option("--training-service", default=None,
              help="local, or a YAML/JSON file listing remote machines (NNI remote over SSH)  [default: local]")
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
    from metanet.search import SearchConfig, SearchError, load_config_file, load_run, run_search
    flags["space"] = flags.pop("space_name")
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        if resume_dir:
            if given or config_file or sets:
                raise SearchError("--resume continues a run as it was configured; give no other search options")
            cfg = load_run(resume_dir)
        else:
            data = load_config_file(config_file) if config_file else {}
            data.update(given)
            if "band" in given:
                data["band"] = _band(ctx, None, given["band"])
            if "score" in data and isinstance(data["score"], str):
                from metanet.stages import parse_score
                data["score"] = parse_score(data["score"])
            if sets:
                merged = dict(data.get("settings") or {})
                for stage, values in _parse_sets(sets).items():
                    merged[stage] = {**merged.get(stage, {}), **values}
                data["settings"] = merged
            data["plugins"] = list((ctx.find_root().obj or {}).get("plugins", ()))
            cfg = SearchConfig.from_dict(data, source=config_file or "options")
        summary = run_search(cfg, resume=bool(resume_dir), echo=(lambda m: click.echo(m, err=True)))
    except (SearchError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    best = {str(b): (r and {"id": r["id"], "flops": r["flops"], "params": r["params"], "score": r["score"]})
            for b, r in summary.best.items()}
    if as_json:
        _emit_json({"run_dir": str(summary.run_dir), "trials": summary.trials, "failed": summary.failed,
                    "screened": {str(k): v for k, v in summary.screened.items()}, "best": best,
                    "plot": str(summary.plot) if summary.plot else None})
        return
    click.echo(summary.table)
    click.echo(f"run directory: {summary.run_dir}   (metanet results {summary.run_dir})")
    if summary.plot:
        click.echo(f"plot: {summary.plot}")


@cli.command("results")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--top", "top", type=click.IntRange(min=1), default=None, help="Only the K best per budget.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def results_cmd(run_dir, top, as_json):
    """The trials of a search run, best per budget first."""
    from metanet.search import STORE_FILE, SearchError, load_run
    from metanet.store import TrialStore
    try:
        cfg = load_run(run_dir)
    except SearchError as exc:
        raise click.ClickException(str(exc)) from None
    import os
    rows = TrialStore(os.path.join(run_dir, STORE_FILE)).trials()
    ordered = []
    for b in cfg.flops:
        mine = [r for r in rows if r["budget"] == b]
        mine.sort(key=lambda r: (r["status"] != "ok", -(r["score"] if r["score"] is not None else float("-inf"))))
        ordered.extend(mine[:top] if top else mine)
    if as_json:
        _emit_json([{k: r[k] for k in ("id", "budget", "status", "spec", "flops", "params", "score", "metrics",
                                          "error", "seconds", "seed")} for r in ordered])
        return
    click.echo(f"{'id':>4} {'budget':>7} {'status':>7} {'FLOPs':>8} {'params':>8} {'score':>9}  layout / error")
    for r in ordered:
        score = f"{r['score']:.4f}" if r["score"] is not None else "-"
        from metanet.search_spaces.spec import ArchSpec
        detail = r["error"] if r["status"] == "failed" else ArchSpec.from_dict(r["spec"]).describe()
        click.echo(f"{r['id']:>4} {format_flops(r['budget']):>7} {r['status']:>7} {format_flops(r['flops']):>8} "
                   f"{format_flops(r['params']):>8} {score:>9}  {(detail or '')[:110]}")


@cli.command("export")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder to write.")
@click.option("--budget", default=None, help="The best trial of this budget (e.g. 300M).")
@click.option("--rank", type=int, default=None, help="The K-th best trial (1 = best), within --budget if given.")
@click.option("--trial", "trial_id", type=int, default=None, help="A trial by id.")
@click.option("--format", "formats", default="", help="Also write: torchscript, onnx (comma-separated).")
@click.option("--num-classes", type=click.IntRange(min=0), default=0, show_default=True,
              help="Classifier size of the exported model (0: pooled features).")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def export_cmd(run_dir, out_dir, budget, rank, trial_id, formats, num_classes, force, as_json):
    """Export a searched backbone as a folder timm, TorchScript and ONNX users load as is."""
    from metanet.export import ExportError, export_run
    from metanet.search import SearchError
    if trial_id is not None and (budget or rank):
        raise click.BadParameter("--trial picks one trial; do not combine it with --budget or --rank")
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    try:
        result = export_run(run_dir, out_dir, budget=budget, rank=rank, trial=trial_id, formats=fmts,
                            num_classes=num_classes, force=force)
    except (ExportError, SearchError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        _emit_json({"out_dir": str(result.out_dir), "trial": result.trial["id"], "trained": result.trained,
                    "files": [str(f) for f in result.files], "load": result.load_line})
        return
    click.echo(f"exported trial {result.trial['id']} to {result.out_dir}: "
               + ", ".join(f.name for f in result.files))
    click.echo(result.note)
    click.echo("load it with:")
    click.echo(result.load_line)


@cli.command("presets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def presets_cmd(as_json):
    """The released MetaNet and UniNet models, as specs of the space."""
    from metanet.search_spaces.estimate import estimate
    from metanet.search_spaces.presets import PRESETS
    rows = []
    for p in PRESETS.values():
        est = estimate(p.spec, p.input_size)
        rows.append({"name": p.name, "input_size": p.input_size, "flops": est.flops, "params": est.params,
                     "description": p.description})
    if as_json:
        _emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['name']:<12} {r['input_size']:>4}px  {format_flops(r['flops']):>8} FLOPs  "
                   f"{format_flops(r['params']):>8} params  {r['description']}")


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="metanet", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted", err=True)
        sys.exit(130)
