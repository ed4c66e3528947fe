"""The unified search space: the choices per stage, sampling, and the space's FLOP range.

This module is plain Python (no NNI): the CLI and the FLOP screen use it directly. The NNI
``ModelSpace`` over the same labels lives in :mod:`metanet.search_spaces.nni_space`.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from metanet.budget import format_flops
from metanet.errors import ConfigError, UnknownName

from metanet.search_spaces.estimate import estimate, head_cost, stage_cost
from metanet.search_spaces.spec import (ATTENTION_OPS, CONV_OPS, DSMS, NUM_STAGES, STAGE_FIELDS, ArchSpec,
                   SpecError, StageSpec, is_attention_op, stage_grids, stage_key)

ALL_OPS = CONV_OPS + ATTENTION_OPS


def _per_stage(*values):
    return tuple(tuple(v) for v in values)


@dataclass(frozen=True)
class SpaceConfig:
    """Choice lists of the unified space. Numeric lists are sorted ascending."""

    # Every released preset (MetaNet-B4/B15, UniNet-B0..B6) is a point of the default space: the choices
    # below hold their stem widths, widths and depths (tests/test_space.py checks it).
    stem_width: tuple[int, ...] = (16, 24, 32, 48, 64, 96)
    head_dim: tuple[int, ...] = (32, 48, 64)
    # Global attention on the 112x112 map of stage 0 (12544 tokens) is out of reach: conv only there.
    op: tuple[tuple[str, ...], ...] = (CONV_OPS,) + (ALL_OPS,) * 5
    depth: tuple[tuple[int, ...], ...] = _per_stage((1, 2, 3, 4), (1, 2, 3, 4, 5, 6), (2, 3, 4, 6, 7, 8, 9, 10, 12),
                                                    (2, 3, 4, 6, 7, 8, 9, 10, 12), (2, 3, 4, 6, 7, 8, 9, 10, 12),
                                                    (4, 6, 8, 12, 14, 16, 18, 20, 24))
    width: tuple[tuple[int, ...], ...] = _per_stage((16, 24, 32, 48, 64, 96, 128), (32, 48, 56, 64, 96, 128, 192, 256),
                                                    (64, 80, 96, 112, 128, 160, 192, 256, 384, 512),
                                                    (96, 128, 160, 192, 224, 256, 384, 512, 768),
                                                    (128, 160, 192, 224, 256, 384, 512, 768),
                                                    (192, 256, 288, 352, 384, 448, 512, 768, 1024, 1536))
    expand: tuple[tuple[int, ...], ...] = ((1, 2, 4),) + ((2, 3, 4, 5, 6),) * 5
    dsm: tuple[tuple[str, ...], ...] = (("block", "local"),) + (DSMS,) * 5
    name: str = "unified"

    def choices(self) -> dict[str, list[Any]]:
        """Label -> candidate values, in spec order: the NNI mutables of the space."""
        out: dict[str, list[Any]] = {"stem_width": list(self.stem_width), "head_dim": list(self.head_dim)}
        for i in range(NUM_STAGES):
            for f in STAGE_FIELDS:
                out[stage_key(i, f)] = list(getattr(self, f)[i])
        return out

    def raw_size(self) -> int:
        """Number of combinations before the validity constraints."""
        return math.prod(len(v) for v in self.choices().values())

    def contains(self, spec: ArchSpec) -> str | None:
        """None if ``spec`` is a point of this space, else a message naming the first field outside it."""
        for label, values in self.choices().items():
            value = spec.to_sample()[label]
            if value not in values:
                return f"{label}: {value!r} is not a choice of space '{self.name}' ({values})"
        return None

    # -- sampling -----------------------------------------------------------------
    def random_spec(self, rng: random.Random, max_tries: int = 10000) -> ArchSpec:
        """A uniformly drawn valid architecture (rejection on the validity constraints)."""
        for _ in range(max_tries):
            sample = {label: rng.choice(values) for label, values in self.choices().items()}
            spec = try_spec(sample)
            if spec is not None:
                return spec
        raise ConfigError(f"space '{self.name}': no valid architecture in {max_tries} draws", param="space")

    def flops_range(self, resolution: int = 224, num_classes: int = 1000) -> tuple[int, int]:
        """Exact smallest and largest FLOPs of a valid architecture of this space."""
        return _flops_range(self, resolution, num_classes)

    def valid_size(self) -> int:
        """Number of valid architectures (the constraints applied), counted exactly."""
        return _valid_size(self)

    def describe(self, resolution: int = 224) -> dict[str, Any]:
        """The choices per stage, the size and the FLOP range (``metanet space show``)."""
        from metanet.search_spaces.spec import STRIDES
        choices = self.choices()
        lo, hi = self.flops_range(resolution)
        return {"space": self.name, "global": {k: choices[k] for k in ("stem_width", "head_dim")},
                "stages": [{"stride": STRIDES[i], **{f: choices[stage_key(i, f)] for f in STAGE_FIELDS}}
                           for i in range(NUM_STAGES)],
                "size": self.valid_size(), "size_unconstrained": self.raw_size(), "resolution": resolution,
                "flops_min": lo, "flops_max": hi}


DEFAULT_SPACE = SpaceConfig()


def try_spec(sample: dict[str, Any]) -> ArchSpec | None:
    try:
        return ArchSpec.from_sample(sample)
    except SpecError:
        return None


def repair_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A valid sample near an invalid one (for strategies that cannot honour constraints, like TPE).

    LG-DSM on a conv stage becomes L-DSM; an attention stage whose width the head dim does not
    divide becomes MBConv; a strided attention block on an indivisible input width becomes L-DSM.
    """
    out = dict(sample)
    hd = out["head_dim"]
    for i in range(NUM_STAGES):
        op, dsm = stage_key(i, "op"), stage_key(i, "dsm")
        cin = out["stem_width"] if i == 0 else out[stage_key(i - 1, "width")]
        if is_attention_op(out[op]) and out[stage_key(i, "width")] % hd:
            out[op] = "mbconv"
        if out[dsm] == "local_global" and not is_attention_op(out[op]):
            out[dsm] = "local"
        if is_attention_op(out[op]) and out[dsm] == "block" and cin % hd:
            out[dsm] = "local"
    return out


def get_space(name: str) -> SpaceConfig:
    """A registered search space (built-in ``unified`` or a plugin's), from the process-wide registry."""
    from metanet.plugin.manager import registry
    try:
        return registry().space(name)
    except UnknownName as exc:
        raise UnknownName(str(exc), param="space") from None


def _stage_valid(op, dsm, width, cin, head_dim) -> bool:
    attention = is_attention_op(op)
    if dsm == "local_global" and not attention:
        return False
    if attention:
        if width % head_dim:
            return False
        if dsm == "block" and cin % head_dim:
            return False
    return True


def _stage_options(space: SpaceConfig, i: int, cin: int, head_dim: int):
    """Valid (op, dsm, width, expand) of stage i for a given input width and head_dim."""
    for op in space.op[i]:
        for dsm in space.dsm[i]:
            for width in space.width[i]:
                if not _stage_valid(op, dsm, width, cin, head_dim):
                    continue
                for e in space.expand[i]:
                    yield op, dsm, width, e


@lru_cache(maxsize=32)
def _flops_range(space: SpaceConfig, resolution: int, num_classes: int) -> tuple[int, int]:
    grids = stage_grids(resolution)
    hw_stem = grids[0][0] * grids[0][1]
    best_lo, best_hi = math.inf, -math.inf
    for head_dim in space.head_dim:
        # DP over stages; state = the previous stage's width (the next stage's input).
        lo: dict[int, float] = {}
        hi: dict[int, float] = {}
        for stem in space.stem_width:
            c = 3 * stem * 9 * hw_stem + 2 * stem * hw_stem
            lo[stem] = min(lo.get(stem, math.inf), c)
            hi[stem] = max(hi.get(stem, -math.inf), c)
        for i in range(NUM_STAGES):
            nlo: dict[int, float] = {}
            nhi: dict[int, float] = {}
            for cin in lo:
                for op, dsm, width, e in _stage_options(space, i, cin, head_dim):
                    dmin, dmax = space.depth[i][0], space.depth[i][-1]
                    fmin = stage_cost(i, StageSpec(op, dmin, width, e, dsm), cin, head_dim, grids, grids).flops
                    fmax = stage_cost(i, StageSpec(op, dmax, width, e, dsm), cin, head_dim, grids, grids).flops
                    nlo[width] = min(nlo.get(width, math.inf), lo[cin] + fmin)
                    nhi[width] = max(nhi.get(width, -math.inf), hi[cin] + fmax)
            lo, hi = nlo, nhi
        hw = grids[-1][0] * grids[-1][1]
        for w in lo:
            head = head_cost(w, hw, num_classes).flops
            best_lo = min(best_lo, lo[w] + head)
            best_hi = max(best_hi, hi[w] + head)
    return int(best_lo), int(best_hi)


@lru_cache(maxsize=8)
def _valid_size(space: SpaceConfig) -> int:
    total = 0
    for head_dim in space.head_dim:
        counts = {stem: 1 for stem in space.stem_width}
        for i in range(NUM_STAGES):
            nxt: dict[int, int] = {}
            for cin, n in counts.items():
                for _op, _dsm, width, _e in _stage_options(space, i, cin, head_dim):
                    nxt[width] = nxt.get(width, 0) + n * len(space.depth[i])
            counts = nxt
        total += sum(counts.values())
    return total


# -- sampling within a FLOP budget ------------------------------------------------

def _neighbours(space: SpaceConfig, sample: dict[str, Any], label: str):
    """One step along a numeric choice, or any other value of a categorical one."""
    values = space.choices()[label]
    if label.endswith(("_op", "_dsm")):
        return [v for v in values if v != sample[label]]
    idx = values.index(sample[label])
    return [values[j] for j in (idx - 1, idx + 1) if 0 <= j < len(values)]


def _check_reachable(space, budget, band, resolution, num_classes):
    lo_b, hi_b = band[0] * budget, band[1] * budget
    s_lo, s_hi = space.flops_range(resolution, num_classes)
    if hi_b < s_lo or lo_b > s_hi:
        raise ConfigError(f"budget {format_flops(budget)} (band {format_flops(lo_b)}-{format_flops(hi_b)}) is outside "
                         f"what space '{space.name}' reaches at {resolution}px: {format_flops(s_lo)} to "
                         f"{format_flops(s_hi)} FLOPs", param="flops")
    return lo_b, hi_b


def _walk(space: SpaceConfig, spec: ArchSpec, lo_b: float, hi_b: float, rng: random.Random, resolution: int,
          num_classes: int, max_steps: int) -> tuple[ArchSpec, float, int]:
    """Greedy random walk from ``spec`` toward the band; returns (spec, distance, steps used)."""
    def distance(s: ArchSpec) -> float:
        f = estimate(s, resolution, num_classes).flops
        return 0.0 if lo_b <= f <= hi_b else (math.log(lo_b / f) if f < lo_b else math.log(f / hi_b))

    labels = [label for label in space.choices() if label != "head_dim"]
    d, steps, stalled = distance(spec), 0, 0
    while d > 0 and stalled < 200 and steps < max_steps:
        steps += 1
        sample = spec.to_sample()
        label = rng.choice(labels)
        moves = _neighbours(space, sample, label)
        rng.shuffle(moves)
        improved = False
        for value in moves:
            cand = try_spec({**sample, label: value})
            if cand is None:
                continue
            cd = distance(cand)
            if cd < d:
                spec, d, improved = cand, cd, True
                break
        stalled = 0 if improved else stalled + 1
    return spec, d, steps


def project_to_budget(space: SpaceConfig, spec: ArchSpec, budget: float, band: tuple[float, float] = (0.9, 1.0),
                      resolution: int = 224, num_classes: int = 1000, seed: int = 0,
                      max_steps: int = 2000) -> ArchSpec | None:
    """The architecture in the FLOP band reached from ``spec`` by a seeded walk, or None.

    Deterministic for a given spec and seed, so a strategy's proposal always maps to the same
    in-budget architecture; a spec already in the band is returned unchanged.
    """
    lo_b, hi_b = _check_reachable(space, budget, band, resolution, num_classes)
    rng = random.Random(f"{seed}:{spec.to_json(indent=None)}")
    out, d, _ = _walk(space, spec, lo_b, hi_b, rng, resolution, num_classes, max_steps)
    return out if d == 0 else None


def sample_within_budget(space: SpaceConfig, budget: float, rng: random.Random, band: tuple[float, float] = (0.9, 1.0),
                         resolution: int = 224, num_classes: int = 1000, max_steps: int = 4000) -> ArchSpec:
    """A random architecture whose FLOPs lie in ``[band[0] * budget, band[1] * budget]``.

    Draws random architectures, then walks from the closest one toward the band, one choice at a
    time (a step along a numeric list, or another operator / downsampling module); randomness in
    the start and in the step order keeps the result diverse. Raises ``ValueError`` if the band is
    outside the space.
    """
    lo_b, hi_b = _check_reachable(space, budget, band, resolution, num_classes)
    used = 0
    while used < max_steps:
        starts = [space.random_spec(rng) for _ in range(16)]
        start = min(starts, key=lambda s: abs(math.log(estimate(s, resolution, num_classes).flops / hi_b)))
        spec, d, steps = _walk(space, start, lo_b, hi_b, rng, resolution, num_classes, max_steps - used)
        used += max(steps, 1)
        if d == 0:
            return spec
    raise ConfigError(f"no architecture of space '{space.name}' found in band {format_flops(lo_b)}-{format_flops(hi_b)} "
                      f"after {max_steps} steps; widen the band", param="band")


__all__ = ["SpaceConfig", "DEFAULT_SPACE", "get_space", "sample_within_budget", "project_to_budget",
           "repair_sample", "try_spec"]
