"""``metanet supernet train``: a weight-sharing supernet, trained once, scoring candidates in seconds."""
from __future__ import annotations

import click

from metanet.budget import format_flops, parse_flops
from metanet.cli.group import emit_json, cli
from metanet.cli.options import (band_option, json_option, space_option)


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
    from metanet import supernet as sn
    from metanet.errors import ConfigError
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
        emit_json(summary)
    else:
        click.echo(f"supernet: {summary['out']}  step {summary['step']}/{summary['steps']}  "
                   f"{summary['shared_parameters'] / 1e6:.1f}M shared parameters  {summary['seconds']:.0f} s")
        click.echo(f"score candidates with: metanet search --stages supernet --set supernet.path={summary['out']} "
                   f"--flops {','.join(format_flops(b) for b in summary['budgets'])} "
                   f"--proxy-resolution {summary['resolution']}")
