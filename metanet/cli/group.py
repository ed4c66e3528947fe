"""The ``metanet`` click group: global options (``-p`` plugins), errors translated once, shared helpers.

The commands are wiring: counting, ranking and formatting live in the modules that own them. Errors are
translated once, by the group: a :class:`metanet.errors.MetanetError` becomes one line (exit status 2 when it
is about a command-line option, else 1). Heavy imports (torch, timm, fvcore, NNI) happen inside the commands
that need them, so ``--help`` answers quickly.
"""
from __future__ import annotations

import json
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

def load_spec(source: str):
    from metanet.search_spaces.metanet import as_spec
    return as_spec(source)


def plugin_registry():
    from metanet.plugin.manager import registry
    return registry(click.get_current_context().find_root().obj.get("plugins", ()))


def emit_json(data) -> None:
    click.echo(json.dumps(data, indent=2))

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
        plugin_registry()  # a named plugin that cannot load is an error now, whatever the command

def main(argv=None):
    try:
        cli.main(args=argv, prog_name="metanet", standalone_mode=True)
    except KeyboardInterrupt:  # pragma: no cover
        click.echo("interrupted", err=True)
        sys.exit(130)
