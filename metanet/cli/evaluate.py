"""``metanet evaluate``: run stages on one architecture, or re-run a stored trial (``--rerun``)."""
from __future__ import annotations

import click

from metanet.cli.group import check_stored_plugins, emit_json, load_spec, plugin_registry, cli
from metanet.cli.options import (search_default, config_option, json_option, set_option, warn_small_attention_grids)


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
@config_option("proxy_resolution", default=search_default("proxy_resolution"))
@config_option("val_fraction", default=search_default("val_fraction"))
@config_option("min_val_images", default=search_default("min_val_images"))
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
    from metanet.data import load_data
    from metanet.runs.config import _names, parse_sets, parse_stages
    from metanet.evaluate.candidate import check_score_stages, check_stages, evaluate_repeated, parse_score, preflight_stages
    from metanet.runs.store import OK
    from metanet.evaluate.candidate import step_size
    from metanet.search_spaces.size_report import check_fits
    pm = plugin_registry()
    arch = load_spec(spec)
    settings, weights = parse_sets(sets), parse_score(score)
    stage_list = parse_stages(stages) if stages is not None else None
    fits = dict(resolution_option="proxy_resolution", accelerator=accelerator, what=spec)
    check_fits(arch, proxy_resolution, **fits)  # before the data is decoded at this size
    if stage_list is not None:
        if weights:
            check_score_stages(weights, stage_list)  # before any training
        configs = check_stages(pm, stage_list, settings)
        preflight_stages(pm, stage_list, configs, {"data": data, "proxy_resolution": proxy_resolution})
        batch, training = step_size(pm, stage_list, configs)
        check_fits(arch, proxy_resolution, batch=batch, training=training, **fits)
    warn_small_attention_grids(arch, proxy_resolution)
    bundle = load_data(pm, data, proxy_resolution, seed, val_fraction, data_dir=data_dir,
                       downstream=_names(downstream or [], "downstream"), cache=cache, min_val_images=min_val_images)
    if stage_list is None:  # the default stages the data can serve, checked as given ones are
        stage_list = [s for s in EVALUATE_STAGES.split(",") if s != "downstream" or bundle.tasks]
        if weights:
            check_score_stages(weights, stage_list)
        configs = check_stages(pm, stage_list, settings)
        preflight_stages(pm, stage_list, configs, {"data": data, "proxy_resolution": proxy_resolution})
        batch, training = step_size(pm, stage_list, configs)
        check_fits(arch, proxy_resolution, batch=batch, training=training, **fits)
    from metanet.evaluate.candidate import check_stage_data
    check_stage_data(pm, stage_list, configs, bundle)  # names of sources and tasks, before any training
    for note in dict.fromkeys(bundle.notes):
        click.echo(note, err=True)
    from metanet.train.runtime import Runtime
    runtime = Runtime.create(accelerator, precision, devices, compile, deterministic)  # a bad choice fails here
    result = evaluate_repeated(arch, stage_list, bundle, config=settings, pm=pm, score_weights=weights, seed=seed,
                               repeats=repeats, accelerator=accelerator, precision=precision, devices=devices,
                               compile=compile, deterministic=deterministic)
    if as_json:
        emit_json({"status": result.status, "score": result.score, "test_score": result.test_score,
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
    from metanet.errors import RunError
    from metanet.search.reproduce import rerun
    from metanet.runs.directory import RunDir
    check_stored_plugins(RunDir.open(run_dir).config.plugins, run_dir, f"evaluate --rerun {run_dir} {trial}")
    plugin_registry()
    result = rerun(run_dir, trial)
    if as_json:
        emit_json(result.to_json())
    else:
        for key, (then, now) in result.differences.items():
            click.echo(f"{key:<40} {then!r:>22} -> {now!r}")
    if not result.matches:
        raise RunError(result.summary())
    if not as_json:
        click.echo(result.summary())
