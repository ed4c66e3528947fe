"""Counted costs of plugin operators registered without a formula, kept between commands.

The estimator counts such an operator by building a block and tracing it with fvcore, once per distinct
shape in a process; a space of six stages of it has thousands of shapes (34 s for ``space show`` on 2 cores).
With ``METANET_CACHE_DIR`` set, the counts also go to ``$METANET_CACHE_DIR/op-costs/<plugin>.json``, keyed by
the plugin's version (its distribution's version, or a digest of its module's source), so later commands
read them instead of tracing again; a new version of the plugin starts a fresh file. Without the variable
nothing is written: metanet writes only where the user says.
"""
from __future__ import annotations

import atexit
import json
import os
import re
from pathlib import Path

ENV_CACHE_DIR = "METANET_CACHE_DIR"
FLUSH_EVERY = 256  # new counts between writes (and once more at exit)


class OpCostCache:
    """The counts of one plugin's operators: ``get``/``put`` by shape key, written back in batches."""

    def __init__(self, path: Path | None, version: str | None):
        self.path, self.version = path, version
        self.costs: dict[str, list[int]] = {}
        self._new = 0
        if path is not None and version is not None:
            self.costs = self._read()
            atexit.register(self.flush)

    def _read(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # absent or damaged: counted again, and rewritten
        if not isinstance(data, dict) or data.get("version") != self.version or not isinstance(data.get("costs"), dict):
            return {}
        return {k: v for k, v in data["costs"].items()
                if isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) for x in v)}

    def get(self, key: str) -> tuple[int, int] | None:
        found = self.costs.get(key)
        return (found[0], found[1]) if found is not None else None

    def put(self, key: str, flops: int, params: int) -> None:
        self.costs[key] = [int(flops), int(params)]
        self._new += 1
        if self._new >= FLUSH_EVERY:
            self.flush()

    def flush(self) -> None:
        if self.path is None or self.version is None or not self._new:
            return
        from metanet.atomic import write_atomic
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {**self._read(), **self.costs}  # another process may have added counts meanwhile
            write_atomic(self.path, json.dumps({"version": self.version, "costs": merged}))
            self._new = 0
        except OSError:
            self.path = None  # an unwritable cache is no cache; the counts still hold in memory


_CACHES: dict[str, OpCostCache] = {}


def cache_for(plugin: str) -> OpCostCache:
    """The cache of ``plugin``'s operators (on disk only with ``METANET_CACHE_DIR``)."""
    if plugin not in _CACHES:
        root = os.environ.get(ENV_CACHE_DIR)
        path = version = None
        if root:
            from metanet.plugin.manager import registry
            version = registry().plugin_version(plugin)
            path = Path(root).expanduser() / "op-costs" / (re.sub(r"[^A-Za-z0-9_.-]", "_", plugin) + ".json")
        _CACHES[plugin] = OpCostCache(path, version)
    return _CACHES[plugin]


def shape_key(op: str, cin, cout, stride, expand, head_dim, hw_in, grid) -> str:
    return f"{op}|{cin}|{cout}|{stride}|{expand}|{head_dim}|{hw_in}|{','.join(map(str, grid))}"
