"""``metanet export`` (a searched backbone for timm, TorchScript, ONNX) and ``convert`` (official weights)."""
from __future__ import annotations

import click

from metanet.budget import format_flops
from metanet.cli.group import emit_json, load_spec, plugin_registry, cli
from metanet.cli.options import json_option


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
    from metanet.export.run_export import export_run
    if trial_id is not None and (budget or rank):
        raise click.BadParameter("--trial picks one trial; do not combine it with --budget or --rank")
    plugin_registry()
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    result = export_run(run_dir, out_dir, budget=budget, rank=rank, trial=trial_id, formats=fmts,
                        num_classes=num_classes, force=force)
    if as_json:
        return emit_json({"out_dir": str(result.out_dir), "trial": result.trial["id"], "trained": result.trained,
                           "files": [str(f) for f in result.files], "load": result.load_line})
    click.echo(f"exported trial {result.trial['id']} to {result.out_dir}: " + ", ".join(f.name for f in result.files))
    click.echo(result.note)
    click.echo("load it with:")
    click.echo(result.load_line)

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
    from metanet.export.convert import convert_checkpoint
    from metanet.search_spaces.presets import PRESETS
    if bool(preset) == bool(arch):
        raise click.UsageError("give exactly one of --preset and --arch")
    if preset and preset not in PRESETS:
        raise click.BadParameter(f"unknown preset {preset!r} (presets: {', '.join(PRESETS)})", param_hint="--preset")
    spec = PRESETS[preset].spec if preset else load_spec(arch)
    result = convert_checkpoint(checkpoint, spec, out, force=force)
    if as_json:
        return emit_json(result)
    click.echo(f"wrote {result['out']}: {result['tensors']} tensors, {format_flops(result['params'])} parameters, "
               f"{result['num_classes']} classes ({result['family']} checkpoint)")
