"""Weights of the released MetaNet and UniNet code in metanet's module names (``metanet convert``).

The official models (OpenGVLab/gv-benchmark ``gvbenchmark/cls/models/backbones/metanet.py``, Sense-X/UniNet
``uninet.py``) keep their blocks in one flat ``blocks.<j>`` list; metanet groups them per stage
(``stages.<s>.<m>``). No tensor needs reshaping: every official layout already equals metanet's (qkv rows
are (three, heads, head_dim) on both sides; squeeze-excitation uses 1x1 convs on both sides); the work is
renaming, and the stage boundaries, which come from the target spec's depths (UniNet counts its
downsampling module as the first block of stages 1-5, metanet's spec does not).

    stem.0 / stem.1                 -> stem.conv / stem.bn
    head.0 / head.1                 -> conv_head / bn_head
    head.fc (mmcls) | classifier    -> classifier
    MBConv3x3 / DWConvBlock         residual.1 -> shortcut.1, b1.* -> expand.*,
                                    b2.{0,1,3,4,5} -> conv_dw, bn_dw, se, conv_pw, bn_pw
    FusedMBConv3x3                  residual.1 -> shortcut.1, b1.* -> conv_exp.*, b2.{0,1,2} -> se, conv_pw, bn_pw
    SABlock / XCA Block / AttentionBlock: names kept; gamma_1 / gamma_2 -> ls1.gamma / ls2.gamma
    LocalDSM                        downsample.* -> local.*; residual.1 -> shortcut.1 (stride 2),
                                    residual.0 -> shortcut (stride 1)
    LocalGlobalDSM                  q.*, q_norm, kv_norm, kv, proj kept; residual as LocalDSM

Checkpoints may be bare state dicts, mmcls classifiers (``backbone.*`` + ``head.fc.*``), wrapped in
``state_dict`` / ``model`` and prefixed ``module.``. ``tests/test_convert.py`` checks outputs against the
official code's on fixtures made from it (see the README).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from metanet.errors import MetanetError

_MBCONV = {"b2.0": "conv_dw", "b2.1": "bn_dw", "b2.3": "se", "b2.4": "conv_pw", "b2.5": "bn_pw"}
_FUSED = {"b2.0": "se", "b2.1": "conv_pw", "b2.2": "bn_pw"}


class ConvertError(MetanetError):
    """A checkpoint that does not convert to the target architecture; the message names the key or file."""


def unwrap(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: ``state_dict`` / ``model`` unwrapped, ``module.`` and mmcls's
    ``backbone.`` prefixes dropped."""
    for key in ("state_dict", "model", "model_state"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
    out = {}
    for k, v in obj.items():
        if torch.is_tensor(v):
            k = k[len("module."):] if k.startswith("module.") else k
            out[k[len("backbone."):] if k.startswith("backbone.") else k] = v
    return out


def family_of(spec) -> str:
    """``uninet`` when the spec downsamples with UniNet's modules, else ``metanet``."""
    return "uninet" if any(st.dsm != "block" for st in spec.stages) else "metanet"


def _kind(keys: set[str], where: str) -> str:
    if any(k.startswith("downsample.") for k in keys):
        return "local"
    if "kv.weight" in keys and any(k.startswith("q.") for k in keys):
        return "local_global"
    if "attn.qkv.weight" in keys:
        return "transformer"
    if "b2.0.fc1.weight" in keys:
        return "fused_mbconv"
    if "b2.0.weight" in keys:
        return "mbconv"
    raise ConvertError(f"{where}: not a block of the released models (keys {', '.join(sorted(keys)[:4])}, ...)")


def _block(kind: str, block: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for sub, v in block.items():
        if sub.startswith("residual.1."):  # Sequential(MaxPool, Conv) when strided
            new = "shortcut.1" + sub[len("residual.1"):]
        elif sub.startswith("residual.0."):  # Sequential(Conv) in UniNet's stride-1 downsampling
            new = "shortcut" + sub[len("residual.0"):]
        elif kind in ("mbconv", "fused_mbconv"):
            head, _, rest = sub.partition(".")
            table = _MBCONV if kind == "mbconv" else _FUSED
            prefix = ".".join(sub.split(".")[:2])
            if head == "b1":
                new = ("expand." if kind == "mbconv" else "conv_exp.") + rest
            elif prefix in table:
                new = table[prefix] + sub[len(prefix):]
            else:
                raise ConvertError(f"{where}.{sub}: unexpected key for a {kind} block (use_se=False is not released)")
        elif kind == "transformer":
            if sub == "attn.static_a":
                raise ConvertError(f"{where}.{sub}: static attention has no metanet operator")
            new = {"gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma"}.get(sub, sub)
        elif kind == "local":
            new = "local." + sub[len("downsample."):] if sub.startswith("downsample.") else sub
        else:
            new = sub
        out[new] = v
    if kind == "transformer":  # options the released configs do not use, filled with exact equivalents
        width = out["attn.proj.weight"].shape[0]
        out.setdefault("attn.qkv.bias", out["attn.qkv.weight"].new_zeros(out["attn.qkv.weight"].shape[0]))
        if "ls1.gamma" not in out:  # init_values=-1: no LayerScale
            out["ls1.gamma"] = out["attn.proj.weight"].new_ones(width)
            if "mlp.fc1.weight" in out:
                out["ls2.gamma"] = out["attn.proj.weight"].new_ones(width)
    return out


_TOP = (("stem.0.", "stem.conv."), ("stem.1.", "stem.bn."), ("head.0.", "conv_head."), ("head.1.", "bn_head."),
        ("head.fc.", "classifier."), ("classifier.", "classifier."))


def convert_state_dict(checkpoint: Mapping[str, Any], spec) -> dict[str, torch.Tensor]:
    """An official MetaNet / UniNet state dict in the module names of ``MetaNet(spec)``."""
    sd = unwrap(checkpoint)
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.match(r"blocks\.(\d+)\.(.+)$", k)
        if m:
            blocks.setdefault(int(m.group(1)), {})[m.group(2)] = v
            continue
        for old, new in _TOP:
            if k.startswith(old):
                out[new + k[len(old):]] = v
                break
        else:
            raise ConvertError(f"{k}: not a key of the released MetaNet or UniNet models")
    uninet = family_of(spec) == "uninet"
    # the official blocks of each stage: UniNet's downsampling module comes first and counts as a block
    depths = [st.depth + (uninet and st.dsm != "block") for st in spec.stages]
    if sorted(blocks) != list(range(sum(depths))):
        raise ConvertError(f"blocks: the checkpoint has {len(blocks)} blocks, the architecture {sum(depths)} "
                           f"({'+'.join(map(str, depths))}); is it the right preset?")
    j = 0
    for s, depth in enumerate(depths):
        for m in range(depth):
            where = f"blocks.{j}"
            for sub, v in _block(_kind(set(blocks[j]), where), blocks[j], where).items():
                out[f"stages.{s}.{m}.{sub}"] = v
            j += 1
    return out


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A ``.safetensors`` file, or a torch checkpoint read with ``weights_only=True`` (no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise ConvertError(f"{path}: no such checkpoint file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable or unsafe pickle: one line naming the file
        raise ConvertError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0]})") \
            from None
    if not isinstance(obj, Mapping):
        raise ConvertError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return dict(obj)


def convert_checkpoint(path: str | Path, spec, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Convert ``path`` for ``spec``, load it strictly into ``MetaNet(spec)`` and write ``out`` (safetensors,
    through a temporary file so an interrupted write leaves nothing half-written)."""
    from safetensors.torch import save_file

    from metanet.search_spaces.metanet import MetaNet
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ConvertError(f"{out}: the output is a .safetensors file")
    if out.resolve() == Path(path).resolve():
        raise ConvertError(f"{out}: is the checkpoint being converted; write elsewhere")
    if out.exists() and not force:
        raise ConvertError(f"{out}: exists; use --force to replace it")
    if out.is_dir():
        raise ConvertError(f"{out}: is a folder; the output is a .safetensors file")
    from metanet.writable import check_creatable, make_dirs
    check_creatable(out.parent, "out", ConvertError, shown=out)  # before the checkpoint is read
    state = convert_state_dict(read_checkpoint(path), spec)
    num_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
    with torch.device("meta"):
        model = MetaNet(spec, num_classes=num_classes)
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    if missing or unexpected:
        raise ConvertError(f"{path}: does not fit the architecture (missing {missing[:3]}, unexpected {unexpected[:3]})")
    wrong = [k for k, v in state.items() if tuple(v.shape) != tuple(target[k].shape)]
    if wrong:
        k = wrong[0]
        raise ConvertError(f"{path}: {k} has shape {tuple(state[k].shape)}, the architecture "
                           f"{tuple(target[k].shape)} ({len(wrong)} tensors differ)")
    make_dirs(out.parent, "out", ConvertError)
    partial = out.with_name(out.name + ".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial),
              metadata={"converted_from": Path(path).name, "family": family_of(spec)})
    partial.replace(out)
    return {"out": str(out), "tensors": len(state), "params": sum(p.numel() for p in model.parameters()),
            "num_classes": num_classes, "family": family_of(spec)}
