"""A budget-centred space: a base network fitted to one FLOP budget, and per-stage relative choices.

How the space for a budget is derived (UniNet's and MnasNet's recipe, with the exact estimator):

1. **Reference.** UniNet-B1's layout (MBConv stages 0-3, attention stages 4-5, L-DSM / LG-DSM,
   depths 1,2,4,4,4,8, widths 24,48,80,128,128,256, expansions 1,4,6,3,2,5) is compound-scaled
   (depth x 1.2^phi, width x 1.1^phi, EfficientNet's coefficients) until its FLOPs sit at the centre
   of the band. Its per-stage FLOPs are the stage targets.
2. **A base per stage and operator.** For every stage and every operator the space offers there,
   the depth and width (a multiple of the head dim for attention operators, of 8 otherwise) whose
   stage cost is nearest the stage target, at the reference expansion: self-attention at a
   high-resolution stage gets fewer and narrower blocks than MBConv, so a uniform choice of
   operator does not mean a uniform blow-up of FLOPs.
3. **Relative choices.** Per stage: operator, width multiplier (0.75-1.25 of the operator's base),
   depth delta (-1, 0, +1), expansion and downsampling module. A proposal is decoded into exactly
   one architecture (:meth:`BudgetSpace.decode`); nothing rewrites it.
4. **Pruning.** A forward/backward pass over the stages bounds the FLOPs reachable before and after
   every choice (exact costs from the analytic estimator); a choice value that no architecture in
   the band can contain (self-attention at stage 1 under a small budget, say) is removed up front.

A proposal outside the band is never built: the search screens it from its estimated FLOPs and
reports a penalty that grows with its distance from the band.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from metanet.budget import format_flops
from metanet.errors import ConfigError

from metanet.search_spaces.estimate import estimate, head_cost, stage_cost
from metanet.search_spaces.spec import FORMAT_VERSION, NUM_STAGES, ArchSpec, SpecError, StageSpec, is_attention_op, stage_grids, stage_key
from metanet.search_spaces.unified import SpaceConfig

WIDTH_MULTS = (0.875, 1.0, 1.125)
DEPTH_DELTAS = (-1, 0, 1)
EXPAND_STEPS = 1  # expansion choices: the reference's and its neighbours in the space's list
MIN_BASE_DEPTH = 3
FIT_TOLERANCE = 0.3  # an operator is offered at a stage only if some depth and width of it cost within e^0.3
RELATIVE_FIELDS = ("op_dsm", "width_mult", "depth_delta", "expand")


def pair(op: str, dsm: str) -> str:
    """The value of a stage's ``op_dsm`` choice: operator and downsampling module, chosen together."""
    return f"{op}/{dsm}"

# UniNet-B1 (Sense-X/UniNet): the reference the base is scaled from.
REF_OPS = ("mbconv",) * 4 + ("attention",) * 2
REF_DEPTHS = (1, 2, 4, 4, 4, 8)
REF_WIDTHS = (24, 48, 80, 128, 128, 256)
REF_EXPAND = (1, 4, 6, 3, 2, 5)
REF_DSM = ("block", "local", "local", "local", "local_global", "local_global")
REF_STEM = 32
DEPTH_COEF, WIDTH_COEF = 1.2, 1.1


def _round_to(value: float, q: int) -> int:
    return max(q, int(round(value / q)) * q)


@dataclass(frozen=True)
class BudgetSpace:
    """The relative choices of one budget; decodes a proposal into the architecture it stands for."""

    config: SpaceConfig
    budget: int
    band: tuple[float, float]
    resolution: int
    stem_width: int
    head_dim: int
    bases: tuple[dict[tuple[str, str], tuple[int, int]], ...]  # per stage: (op, dsm) -> (depth, width)
    choice_lists: tuple[tuple[str, tuple], ...]     # (label, values) in order, after pruning
    pruned: tuple[tuple[str, Any], ...] = ()        # (label, value) removed as unable to reach the band
    num_classes: int = 1000
    _cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    def __getstate__(self):
        # NNI ships the model space to trial processes in a small payload: never the FLOP cache
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state):
        self.__dict__.update(state, _cache={})

    @property
    def name(self) -> str:
        return f"{self.config.name}@{format_flops(self.budget)}"

    @property
    def lo(self) -> float:
        return self.band[0] * self.budget

    @property
    def hi(self) -> float:
        return self.band[1] * self.budget

    def choices(self) -> dict[str, list[Any]]:
        return {label: list(values) for label, values in self.choice_lists}

    def width(self, i: int, op: str, dsm: str, mult: float) -> int:
        _, width = self.bases[i][(op, dsm)]
        return _round_to(width * mult, self.head_dim if is_attention_op(op) else 8)

    def decode(self, sample: dict[str, Any]) -> ArchSpec:
        """The architecture a proposal stands for (raises SpecError if it is not buildable)."""
        data: dict[str, Any] = {"version": FORMAT_VERSION, "stem_width": self.stem_width, "head_dim": self.head_dim}
        for i in range(NUM_STAGES):
            op, _, dsm = str(sample[stage_key(i, "op_dsm")]).partition("/")
            if (op, dsm) not in self.bases[i]:
                raise SpecError(f"{stage_key(i, 'op_dsm')}: {sample[stage_key(i, 'op_dsm')]!r} is not a choice "
                                f"of {self.name}")
            depth, _ = self.bases[i][(op, dsm)]
            data[stage_key(i, "op")] = op
            data[stage_key(i, "depth")] = max(1, depth + int(sample[stage_key(i, "depth_delta")]))
            data[stage_key(i, "width")] = self.width(i, op, dsm, float(sample[stage_key(i, "width_mult")]))
            data[stage_key(i, "expand")] = sample[stage_key(i, "expand")]
            data[stage_key(i, "dsm")] = dsm
        return ArchSpec.from_dict(data, source="proposal")

    def flops(self, spec: ArchSpec) -> int:
        key = spec.to_json(indent=None)
        if key not in self._cache:
            self._cache[key] = estimate(spec, self.resolution, self.num_classes).flops
        return self._cache[key]

    def distance(self, flops: float) -> float:
        """0 inside the band, else |ln| of the ratio to the nearest edge (the screening penalty)."""
        if flops < self.lo:
            return math.log(self.lo / flops)
        if flops > self.hi:
            return math.log(flops / self.hi)
        return 0.0

    def random_sample(self, rng: random.Random) -> dict[str, Any]:
        return {label: rng.choice(values) for label, values in self.choice_lists}

    def base_sample(self) -> dict[str, Any]:
        """The space's own base: UniNet-B1's layout compound-scaled to the budget (its operators and
        downsampling modules where the space still offers them, widths x1, depths +0, its expansions), the
        hand-designed network a search has to beat."""
        choices, out = self.choices(), {}
        for i in range(NUM_STAGES):
            ops = choices[stage_key(i, "op_dsm")]
            ref = pair(REF_OPS[i], REF_DSM[i])
            same_op = [o for o in ops if o.startswith(REF_OPS[i] + "/")]
            out[stage_key(i, "op_dsm")] = ref if ref in ops else (same_op or ops)[0]
            out[stage_key(i, "width_mult")] = 1.0 if 1.0 in choices[stage_key(i, "width_mult")] else \
                choices[stage_key(i, "width_mult")][len(choices[stage_key(i, "width_mult")]) // 2]
            out[stage_key(i, "depth_delta")] = 0 if 0 in choices[stage_key(i, "depth_delta")] else \
                choices[stage_key(i, "depth_delta")][0]
            expands = choices[stage_key(i, "expand")]
            out[stage_key(i, "expand")] = REF_EXPAND[i] if REF_EXPAND[i] in expands else expands[len(expands) // 2]
        return out

    def in_band_share(self, n: int = 2000, seed: int = 0) -> dict[str, float]:
        """Of ``n`` uniform proposals: the share that is buildable, and the share in the band as proposed."""
        rng = random.Random(seed)
        valid = inside = 0
        for _ in range(n):
            try:
                spec = self.decode(self.random_sample(rng))
            except SpecError:
                continue
            valid += 1
            inside += self.distance(self.flops(spec)) == 0
        return {"proposals": n, "valid": valid / n, "in_band": inside / n}

    def median_flops(self, n: int = 400, seed: int = 0) -> float | None:
        rng = random.Random(seed)
        flops = []
        for _ in range(n):
            try:
                flops.append(self.flops(self.decode(self.random_sample(rng))))
            except SpecError:
                continue
        return sorted(flops)[len(flops) // 2] if flops else None

    def describe(self) -> dict[str, Any]:
        return {"space": self.name, "budget": self.budget, "band": list(self.band), "resolution": self.resolution,
                "stem_width": self.stem_width, "head_dim": self.head_dim,
                "bases": [{f"{op}/{dsm}": {"depth": d, "width": w} for (op, dsm), (d, w) in b.items()}
                          for b in self.bases],
                "choices": self.choices(), "pruned": [list(p) for p in self.pruned]}


def _scaled_reference(phi: float, head_dim: int, stem: int) -> list[tuple[int, int]]:
    out = []
    for i in range(NUM_STAGES):
        q = head_dim if REF_OPS[i] == "attention" else 8
        out.append((max(1, int(round(REF_DEPTHS[i] * DEPTH_COEF ** phi))),
                    _round_to(REF_WIDTHS[i] * WIDTH_COEF ** phi, q)))
    return out


def _expand_for(config: SpaceConfig, i: int):
    values = config.expand[i]
    return REF_EXPAND[i] if REF_EXPAND[i] in values else values[len(values) // 2]


def _dsm_for(config: SpaceConfig, i: int, op: str) -> str:
    allowed = [d for d in config.dsm[i] if d != "local_global" or is_attention_op(op)]
    return REF_DSM[i] if REF_DSM[i] in allowed else allowed[0]


def _reference_flops(layout, config, head_dim, stem, grids, num_classes) -> tuple[int, list[int]]:
    hw = grids[0][0] * grids[0][1]
    total = 3 * stem * 9 * hw + 2 * stem * hw
    cin, parts = stem, []
    for i, (depth, width) in enumerate(layout):
        op = REF_OPS[i] if REF_OPS[i] in config.op[i] else config.op[i][0]
        st = StageSpec(op, depth, width, _expand_for(config, i), _dsm_for(config, i, op))
        parts.append(stage_cost(i, st, cin, head_dim, grids, grids).flops)
        cin = width
    total += sum(parts) + head_cost(cin, grids[-1][0] * grids[-1][1], num_classes).flops
    return total, parts


def _fit_stage(config, i, op, dsm, target, depth_ref, width_ref, cin, head_dim, grids) -> tuple[int, int] | None:
    """Depth and width of ``op`` with ``dsm`` at stage ``i`` whose cost is nearest ``target`` (near the reference)."""
    q = head_dim if is_attention_op(op) else 8
    e = _expand_for(config, i)
    if (dsm == "local_global") != is_attention_op(op) and dsm != "local":
        # LG-DSM needs attention; attention stages downsample with L-DSM or LG-DSM (UniNet), so that
        # every proposal is buildable whatever the previous stage's width
        return None
    best, best_key, miss = None, math.inf, math.inf
    top = max(q, 3 * width_ref) // q  # widths q, 2q, ... top*q; the stage cost grows with the width
    # Stage 0 holds ~2% of the FLOPs: it keeps the reference depth, so that the width does not shrink to 8.
    low = 1 if i == 0 else MIN_BASE_DEPTH
    depth_hi = max(low, 2 * depth_ref)
    depths = sorted({int(round(low * (depth_hi / low) ** (k / 11))) for k in range(12)})

    def cost(depth, k):
        return stage_cost(i, StageSpec(op, depth, k * q, e, dsm), cin, head_dim, grids, grids).flops

    for depth in depths:  # bases are at least MIN_BASE_DEPTH deep: a depth delta of one is never a doubling
        lo, hi = 1, top
        while lo < hi:  # the smallest width whose cost reaches the target, and the one below it
            mid = (lo + hi) // 2
            if cost(depth, mid) < target:
                lo = mid + 1
            else:
                hi = mid
        for k in {max(1, lo - 1), lo}:
            c = cost(depth, k)
            key = abs(math.log(max(c, 1) / target)) + 0.15 * abs(math.log(depth / max(depth_ref, low))) \
                + 0.05 * abs(math.log(k * q / width_ref))
            if key < best_key:
                best, best_key, miss = (depth, k * q), key, abs(math.log(max(c, 1) / target))
    return best if miss <= FIT_TOLERANCE else None


def _stage_options(space: BudgetSpace, i: int, cin: int):
    """Every buildable choice of stage ``i`` from input width ``cin``: (values, cost, output width)."""
    grids = stage_grids(space.resolution)
    choices = space.choices()
    for value in choices[stage_key(i, "op_dsm")]:
        op, _, dsm = value.partition("/")
        depth0, _ = space.bases[i][(op, dsm)]
        for mult in choices[stage_key(i, "width_mult")]:
            width = space.width(i, op, dsm, mult)
            for e in choices[stage_key(i, "expand")]:
                # the cost is linear in depth past the first block: two evaluations cover all deltas
                c1 = stage_cost(i, StageSpec(op, 1, width, e, dsm), cin, space.head_dim, grids, grids).flops
                c2 = stage_cost(i, StageSpec(op, 2, width, e, dsm), cin, space.head_dim, grids, grids).flops
                for delta in choices[stage_key(i, "depth_delta")]:
                    depth = max(1, depth0 + delta)
                    yield (value, mult, delta, e), c1 + (depth - 1) * (c2 - c1), width


def _prune(space: BudgetSpace) -> tuple[dict[str, list], list[tuple[str, Any]]]:
    """Remove choice values no in-band architecture can hold: bounds before and after each stage."""
    grids = stage_grids(space.resolution)
    hw = grids[0][0] * grids[0][1]
    stem = 3 * space.stem_width * 9 * hw + 2 * space.stem_width * hw
    options = []  # per stage: {cin: [(values, cost, width)]}
    prefix = [{space.stem_width: (stem, stem)}]
    for i in range(NUM_STAGES):
        per_cin, nxt = {}, {}
        for cin, (lo, hi) in prefix[i].items():
            per_cin[cin] = list(_stage_options(space, i, cin))
            for _, cost, width in per_cin[cin]:
                a, b = nxt.get(width, (math.inf, -math.inf))
                nxt[width] = (min(a, lo + cost), max(b, hi + cost))
        options.append(per_cin)
        prefix.append(nxt)
    hw_last = grids[-1][0] * grids[-1][1]
    suffix = [dict() for _ in range(NUM_STAGES + 1)]
    suffix[NUM_STAGES] = {w: (head_cost(w, hw_last, space.num_classes).flops,) * 2 for w in prefix[NUM_STAGES]}
    for i in reversed(range(NUM_STAGES)):
        for cin, opts in options[i].items():
            lo = min(cost + suffix[i + 1][w][0] for _, cost, w in opts)
            hi = max(cost + suffix[i + 1][w][1] for _, cost, w in opts)
            suffix[i][cin] = (lo, hi)
    keep: dict[str, set] = {label: set() for label, _ in space.choice_lists if label[0] == "s"}
    for i in range(NUM_STAGES):
        for cin, opts in options[i].items():
            pre = prefix[i][cin]
            for values, cost, w in opts:
                if pre[0] + cost + suffix[i + 1][w][0] <= space.hi and pre[1] + cost + suffix[i + 1][w][1] >= space.lo:
                    for f, v in zip(RELATIVE_FIELDS, values):
                        keep[stage_key(i, f)].add(v)
    kept, pruned = {}, []
    for label, values in space.choice_lists:
        if label not in keep:
            kept[label] = list(values)
            continue
        kept[label] = [v for v in values if v in keep[label]]
        pruned.extend((label, v) for v in values if v not in keep[label])
        if not kept[label]:
            raise ConfigError(f"flops: no architecture of space '{space.config.name}' reaches the band "
                              f"{format_flops(space.lo)}-{format_flops(space.hi)} at {space.resolution}px")
    return kept, pruned


def budget_space(config: SpaceConfig, budget: int, band: tuple[float, float] = (0.9, 1.0), resolution: int = 224,
                 num_classes: int = 1000) -> BudgetSpace:
    """The budget-centred space of ``config`` for ``budget`` at ``resolution`` (derived once per process)."""
    return _budget_space(config, int(budget), (float(band[0]), float(band[1])), int(resolution), int(num_classes))


@lru_cache(maxsize=32)
def _budget_space(config: SpaceConfig, budget: int, band: tuple[float, float], resolution: int,
                  num_classes: int) -> BudgetSpace:
    grids = stage_grids(resolution)
    head_dim = 32 if 32 in config.head_dim else config.head_dim[0]
    stem = min(config.stem_width, key=lambda s: abs(s - REF_STEM))
    centre = budget * (band[0] + band[1]) / 2
    # compound scaling: FLOPs grow monotonically with phi up to rounding; bisect, then look around
    lo, hi = -12.0, 12.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if _reference_flops(_scaled_reference(mid, head_dim, stem), config, head_dim, stem, grids,
                            num_classes)[0] < centre:
            lo = mid
        else:
            hi = mid
    candidates = [lo + k * 0.05 for k in range(-6, 7)]
    phi = min(candidates, key=lambda p: abs(math.log(_reference_flops(
        _scaled_reference(p, head_dim, stem), config, head_dim, stem, grids, num_classes)[0] / centre)))
    layout = _scaled_reference(phi, head_dim, stem)
    _, targets = _reference_flops(layout, config, head_dim, stem, grids, num_classes)
    space = None
    scale = 1.0
    for _ in range(3):  # recentre: the median uniform proposal, not the reference, sits at the band centre
        space = _assemble(config, budget, band, resolution, num_classes, stem, head_dim, layout,
                          [t * scale for t in targets], grids)
        median = space.median_flops()
        if median is None or abs(math.log(median / centre)) < 0.02:
            break
        scale *= centre / median
    # the band is narrow and the distribution skewed: settle the centre where most proposals land in it
    best = (space.in_band_share(600, seed=1)["in_band"], space)
    for k in (0.94, 0.97, 1.03, 1.06):
        other = _assemble(config, budget, band, resolution, num_classes, stem, head_dim, layout,
                          [t * scale * k for t in targets], grids)
        share = other.in_band_share(600, seed=1)["in_band"]
        if share > best[0]:
            best = (share, other)
    return best[1]


def _assemble(config, budget, band, resolution, num_classes, stem, head_dim, layout, targets, grids) -> BudgetSpace:
    bases, unfit = [], []
    for i in range(NUM_STAGES):
        cin = stem if i == 0 else layout[i - 1][1]
        fitted = {(op, dsm): _fit_stage(config, i, op, dsm, targets[i], layout[i][0], layout[i][1], cin, head_dim,
                                        grids) for op in config.op[i] for dsm in config.dsm[i]}
        bases.append({key: base for key, base in fitted.items() if base is not None})
        unfit += [(stage_key(i, "op_dsm"), pair(op, dsm)) for (op, dsm), base in fitted.items()
                  if base is None and ((dsm == "local_global") == is_attention_op(op) or dsm == "local")]
    choice_lists = []
    for i in range(NUM_STAGES):
        ladder = list(config.expand[i])
        at = ladder.index(_expand_for(config, i))
        expands = tuple(ladder[max(0, at - EXPAND_STEPS): at + EXPAND_STEPS + 1])
        pairs = tuple(pair(op, dsm) for op in config.op[i] for dsm in config.dsm[i] if (op, dsm) in bases[i])
        choice_lists += [(stage_key(i, "op_dsm"), pairs), (stage_key(i, "width_mult"), WIDTH_MULTS),
                         (stage_key(i, "depth_delta"), DEPTH_DELTAS), (stage_key(i, "expand"), expands)]
        if not pairs:
            raise ConfigError(f"flops: no operator of space '{config.name}' fits stage {i} under "
                              f"{format_flops(budget)} at {resolution}px")
    space = BudgetSpace(config, int(budget), tuple(band), resolution, stem, head_dim, tuple(bases),
                        tuple(choice_lists), num_classes=num_classes)
    kept, pruned = _prune(space)
    return BudgetSpace(config, int(budget), tuple(band), resolution, stem, head_dim, tuple(bases),
                       tuple((label, tuple(v)) for label, v in kept.items()),
                       tuple(unfit) + tuple(pruned), num_classes=num_classes)


__all__ = ["BudgetSpace", "budget_space", "WIDTH_MULTS", "DEPTH_DELTAS", "RELATIVE_FIELDS"]
