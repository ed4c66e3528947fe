"""Options shared by the commands: budgets, bands, resolutions, ``--json``, ``--set``, and the flags of a
:class:`metanet.runs.config.SearchConfig` field taken from the field itself (its help and default written once)."""
from __future__ import annotations

import dataclasses

import click

from metanet.budget import parse_flops
from metanet.errors import MetanetError


def _budget(ctx, param, value):
    try:
        return None if value is None else parse_flops(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _band(ctx, param, value):
    from metanet.runs.config import parse_band
    try:
        return parse_band(value)
    except MetanetError as exc:
        raise click.BadParameter(str(exc).split(": ", 1)[1]) from None

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
    from metanet.runs.config import SearchConfig, format_default
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
    from metanet.runs.config import SearchConfig
    for f in reversed(dataclasses.fields(SearchConfig)):
        if f.metadata.get("flag"):
            fn = config_option(f.name)(fn)
    return fn

def search_default(name: str):
    from metanet.runs.config import SearchConfig
    return SearchConfig.defaults()[name]


def warn_small_attention_grids(arch, resolution: int) -> None:
    from metanet.search_spaces.spec import small_attention_grids
    small = small_attention_grids([{st.op, st.dsm} for st in arch.stages], resolution)
    if small:
        click.echo(f"warning: at {resolution}px these attention stages see fewer than 2x2 tokens and degenerate "
                   f"to near-linear maps: {'; '.join(small)}", err=True)
