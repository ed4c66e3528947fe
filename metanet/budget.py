"""FLOP budgets as users write them: ``600M``, ``1.5G``, ``1.5e9``, ``600000000``."""
from __future__ import annotations

import math
import re

_SUFFIX = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtT]?)\s*$")


def parse_flops(text: str | int | float) -> int:
    """Parse one budget into a number of FLOPs (multiply-accumulates); raises ``ValueError``."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _PATTERN.match(str(text))
        if not m:
            raise ValueError(f"invalid FLOP budget {str(text)!r}: expected a positive number with an optional "
                             "K, M, G or T suffix, e.g. 600M, 1.5G, 1.5e9")
        value = float(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"invalid FLOP budget {str(text)!r}: must be positive")
    return int(round(value))


def parse_budgets(text: str) -> list[int]:
    """A comma-separated family of budgets, e.g. ``300M,600M,1.2G``; sorted, duplicates removed."""
    parts = [p for p in str(text).split(",")]
    if not parts or any(not p.strip() for p in parts):
        raise ValueError(f"invalid FLOP budget list {text!r}: expected BUDGET[,BUDGET...], e.g. 300M,600M")
    return sorted({parse_flops(p) for p in parts})


def format_flops(n: float) -> str:
    """Human form: 3.218G, 600M, 45.2K."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.4g}{suffix}"
    return f"{n:.0f}"
