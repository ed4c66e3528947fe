"""How long `space show` / `space sample` take on a space of a plugin operator registered without a cost formula
(a GhostNet-style block, counted by fvcore), cold and with the op-cost cache warm, against the built-in space.

    python benchmarks/op_cost_cache.py --out /tmp/opcost

Writes the plugin module and the cache under --out only; prints seconds and the ratios to the built-in space.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PLUGIN = '''
import torch
import torch.nn as nn

from metanet import hookimpl
from metanet.search_spaces.unified import SpaceConfig


class Ghost(nn.Module):
    """GhostNet's module: a 1x1 conv makes half the channels, a cheap depthwise 3x3 the other half."""

    def __init__(self, cin, cout, stride, expand, head_dim, drop_path, grid):
        super().__init__()
        half = max(1, cout // 2)
        self.primary = nn.Sequential(nn.Conv2d(cin, half, 1, stride, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.cheap = nn.Sequential(nn.Conv2d(half, cout - half, 3, 1, 1, groups=math_gcd(half, cout - half),
                                             bias=False), nn.BatchNorm2d(cout - half), nn.ReLU())
        self.shortcut = nn.Identity() if cin == cout and stride == 1 else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x):
        y = self.primary(x)
        return torch.cat([y, self.cheap(y)], 1) + self.shortcut(x)


def math_gcd(a, b):
    import math
    return math.gcd(a, b)


@hookimpl
def metanet_register_operators(register):
    register("ghost", Ghost)  # no cost formula: the estimator counts built blocks


@hookimpl
def metanet_register_search_spaces(register):
    register("ghostspace", SpaceConfig(name="ghostspace", op=(("ghost", "mbconv"),) * 6))
'''


def timed(cmd: list[str], env: dict) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "ghostplug.py").write_text(PLUGIN)
    cache = out / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    metanet = str(Path(sys.executable).with_name("metanet"))
    env = {**os.environ, "PYTHONPATH": f"{out}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "METANET_CACHE_DIR": str(cache)}
    builtin_show = timed([metanet, "space", "show"], env)
    builtin_sample = timed([metanet, "space", "sample"], env)
    ghost = [metanet, "-p", "ghostplug", "space"]
    loaded_show = timed([*ghost, "show"], env)  # the built-in space with the plugin imported (it imports torch)
    loaded_sample = timed([*ghost, "sample"], env)
    cold_show = timed([*ghost, "show", "--space", "ghostspace"], env)
    warm_show = timed([*ghost, "show", "--space", "ghostspace"], env)
    warm_sample = timed([*ghost, "sample", "--space", "ghostspace"], env)
    uncached = {k: v for k, v in env.items() if k != "METANET_CACHE_DIR"}
    plain_sample = timed([*ghost, "sample", "--space", "ghostspace"], uncached)
    entries = sum(1 for _ in (cache / "op-costs").glob("*.json"))
    print(f"built-in space:          show {builtin_show:6.1f} s   sample {builtin_sample:6.1f} s")
    print(f"built-in, plugin loaded: show {loaded_show:6.1f} s   sample {loaded_sample:6.1f} s")
    print(f"ghost space, no cache:   show {cold_show:6.1f} s   sample {plain_sample:6.1f} s  "
          f"({cold_show / builtin_show:.1f}x / {plain_sample / builtin_sample:.1f}x the built-in)")
    print(f"ghost space, cache warm: show {warm_show:6.1f} s   sample {warm_sample:6.1f} s  "
          f"({warm_show / builtin_show:.2f}x / {warm_sample / builtin_sample:.2f}x the built-in, "
          f"{warm_show / loaded_show:.2f}x / {warm_sample / loaded_sample:.2f}x it with the plugin loaded; target 2x)")
    print(f"cache files: {entries} in {cache / 'op-costs'}")


if __name__ == "__main__":
    main()
