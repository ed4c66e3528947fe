"""Export a searched backbone as a self-contained folder for timm, TorchScript and ONNX users.

The folder holds ``arch.json`` (the spec), ``model.safetensors`` (the backbone the stages trained, or
random weights, said loudly), ``config.json`` (a timm-style pretrained config), a README with the one
line that loads it, and optionally ``model.torchscript.pt`` and ``model.onnx``. Loading needs torch,
timm and metanet, never NNI.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .budget import format_flops, parse_flops
from .errors import ExportError
from .run_dir import RunDir
from .search_spaces.timm_models import export_pretrained_cfg, load_snippet
from .store import OK

FORMATS = ("torchscript", "onnx")


@dataclass
class ExportResult:
    out_dir: Path
    trial: dict
    trained: bool
    files: list[Path]
    load_line: str
    note: str


def select_trial(run: RunDir, budget=None, rank: int | None = None, trial: int | None = None) -> dict:
    """The trial to export: by id, or the ``rank``-th best (within ``budget`` if given)."""
    store = run.read_store()
    if trial is not None:
        rows = store.trials()
        match = [r for r in rows if r["id"] == trial]
        if not match:
            raise ExportError(f"trial: no trial {trial} in {run.path} (ids {rows[0]['id']}-{rows[-1]['id']})"
                              if rows else f"trial: {run.path} has no trials")
        if match[0]["status"] != OK:
            raise ExportError(f"trial: trial {trial} did not finish ({match[0]['status']}: {match[0]['error']})")
        return match[0]
    b = None
    if budget is not None:
        try:
            b = parse_flops(budget) if isinstance(budget, str) else int(budget)
        except ValueError as exc:
            raise ExportError(f"budget: {exc}") from None
        if b not in run.config.flops:
            raise ExportError(f"budget: {format_flops(b)} is not a budget of this run "
                              f"({', '.join(format_flops(x) for x in run.config.flops)})")
    ok = run.ranked(b, status=OK, store=store)
    if not ok:
        raise ExportError(f"{run.path}: no finished trial" + (f" for budget {format_flops(b)}" if b else ""))
    rank = rank or 1
    if not 1 <= rank <= len(ok):
        raise ExportError(f"rank: {rank} is out of range (1-{len(ok)} finished trials)")
    return ok[rank - 1]


def export_run(run_dir: str | Path, out_dir: str | Path, *, budget=None, rank: int | None = None,
               trial: int | None = None, formats=(), num_classes: int = 0, force: bool = False) -> ExportResult:
    """Write the chosen trial's backbone to ``out_dir`` (the best overall by default)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save_file

    from metanet.search_spaces.metanet import MetaNet
    from metanet.search_spaces.spec import ArchSpec, SpecError

    from metanet.plugin_manager import registry
    plugin_formats = registry().registry["exporters"]
    unknown = [f for f in formats if f not in FORMATS and f not in plugin_formats]
    if unknown:
        known = ", ".join([*FORMATS, *sorted(plugin_formats)])
        raise ExportError(f"format: unknown format {unknown[0]!r} (expected {known})")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir}: exists and is not empty; use --force to replace it")
    run = RunDir.open(run_dir)
    cfg = run.config
    row = select_trial(run, budget, rank, trial)
    try:
        spec = ArchSpec.from_dict(row["spec"], source=f"trial {row['id']} spec")
    except SpecError as exc:
        raise ExportError(str(exc)) from None

    wpath = run.weights_path(row["id"])
    img_size = cfg.proxy_resolution
    trained = wpath.exists()
    model = MetaNet(spec, num_classes=num_classes, img_size=img_size).eval()
    if trained:
        try:
            state = load_file(str(wpath))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ExportError(f"{wpath}: corrupt weights file ({exc})") from None
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("classifier.")]
        if missing or unexpected:
            raise ExportError(f"{wpath}: weights do not fit the spec (missing {missing[:2]}, unexpected {unexpected[:2]})")
        note = f"weights: the backbone trained by the search's stages ({wpath.name})"
    else:
        note = ("weights: RANDOMLY INITIALISED: the stages of this run did not train a backbone for trial "
                f"{row['id']} (zero-cost only, or not among the best kept); train it before use")

    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    files = []
    spec.save(out_dir / "arch.json")
    files.append(out_dir / "arch.json")
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out_dir / "model.safetensors"), metadata={"trained": str(trained)})
    files.append(out_dir / "model.safetensors")
    res = cfg.resolution
    pretrained_cfg = export_pretrained_cfg(num_classes, res)
    config = {"architecture": "metanet", "num_classes": num_classes, "num_features": model.num_features,
              "model_args": {"arch": "arch.json", "img_size": img_size}, "pretrained_cfg": pretrained_cfg,
              "feature_info": model.feature_info, "trained": trained,
              "search": {"run_dir": str(run_dir), "trial": row["id"], "budget": row["budget"], "flops": row["flops"],
                         "params": row["params"], "score": row["score"], "stages": cfg.stages, "data": cfg.data}}
    (out_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    files.append(out_dir / "config.json")
    x = torch.randn(1, 3, res, res)
    import warnings
    if "torchscript" in formats:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notice
            traced = torch.jit.trace(model, x, check_trace=False)
        traced.save(str(out_dir / "model.torchscript.pt"))
        files.append(out_dir / "model.torchscript.pt")
    if "onnx" in formats:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(out_dir / "model.onnx"), dynamo=False, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
        files.append(out_dir / "model.onnx")
    for name in formats:  # formats added by plugins (metanet_register_exporters)
        if name not in FORMATS:
            files.append(Path(plugin_formats[name].obj(model, spec, str(out_dir))))
    load_line = load_snippet(out_dir)
    (out_dir / "README.md").write_text(_readme(out_dir, row, cfg, note, load_line, formats))
    files.append(out_dir / "README.md")
    return ExportResult(out_dir, row, trained, files, load_line, note)


def _readme(out_dir, row, cfg, note, load_line, formats) -> str:
    d = out_dir.resolve()
    extra = ""
    if "torchscript" in formats:
        extra += "\nTorchScript: `torch.jit.load('model.torchscript.pt')`.\n"
    if "onnx" in formats:
        extra += "\nONNX: `onnxruntime.InferenceSession('model.onnx')`, input named `input` (N, 3, H, W).\n"
    return f"""# metanet backbone (trial {row['id']})

{format_flops(row['flops'])} FLOPs (MACs at {cfg.resolution}px), {format_flops(row['params'])} parameters,
score {row['score']:.4f} under budget {format_flops(row['budget'])}; stages {', '.join(cfg.stages)} on {cfg.data}.

{note}.

Load it with timm (needs `pip install metanet`; no NNI):

```python
{load_line}
```

As a backbone for detection or segmentation:

```python
import metanet, timm
backbone = timm.create_model('metanet', arch='{d}/arch.json', pretrained=True,
                             pretrained_cfg_overlay=dict(file='{d}/model.safetensors', num_classes=0),
                             features_only=True, out_indices=(2, 3, 5, 6))
```

With a new classifier: add `num_classes=N` (the backbone loads, the head starts fresh). The model runs
at any input size; relative-position tables trained at the search's proxy resolution are resized on load
(pass `img_size=` to build at another one). Inputs are normalised with mean 0.5 and std 0.5 per channel.
{extra}"""
