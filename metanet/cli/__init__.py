"""The ``metanet`` command line: one click group (:mod:`.group`), its shared options (:mod:`.options`) and
one module per command group (:mod:`.inspect`, :mod:`.evaluate`, :mod:`.search`, :mod:`.supernet`,
:mod:`.export`). Errors are translated once, by the group.

May import: everything (lazily, inside the commands, so that ``--help`` answers quickly).
"""
from metanet.cli.group import cli, main
from metanet.cli import evaluate, export, inspect, search, supernet  # noqa: F401,E402 - each registers its commands

__all__ = ["cli", "main"]
