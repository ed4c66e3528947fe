"""The architecture spec: a frozen, JSON-serialisable sample of the unified space.

A spec names every choice by its label (``stem_width``, ``head_dim``, ``s3_op`` ...),
the same labels the NNI model space uses, plus a format ``version``. Building a
model from a spec needs only torch and timm, never NNI.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Mapping

from metanet.errors import SpecError

FORMAT_VERSION = 1

# The MetaNet / UniNet skeleton: six stages after a stride-2 stem.
STRIDES = (1, 2, 2, 2, 1, 2)
NUM_STAGES = len(STRIDES)
HEAD_WIDTH = 1280

# The built-in operator names (registered by metanet.plugins.operators; the default space uses them).
CONV_OPS = ("mbconv", "fused_mbconv")
# attention: global MHSA + MLP with a 3x3 depthwise conv positional encoding (MetaNet SABlock,
# UniNet AttentionBlock); attention_rpb: the same block with a learned relative-position bias
# instead of the conv encoding; xca: cross-covariance attention (MetaNet-B15).
ATTENTION_OPS = ("attention", "attention_rpb", "xca")
OPS = CONV_OPS + ATTENTION_OPS
# block: the first block of the stage carries stride and width change (MetaNet);
# local: L-DSM (UniNet); local_global: LG-DSM, attention stages only (UniNet).
DSMS = ("block", "local", "local_global")

STAGE_FIELDS = ("op", "depth", "width", "expand", "dsm")
GLOBAL_FIELDS = ("stem_width", "head_dim")


def known_ops() -> tuple[str, ...]:
    """Every registered operator (built-in and plugins'), from the process-wide registry."""
    from metanet.plugin.manager import registry
    return tuple(registry().names("operators"))


def is_attention_op(op: str) -> bool:
    from metanet.plugin.manager import registry
    table = registry().registry["operators"]
    return op in table and table[op].attention


# Tokens per side below which attention, XCA, the relative-position bias and LG-DSM degenerate to
# near-linear maps: a proxy must keep every stage that may hold them at least this large to rank them.
MIN_ATTENTION_GRID = 2


def small_attention_grids(stage_choices, img_size) -> list[str]:
    """Stages that may hold attention (an attention operator or LG-DSM among ``stage_choices[i]``, a set
    of operator and downsampling names per stage) but see fewer than 2x2 tokens at ``img_size``."""
    grids = stage_grids(img_size)
    out = []
    for i, names in enumerate(stage_choices):
        attn = sorted(n for n in names if n == "local_global" or is_attention_op(n))
        h, w = grids[i + 1]
        if attn and min(h, w) < MIN_ATTENTION_GRID:
            out.append(f"s{i} ({h}x{w} tokens; {', '.join(attn)})")
    return out


def stage_key(index: int, field: str) -> str:
    return f"s{index}_{field}"


def spec_keys() -> tuple[str, ...]:
    """Every label a spec holds, in a stable order (without ``version``)."""
    keys = list(GLOBAL_FIELDS)
    for i in range(NUM_STAGES):
        keys.extend(stage_key(i, f) for f in STAGE_FIELDS)
    return tuple(keys)


@dataclass(frozen=True)
class StageSpec:
    op: str
    depth: int
    width: int
    expand: float
    dsm: str

    @property
    def is_attention(self) -> bool:
        return is_attention_op(self.op)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture of the unified space. Create with :meth:`from_dict` to validate."""

    stem_width: int
    head_dim: int
    stages: tuple[StageSpec, ...]
    version: int = FORMAT_VERSION

    def __post_init__(self):
        problem = _structural_problem(self)
        if problem is not None:
            raise SpecError(problem)

    # -- conversions --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"version": self.version, "stem_width": self.stem_width, "head_dim": self.head_dim}
        for i, st in enumerate(self.stages):
            for f in STAGE_FIELDS:
                value = getattr(st, f)
                if f == "expand" and float(value).is_integer():
                    value = int(value)
                out[stage_key(i, f)] = value
        return out

    def to_sample(self) -> dict[str, Any]:
        """The NNI sample for this spec (the labels, no version)."""
        d = self.to_dict()
        d.pop("version")
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str, *, source: str = "spec") -> "ArchSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:
            raise SpecError(f"{source}: nested too deeply to be a spec") from None
        except ValueError as exc:  # an integer past Python's digit limit
            raise SpecError(f"{source}: not a usable spec ({str(exc).splitlines()[0].split(';')[0]})") from None
        return cls.from_dict(data, source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ArchSpec":
        try:
            if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe: it may never end
                raise SpecError(f"{path}: not a regular file; a spec is a JSON file")
            if os.path.getsize(path) > MAX_SPEC_BYTES:
                raise SpecError(f"{path}: {os.path.getsize(path):,} bytes is too large for a spec (a spec is "
                                "under 2 KB)")
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise SpecError(f"{path}: cannot read spec ({exc.strerror})") from None
        except UnicodeDecodeError as exc:
            raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); a spec is a JSON file") from None
        return cls.from_json(text, source=str(path))

    @classmethod
    def from_sample(cls, sample: Mapping[str, Any]) -> "ArchSpec":
        """Build from an NNI sample: keys outside the spec (e.g. NNI constraint labels) are ignored."""
        known = set(spec_keys())
        data = {k: v for k, v in sample.items() if k in known}
        data["version"] = FORMAT_VERSION
        return cls.from_dict(data, source="sample")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "spec") -> "ArchSpec":
        if not isinstance(data, Mapping):
            raise SpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        version = data.get("version")
        if version is None:
            raise SpecError(f"{source}: missing key 'version'")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise SpecError(f"{source}: version: unsupported spec version {version!r} (this metanet reads {FORMAT_VERSION})")
        expected = set(spec_keys())
        missing = [k for k in spec_keys() if k not in data]
        if missing:
            raise SpecError(f"{source}: missing key{'s' if len(missing) > 1 else ''} {', '.join(repr(k) for k in missing)}")
        extra = sorted(k for k in data if k not in expected and k != "version")
        if extra:
            raise SpecError(f"{source}: unknown key{'s' if len(extra) > 1 else ''} {', '.join(repr(k) for k in extra)}")
        stem = _positive_int(data, "stem_width", source, MAX_WIDTH)
        head_dim = _positive_int(data, "head_dim", source, MAX_WIDTH)
        stages = []
        for i in range(NUM_STAGES):
            op = _member(data, stage_key(i, "op"), known_ops(), source)
            depth = _positive_int(data, stage_key(i, "depth"), source, MAX_DEPTH)
            width = _positive_int(data, stage_key(i, "width"), source, MAX_WIDTH)
            expand = _positive_number(data, stage_key(i, "expand"), source, MAX_EXPAND)
            dsm = _member(data, stage_key(i, "dsm"), DSMS, source)
            stages.append(StageSpec(op, depth, width, expand, dsm))
        try:
            return cls(stem_width=stem, head_dim=head_dim, stages=tuple(stages), version=version)
        except SpecError as exc:
            raise SpecError(f"{source}: {exc}") from None

    # -- derived facts ------------------------------------------------------------
    def stage_in_width(self, index: int) -> int:
        return self.stem_width if index == 0 else self.stages[index - 1].width

    @property
    def ops(self) -> tuple[str, ...]:
        return tuple(s.op for s in self.stages)

    def describe(self) -> str:
        parts = [f"stem {self.stem_width}, head_dim {self.head_dim}"]
        for i, s in enumerate(self.stages):
            parts.append(f"s{i} {s.op}x{s.depth} w{s.width} e{s.expand:g} {s.dsm}")
        return "; ".join(parts)


def stage_grids(img_size: int | tuple[int, int]) -> list[tuple[int, int]]:
    """Feature-map size after the stem and after each stage for a given input size."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    h, w = math.ceil(h / 2), math.ceil(w / 2)
    grids = [(h, w)]
    for s in STRIDES:
        h, w = math.ceil(h / s), math.ceil(w / s)
        grids.append((h, w))
    return grids


MAX_SPEC_BYTES = 1 << 20

# Far above any released model (MN-B15, UniNet-B6) and any budget-centred space, low enough that a
# typo cannot make a build allocate without end: a spec is refused before anything is built.
MAX_DEPTH, MAX_WIDTH, MAX_EXPAND = 64, 8192, 32


def _positive_int(data, key, source, maximum=None):
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SpecError(f"{source}: {key}: expected a positive integer, got {value!r}")
    if value <= 0:
        raise SpecError(f"{source}: {key}: must be positive, got {value}")
    if maximum is not None and value > maximum:
        raise SpecError(f"{source}: {key}: at most {maximum}, got {value}")
    return int(value)


def _positive_number(data, key, source, maximum=None):
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise SpecError(f"{source}: {key}: expected a positive number, got {value!r}")
    if value <= 0:
        raise SpecError(f"{source}: {key}: must be positive, got {value}")
    if maximum is not None and value > maximum:
        raise SpecError(f"{source}: {key}: at most {maximum}, got {value}")
    return int(value) if float(value).is_integer() else float(value)


def _member(data, key, allowed, source):
    value = data[key]
    if value not in allowed or not isinstance(value, str):
        kind = "operator" if key.endswith("_op") else "downsampling module"
        raise SpecError(f"{source}: {key}: unknown {kind} {value!r} (expected one of {', '.join(allowed)})")
    return value


def _structural_problem(spec: ArchSpec) -> str | None:
    """Constraints that span fields; returns a message naming the field, or None."""
    if len(spec.stages) != NUM_STAGES:
        return f"stages: expected {NUM_STAGES} stages, got {len(spec.stages)}"
    hd = spec.head_dim
    for i, st in enumerate(spec.stages):
        cin = spec.stage_in_width(i)
        if st.dsm == "local_global" and not st.is_attention:
            return f"{stage_key(i, 'dsm')}: LG-DSM ('local_global') needs an attention stage, but {stage_key(i, 'op')} is {st.op!r}"
        if st.is_attention:
            if st.width % hd:
                return f"{stage_key(i, 'width')}: {st.width} channels are not divisible by head_dim {hd}"
            if st.dsm == "block" and cin % hd:
                # MetaNet's strided attention block attends over its input channels.
                src = "stem_width" if i == 0 else stage_key(i - 1, "width")
                return (f"{stage_key(i, 'dsm')}: 'block' downsampling attends over the {cin} input channels "
                        f"({src}), not divisible by head_dim {hd}; use 'local' or 'local_global'")
        if int(cin * st.expand) < 1 or int(st.width * st.expand) < 1:
            return f"{stage_key(i, 'expand')}: expansion {st.expand} leaves no hidden channels"
    return None
