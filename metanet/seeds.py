"""Seeds derived from a run's seed and names, so that no component draws from state another one touched."""
from __future__ import annotations

import hashlib


def derive(seed: int, *names) -> int:
    """A 63-bit seed from ``seed`` and ``names`` (stage, source, purpose ...): stable across processes and
    Python versions (no ``hash()``), different for different names."""
    text = "|".join([str(int(seed)), *map(str, names)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1
