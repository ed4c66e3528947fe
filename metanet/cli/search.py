"""``metanet search``, ``results`` and ``proxy-check``: the search and what it found."""
from __future__ import annotations


import click

from metanet.cli.group import check_stored_plugins, emit_json, plugin_registry, cli
from metanet.cli.options import (budget_option, json_option, search_options, set_option)


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

    Exit status: 0 when every trial finished, 3 when some failed (the others give the result), 1 when none
    finished or the search could not run, 2 for a usage error, 130/143 when stopped by Ctrl-C/SIGTERM.
    """
    from metanet.errors import ConfigError, RunError
    from metanet.runs.directory import RunDir
    from metanet.search.driver import run_search
    from metanet.runs.config import SearchConfig, load_config_file, merge_settings, parse_sets
    given = {k: v for k, v in flags.items() if v is not None}
    if resume_dir:
        if given or config_file or sets:
            raise ConfigError("--resume continues a run as it was configured; give no other search options")
        cfg = RunDir.open(resume_dir).config
        cfg.out = resume_dir  # the run is the directory named, wherever it was first started
        check_stored_plugins(cfg.plugins, resume_dir, "search --resume")
    else:
        data = load_config_file(config_file) if config_file else {}
        data.update(given)
        if sets:
            data["settings"] = merge_settings(data.get("settings") or {}, parse_sets(sets))
        data["plugins"] = list(ctx.find_root().obj.get("plugins", ()))
        cfg = SearchConfig.from_dict(data, source=config_file or "options")
    summary = run_search(cfg, resume=bool(resume_dir), echo=(lambda m: click.echo(m, err=True)))
    if as_json:
        emit_json(summary.to_json())
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
    if summary.failed:  # a result, from fewer candidates than asked: scripts see it in the status
        click.echo(f"warning: {summary.failed} of {summary.trials} trials failed (first: {summary.first_error}); "
                   f"the best are from the {summary.finished} that finished (metanet results {summary.run_dir})",
                   err=True)
        ctx.exit(PARTIAL)


# The exit status of a search that finished with some of its trials failed (0: all finished, 1: none did or it
# could not run, 2: a usage error, 128+N: stopped by signal N).
PARTIAL = 3

@cli.command("results")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--top", "top", type=click.IntRange(min=1), default=None, help="Only the K best per budget.")
@json_option
def results_cmd(run_dir, top, as_json):
    """The trials of a search run, best per budget first."""
    from metanet.search.report import operator_mix_table, results_rows, results_table
    from metanet.runs.directory import RunDir
    plugin_registry()
    rows = results_rows(RunDir.open(run_dir), top)
    if as_json:
        return emit_json(rows)
    click.echo(results_table(rows))
    click.echo(operator_mix_table(rows))


@cli.command("ui")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True, help="Port of the web UI.")
@click.option("--budget", default=None, help="The budget whose experiment to show (default: the last one run).")
def ui_cmd(run_dir, port, budget):
    """NNI's web UI for a finished ts-engine search (its trials, final metrics and metanet's keys), until Ctrl-C.

    The UI of a running search is at the address it prints; this shows one that ended, read-only, on this
    machine only. Proposals, rewritten choices and multi-fidelity rungs are not in NNI's UI: `metanet results`.
    """
    import time
    from metanet.budget import format_flops, parse_flops
    from metanet.errors import RunError
    from metanet.search.nni_view import stored_experiments, view_experiment
    found = stored_experiments(run_dir)
    if budget is not None:
        wanted = parse_flops(budget)
        found = [e for e in found if e.get("budget") == wanted]
    if not found:
        raise RunError(f"{run_dir}: no NNI experiment recorded" + (f" for budget {budget}" if budget else "")
                       + " (the sequential engine runs none; nni-experiments.jsonl lists those of --engine ts)")
    entry = found[-1]
    proc = view_experiment(entry["experiment"], port)
    click.echo(f"NNI web UI of experiment {entry['experiment']} (budget {format_flops(entry['budget'])}): "
               f"http://127.0.0.1:{port} (Ctrl-C ends it)")
    try:
        while proc.poll() is None:
            time.sleep(1)
    finally:
        proc.terminate()
        proc.wait(10)


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
    from metanet.search.proxy_check import proxy_check
    from metanet.runs.directory import RunDir
    from metanet.runs.config import parse_sets
    plugin_registry()
    check_stored_plugins(RunDir.open(run_dir).config.plugins, run_dir, "proxy-check")
    from metanet.runs.config import parse_stages
    result = proxy_check(run_dir, top, parse_sets(sets), proxy_resolution, repeats, budget, seed,
                         echo=(lambda m: None) if as_json else (lambda m: click.echo(m, err=True)),
                         stages=parse_stages(stages) if stages is not None else None, noise_ceiling=noise_ceiling)
    if as_json:
        return emit_json(result.to_json())
    click.echo(result.table())
    click.echo(f"re-evaluations: {result.check_dir}   (metanet results {result.check_dir})")
