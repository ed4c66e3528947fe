"""The ``metanet`` click group: global options (``-p`` plugins), errors translated once, shared helpers.

The commands are wiring: counting, ranking and formatting live in the modules that own them. Errors are
translated once, by the group: a :class:`metanet.errors.MetanetError` becomes one line (exit status 2 when it
is about a command-line option, else 1). Heavy imports (torch, timm, fvcore, NNI) happen inside the commands
that need them, so ``--help`` answers quickly.
"""
from __future__ import annotations

import json
import signal
import sys

import click

from metanet import __version__
from metanet.errors import MetanetError


class MetanetGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MetanetError as exc:
            if exc.param:
                raise click.BadParameter(str(exc), param_hint=f"'--{exc.param.replace('_', '-')}'") from None
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            # click would say "Aborted!" and exit 1: a stopped search exits 128 + the signal, as shells expect
            # (130 for Ctrl-C, 143 for SIGTERM), after it has stopped the NNI manager it started
            signum = getattr(exc, "signum", signal.SIGINT)
            click.echo(f"interrupted ({signal.Signals(signum).name})", err=True)
            ctx.exit(128 + signum)

def load_spec(source: str):
    from metanet.search_spaces.metanet import as_spec
    return as_spec(source)


def plugin_registry():
    from metanet.plugin.manager import registry
    return registry(click.get_current_context().find_root().obj.get("plugins", ()))


def json_safe(data):
    """``data`` with every NaN and infinity as null: ``--json`` is JSON (RFC 8259 has no NaN), which jq, JavaScript
    and strict parsers read; a metric that was not a number is null."""
    import math
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


def emit_json(data) -> None:
    click.echo(json.dumps(json_safe(data), indent=2, allow_nan=False))

@click.group(cls=MetanetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="metanet")
@click.option("-p", "--plugin", "plugins", multiple=True, metavar="MODULE",
              help="Load a plugin by module path (repeatable); also METANET_PLUGINS=mod1,mod2.")
@click.option("--trust-stored-plugins", is_flag=True,
              help="Import the plugin modules a run's config.json names (search --resume, proxy-check, "
                   "evaluate --rerun) without naming each with -p: only for runs you made or trust.")
@click.pass_context
def cli(ctx, plugins, trust_stored_plugins):
    """metanet: architecture search over INTERN's unified conv + transformer space.

    FLOPs are multiply-accumulates (fvcore's default operators plus attention), as in timm and
    the MetaNet/UniNet papers.
    """
    ctx.obj = {"plugins": plugins, "trust_stored_plugins": trust_stored_plugins}
    if plugins:
        plugin_registry()  # a named plugin that cannot load is an error now, whatever the command

def main(argv=None):
    try:
        cli.main(args=argv, prog_name="metanet", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover  (outside a command: while click parses)
        click.echo("interrupted", err=True)
        sys.exit(130)


def check_stored_plugins(stored, run_dir, command: str) -> tuple[str, ...]:
    """The plugin modules a command that reads ``run_dir`` may import: those named on this command line, or,
    with ``--trust-stored-plugins``, those its config.json names too; any other stored one is refused in one
    line before anything is imported (:func:`metanet.plugin.manager.refuse_unnamed_plugins`)."""
    from metanet.plugin.manager import refuse_unnamed_plugins
    obj = click.get_current_context().find_root().obj or {}
    named = tuple(obj.get("plugins", ()))
    if obj.get("trust_stored_plugins"):
        return tuple(dict.fromkeys([*named, *stored]))
    refuse_unnamed_plugins(stored, named, run_dir, command)
    return named
