"""Analytic FLOPs and parameters of a spec, without building the model.

Each formula mirrors one operator of ``operators.py`` under the counter's convention
(``metanet.search_spaces.counter``): convolutions cout*cin/groups*k*k per output pixel, linear layers in*out per
token, batch norm 2 and layer norm 5 per element, pooling/mean 1 per input element, attention
Nq*Nk*(Dq + Dv) per head; biases, activations, max-pool and additions are free. A search screens
thousands of candidates with this; tests hold it within 1% of the counter.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from metanet.search_spaces.spec import HEAD_WIDTH, STRIDES, ArchSpec, stage_grids


@dataclass
class Cost:
    flops: int = 0
    params: int = 0

    def __iadd__(self, other: "Cost") -> "Cost":
        self.flops += other.flops
        self.params += other.params
        return self

    def __mul__(self, n: int) -> "Cost":
        return Cost(self.flops * n, self.params * n)


@dataclass
class Estimate:
    flops: int
    params: int
    parts: dict[str, Cost] = field(default_factory=dict)  # stem, s0..s5, head


def _conv(cin, cout, k, hw_out, groups=1, bias=True) -> Cost:
    w = cout * (cin // groups) * k * k
    return Cost(w * hw_out, w + (cout if bias else 0))


def _bn(c, hw) -> Cost:
    return Cost(2 * c * hw, 2 * c)


def _ln(c, n) -> Cost:
    return Cost(5 * c * n, 2 * c)


def _linear(cin, cout, n, bias=True) -> Cost:
    return Cost(cin * cout * n, cin * cout + (cout if bias else 0))


def _se(c, hw) -> Cost:
    r = _se_channels(c)
    return Cost(c * hw + 2 * c * r, 2 * c * r + r + c)


def _se_channels(c):
    v = c // 4
    new = max(8, int(v + 4) // 8 * 8)
    return new + 8 if new < 0.9 * v else new


def _mbconv(cin, cout, stride, e, hw_in, hw_out) -> Cost:
    hidden = int(cin * e)
    c = Cost()
    if cin != cout or stride != 1:
        c += _conv(cin, cout, 1, hw_out)
    if cin != hidden or stride != 1:
        c += _bn(cin, hw_in)
        c += _conv(cin, hidden, 1, hw_in, bias=False)
        c += _bn(hidden, hw_in)
    c += _conv(hidden, hidden, 3, hw_out, groups=hidden, bias=False)
    c += _bn(hidden, hw_out)
    c += _se(hidden, hw_out)
    c += _conv(hidden, cout, 1, hw_out)
    c += _bn(cout, hw_out)
    return c


def _fused_mbconv(cin, cout, stride, e, hw_in, hw_out) -> Cost:
    hidden = int(cin * e)
    c = Cost()
    if cin != cout or stride != 1:
        c += _conv(cin, cout, 1, hw_out)
    if cin != hidden:
        c += _bn(cin, hw_in)
        c += _conv(cin, hidden, 3, hw_out, bias=False)
        c += _bn(hidden, hw_out)
        c += _se(hidden, hw_out)
        c += _conv(hidden, cout, 1, hw_out)
    else:
        c += _se(hidden, hw_in)
        c += _conv(hidden, cout, 3, hw_out)
    c += _bn(cout, hw_out)
    return c


def _attention_core(mixer, dim, head_dim, n) -> int:
    if mixer == "xca":
        return 2 * dim * head_dim * n  # per head a (d x d) map over n tokens
    return 2 * n * n * dim


def _transformer(op, cin, cout, stride, e, head_dim, hw_in, hw_out, grid) -> Cost:
    mixer = "xca" if op == "xca" else "attention"
    heads = cin // head_dim
    c = Cost()
    if op == "attention_rpb":
        gh, gw = grid
        c.params += heads * (2 * gh - 1) * (2 * gw - 1)
    else:
        c += _conv(cin, cin, 3, hw_in, groups=cin)
    if mixer == "xca":
        c.params += heads
    c += _ln(cin, hw_in)
    reduce = stride != 1 or cin != cout
    n = hw_out if reduce else hw_in
    c += _linear(cin, 3 * cin, n)
    c.flops += _attention_core(mixer, cin, head_dim, n)
    c += _linear(cin, cout, n)
    c.params += cout  # layer scale
    if reduce:
        c += _conv(cin, cout, 1, hw_out)
    else:
        hidden = int(cin * e)
        c += _ln(cin, n)
        c += _linear(cin, hidden, n)
        c += _linear(hidden, cin, n)
        c.params += cout
    return c


def _local_dsm(cin, cout, hw_out) -> Cost:
    c = _conv(cin, cout, 1, hw_out)
    c += _conv(cin, cin, 3, hw_out, groups=cin)
    c += _bn(cin, hw_out)
    c += _conv(cin, cout, 1, hw_out)
    return c


def _local_global_dsm(cin, cout, hw_in, hw_out) -> Cost:
    c = _local_dsm(cin, cout, hw_out)
    c += _ln(cout, hw_out)
    c += _ln(cin, hw_in)
    c += _linear(cin, 2 * cout, hw_in)
    c.flops += 2 * cout * hw_out * hw_in
    c += _linear(cout, cout, hw_out)
    return c


# -- the built-in operators' formulas, in the signature every operator's cost has ------------------
# cost(cin, cout, stride, expand, head_dim, hw_in=, hw_out=, grid=); registered by metanet.plugins.operators.

def mbconv_cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> Cost:
    return _mbconv(cin, cout, stride, expand, hw_in, hw_out)


def fused_mbconv_cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> Cost:
    return _fused_mbconv(cin, cout, stride, expand, hw_in, hw_out)


def attention_cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> Cost:
    return _transformer("attention", cin, cout, stride, expand, head_dim, hw_in, hw_out, grid)


def attention_rpb_cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> Cost:
    return _transformer("attention_rpb", cin, cout, stride, expand, head_dim, hw_in, hw_out, grid)


def xca_cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> Cost:
    return _transformer("xca", cin, cout, stride, expand, head_dim, hw_in, hw_out, grid)


_COUNTED: dict[tuple, Cost] = {}


def block_cost(op, cin, cout, stride, expand, head_dim, hw_in, hw_out, grid) -> Cost:
    """Cost of one block of the registered operator ``op``: its ``cost`` formula, or, for an operator registered
    without one, a built block counted with fvcore (once per operator and shape in a process, and kept for later
    commands in ``$METANET_CACHE_DIR`` when set: :mod:`metanet.search_spaces.op_cost_cache`)."""
    import math

    from metanet.plugin.manager import registry
    operator = registry().operator(op)
    if operator.cost_formula is not None:
        return Cost(*operator.cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid))
    key = (op, operator.plugin, cin, cout, stride, expand, head_dim, hw_in, tuple(grid))
    if key not in _COUNTED:
        from metanet.search_spaces.op_cost_cache import cache_for, shape_key
        cache, skey = cache_for(operator.plugin), shape_key(op, cin, cout, stride, expand, head_dim, hw_in, grid)
        stored = cache.get(skey)
        if stored is not None:
            _COUNTED[key] = Cost(*stored)
        else:
            from metanet.search_spaces.counter import count_flops, count_params
            from metanet.search_spaces.memory import FLOAT_BYTES, format_bytes, machine_memory
            limit = machine_memory()
            if limit and FLOAT_BYTES * cin * hw_in * max(1.0, expand) > limit:  # the block must run to be counted
                from metanet.errors import ConfigError
                raise ConfigError(f"resolution: operator {op!r} has no cost formula and is counted by running a "
                                  f"block; at this resolution its input alone ({cin} x {hw_in:,} values) needs "
                                  f"{format_bytes(FLOAT_BYTES * cin * hw_in)}, more than this machine's "
                                  f"{format_bytes(limit)}")
            side = math.isqrt(hw_in)
            block = operator.build(cin, cout, stride, expand, head_dim, 0.0, grid)
            _COUNTED[key] = Cost(count_flops(block, (side, side), in_chans=cin).total, count_params(block))
            cache.put(skey, _COUNTED[key].flops, _COUNTED[key].params)
    return _COUNTED[key]


_DSM_COST = {"local": lambda cin, cout, hw_in, hw_out: _local_dsm(cin, cout, hw_out),
             "local_global": _local_global_dsm}


def stage_cost(i: int, st, cin: int, head_dim: int, grids, build_grids) -> Cost:
    """Cost of stage ``i`` (its downsampling module and blocks) given its input width."""
    hw = grids[i][0] * grids[i][1]
    hw_out = grids[i + 1][0] * grids[i + 1][1]
    stride = STRIDES[i]
    c = Cost()
    depth = st.depth
    if st.dsm != "block":  # a downsampling module takes stride and width change off the first block
        c += _DSM_COST[st.dsm](cin, st.width, hw, hw_out)
        cin, stride, hw = st.width, 1, hw_out
    if stride != 1 or cin != st.width:
        c += block_cost(st.op, cin, st.width, stride, st.expand, head_dim, hw, hw_out, build_grids[i + 1])
        depth -= 1
    if depth:
        c += block_cost(st.op, st.width, st.width, 1, st.expand, head_dim, hw_out, hw_out, build_grids[i + 1]) * depth
    return c


def head_cost(cin: int, hw: int, num_classes: int) -> Cost:
    head = _conv(cin, HEAD_WIDTH, 1, hw, bias=False)
    head += _bn(HEAD_WIDTH, hw)
    head.flops += HEAD_WIDTH * hw  # global average pool
    if num_classes > 0:
        head += _linear(HEAD_WIDTH, num_classes, 1)
    return head


def estimate(spec: ArchSpec, resolution: int | tuple[int, int] = 224, num_classes: int = 1000,
             img_size: int | tuple[int, int] | None = None, in_chans: int = 3) -> Estimate:
    """FLOPs (MACs) and parameters of ``spec`` at ``resolution``.

    ``img_size`` is the resolution the model is built for (it sizes relative-position tables);
    it defaults to ``resolution``.
    """
    grids = stage_grids(resolution)
    build_grids = stage_grids(img_size if img_size is not None else resolution)
    hw = grids[0][0] * grids[0][1]
    stem = _conv(in_chans, spec.stem_width, 3, hw, bias=False)
    stem += _bn(spec.stem_width, hw)
    parts: dict[str, Cost] = {"stem": stem}
    cin = spec.stem_width
    for i, st in enumerate(spec.stages):
        parts[f"s{i}"] = stage_cost(i, st, cin, spec.head_dim, grids, build_grids)
        cin = st.width
    parts["head"] = head_cost(cin, grids[-1][0] * grids[-1][1], num_classes)
    return Estimate(sum(p.flops for p in parts.values()), sum(p.params for p in parts.values()), parts)
