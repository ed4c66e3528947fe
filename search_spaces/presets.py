"""The released MetaNet and UniNet models as points of the unified space, block for block.

MetaNet (INTERN, gv-benchmark ``mnb4.py`` / ``mnb15.py``): the first block of each stage carries the
stride. UniNet (Sense-X/UniNet ``uninet.py``): L-DSM before stages 1-3, LG-DSM before stages 4-5,
stage 0 changes width in its first block. Each preset has the input size it was released for.
"""
from __future__ import annotations

from dataclasses import dataclass

from metanet.search_spaces.spec import FORMAT_VERSION, NUM_STAGES, ArchSpec, stage_key

EXPANSION = (1, 4, 6, 3, 2, 5)


@dataclass(frozen=True)
class Preset:
    name: str
    spec: ArchSpec
    input_size: int
    description: str


def _spec(ops, depths, widths, dsms, stem, head_dim) -> ArchSpec:
    data = {"version": FORMAT_VERSION, "stem_width": stem, "head_dim": head_dim}
    for i in range(NUM_STAGES):
        data[stage_key(i, "op")] = ops[i]
        data[stage_key(i, "depth")] = depths[i]
        data[stage_key(i, "width")] = widths[i]
        data[stage_key(i, "expand")] = EXPANSION[i]
        data[stage_key(i, "dsm")] = dsms[i]
    return ArchSpec.from_dict(data)


_UNINET_OPS = ("mbconv",) * 4 + ("attention",) * 2
_UNINET_DSM = ("block", "local", "local", "local", "local_global", "local_global")
_UNINET = {  # name: (depths, widths, input size)
    "uninet_b0": ((1, 2, 4, 4, 4, 8), (24, 48, 80, 128, 128, 256), 160),
    "uninet_b1": ((1, 2, 4, 4, 4, 8), (24, 48, 80, 128, 128, 256), 224),
    "uninet_b2": ((2, 3, 6, 6, 6, 12), (24, 48, 80, 128, 128, 256), 256),
    "uninet_b3": ((2, 3, 7, 7, 7, 14), (24, 56, 96, 160, 160, 288), 288),
    "uninet_b4": ((2, 4, 9, 9, 9, 18), (32, 64, 112, 192, 192, 352), 320),
    "uninet_b5": ((3, 5, 10, 10, 10, 20), (32, 64, 112, 224, 224, 448), 384),
    "uninet_b6": ((4, 6, 12, 12, 12, 24), (48, 96, 160, 256, 256, 512), 448),
}


def _build() -> dict[str, Preset]:
    presets = {
        "metanet_b4": Preset("metanet_b4", _spec(("mbconv",) * 4 + ("attention",) * 2, (2, 3, 6, 6, 6, 12),
                                                 (32, 64, 128, 192, 192, 384), ("block",) * 6, 32, 48),
                             224, "INTERN MetaNet-B4 (MN-B4)"),
        "metanet_b15": Preset("metanet_b15", _spec(("fused_mbconv",) * 2 + ("mbconv",) * 2 + ("xca",) * 2,
                                                   (4, 6, 12, 12, 12, 24), (128, 256, 512, 768, 768, 1536),
                                                   ("block",) * 6, 96, 64),
                              224, "INTERN MetaNet-B15 (MN-B15), XCA transformer stages"),
    }
    for name, (depths, widths, size) in _UNINET.items():
        presets[name] = Preset(name, _spec(_UNINET_OPS, depths, widths, _UNINET_DSM, 32, 32), size,
                               f"UniNet-{name[-2:].upper()} at {size}x{size}")
    return presets


PRESETS: dict[str, Preset] = _build()
