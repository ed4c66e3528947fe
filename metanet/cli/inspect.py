"""Inspecting the space and models: ``space show``/``space sample``, ``flops``, ``build``, ``presets``, ``plugins``."""
from __future__ import annotations

import json
import random

import click

from metanet.budget import format_flops
from metanet.cli.group import emit_json, load_spec, plugin_registry, cli
from metanet.cli.options import (band_option, budget_option, json_option, num_classes_option, resolution_option,
                                 space_option)


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
    from metanet.search_spaces.unified import get_space
    plugin_registry()
    if budget is not None:
        return _show_budget_space(get_space(space_name), budget, band, resolution, as_json)
    data = get_space(space_name).describe(resolution)
    if as_json:
        return emit_json(data)
    click.echo(f"space '{data['space']}': stem 3x3/2 -> 6 stages -> 1x1 conv 1280 -> pool -> classifier")
    click.echo(f"  stem_width: {data['global']['stem_width']}   head_dim: {data['global']['head_dim']}")
    for i, st in enumerate(data["stages"]):
        click.echo(f"  s{i} (stride {st['stride']}): op {st['op']}")
        click.echo(f"      depth {st['depth']}  width {st['width']}  expand {st['expand']}  dsm {st['dsm']}")
    click.echo(f"size: {data['size']:.4g} valid architectures ({data['size_unconstrained']:.4g} before constraints)")
    click.echo(f"FLOPs at {resolution}px: {format_flops(data['flops_min'])} to {format_flops(data['flops_max'])}")


def _show_budget_space(sp, budget, band, resolution, as_json):
    from metanet.search_spaces.budget_space import budget_space
    bs = budget_space(sp, budget, band, resolution)
    data = {**bs.describe(), **bs.in_band_share(2000)}
    if as_json:
        return emit_json(data)
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
    from metanet.search_spaces.unified import get_space, sample_within_budget
    plugin_registry()
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
        from metanet.search_spaces.counter import count_timm_model
        data = count_timm_model(spec[5:], resolution, num_classes)
    else:
        from metanet.search_spaces.size_report import flops_report
        plugin_registry()
        data = flops_report(load_spec(spec), spec, resolution, num_classes, count)
    if as_json:
        return emit_json(data)
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

    from metanet.search_spaces.counter import count_params
    from metanet.search_spaces.metanet import MetaNet
    from metanet.search_spaces.size_report import check_fits
    plugin_registry()
    arch = load_spec(spec)
    check_fits(arch, resolution, num_classes, what=spec)  # before anything is allocated
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
        return emit_json(data)
    click.echo(f"built {spec}: {format_flops(data['params'])} params; {arch.describe()}")
    click.echo(f"forward 1x3x{resolution}x{resolution} -> logits {tuple(out.shape)}, "
               f"features {tuple(feats.shape)}, finite: {data['finite']}")
    for f in model.feature_info:
        click.echo(f"  feature {f['module']:<9} {f['num_chs']:>5} channels, stride {f['reduction']}")


@cli.command("plugins")
@click.option("--stage", metavar="NAME", help="Show one stage: its settings (default, type and range) and "
                                               "capabilities, as --set STAGE.SETTING=VALUE takes them.")
@json_option
def plugins_cmd(stage, as_json):
    """List every plugin, built-in or external, with its source, version, hooks and registrations."""
    from metanet.plugin.registered import KINDS
    pm = plugin_registry()
    if stage is not None:
        return _stage_settings(pm, stage, as_json)
    data = pm.describe()
    if as_json:
        return emit_json(data)
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


def _stage_settings(pm, name, as_json):
    entry = pm.stage(name)
    data = {"name": name, **entry.summary()}
    if as_json:
        return emit_json(data)
    click.echo(f"stage {name} ({entry.plugin}): {entry.description}")
    click.echo(f"    trains backbone: {entry.trains_backbone}; score metric: {entry.score_metric}; "
               f"multi-fidelity: {entry.fidelity}")
    rows = [(key, json.dumps(s.default), s.constraint_text(), s.description) for key, s in entry.schema.items()]
    if rows:
        w = [max(len(r[i]) for r in rows) for i in range(3)]
        for key, default, rule, what in rows:
            click.echo(f"  {key:<{w[0]}}  {default:<{w[1]}}  {rule:<{w[2]}}  {what}".rstrip())


@cli.command("presets")
@json_option
def presets_cmd(as_json):
    """The released MetaNet and UniNet models, as points of the default space."""
    from metanet.search_spaces.size_report import preset_rows
    rows = preset_rows()
    if as_json:
        return emit_json(rows)
    for r in rows:
        click.echo(f"{r['name']:<12} {r['input_size']:>4}px  {format_flops(r['flops']):>8} FLOPs  "
                   f"{format_flops(r['params']):>8} params  {r['description']}"
                   + ("" if r["in_space"] else f"  (outside the default space: {r['outside']})"))
