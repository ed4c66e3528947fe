"""Export a searched backbone as a self-contained folder for timm, TorchScript and ONNX users.

The folder holds ``arch.json`` (the spec), ``model.safetensors`` (the backbone the stages trained, or
random weights, said loudly), ``config.json`` (a timm-style pretrained config), a README with the one
line that loads it, and optionally ``model.torchscript.pt`` and ``model.onnx``. Loading needs torch,
timm and metanet, never NNI.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch

from metanet.budget import format_flops, parse_flops
from metanet.errors import ExportError
from metanet.runs.directory import RunDir
from metanet.search_spaces.timm_models import export_pretrained_cfg, load_snippet
from metanet.runs.store import OK

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
    rank = 1 if rank is None else rank
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

    from metanet.plugin.manager import registry
    plugin_formats = registry().registry["exporters"]
    unknown = [f for f in formats if f not in FORMATS and f not in plugin_formats]
    if unknown:
        known = ", ".join([*FORMATS, *sorted(plugin_formats)])
        raise ExportError(f"format: unknown format {unknown[0]!r} (expected {known})")
    out_dir = Path(out_dir)
    run = RunDir.open(run_dir)
    check_out_dir(run.path, out_dir)
    restore_moved_aside(out_dir)  # before the checks: a restored export is the user's, replaced only with --force
    if out_dir.exists() and not out_dir.is_dir():
        raise ExportError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise ExportError(f"{out_dir}: exists and is not empty; use --force to replace it")
    from metanet.writable import check_creatable
    check_creatable(out_dir.parent, "out", ExportError, shown=out_dir)  # the export is made beside it, then renamed into place
    cfg = run.config
    row = select_trial(run, budget, rank, trial)
    try:
        spec = ArchSpec.from_dict(row["spec"], source=f"trial {row['id']} spec")
    except SpecError as exc:
        raise ExportError(str(exc)) from None

    wpath = run.weights_path(row["id"])
    img_size = cfg.proxy_resolution
    from metanet.search_spaces.size_report import check_fits
    traced = [f for f in formats if f in FORMATS]  # TorchScript and ONNX run it once at the run's resolution
    check_fits(spec, cfg.resolution if traced else img_size, num_classes, img_size=img_size)
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

    # Everything is written into a sibling folder and moved into place at the end: a killed export
    # leaves the old folder (or nothing) at --out, never half of one.
    final_dir = out_dir
    out_dir = staging_dir(final_dir)
    try:
        files = _write(out_dir, final_dir, model, spec, row, cfg, run_dir, note, trained, num_classes, img_size,
                       formats, plugin_formats, save_file)
        _fsync_tree(out_dir)
        publish(out_dir, final_dir)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    files = [final_dir / f.relative_to(out_dir) if f.is_relative_to(out_dir) else f for f in files]
    return ExportResult(final_dir, row, trained, files, load_snippet(final_dir), note)


def _write(out_dir, final_dir, model, spec, row, cfg, run_dir, note, trained, num_classes, img_size, formats,
           plugin_formats, save_file) -> list[Path]:
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
            files.append(plugin_formats[name].export(model, spec, str(out_dir)))
    load_line = load_snippet(final_dir)  # the README names the folder where it will be
    (out_dir / "README.md").write_text(_readme(final_dir, row, cfg, note, load_line, formats))
    files.append(out_dir / "README.md")
    return files


def check_out_dir(run_dir: Path, out_dir: Path) -> None:
    """--out may be neither the run, nor inside it, nor a folder that holds it (--force would delete it)."""
    if out_dir.is_symlink():
        # an export replaces --out as a whole (a swap of two folders): through a link it would replace the link
        raise ExportError(f"out: {out_dir} is a symbolic link (to {os.readlink(out_dir)}); give the folder itself")
    run, out = run_dir.resolve(), out_dir.resolve()
    if out == run:
        raise ExportError(f"out: {out_dir} is the run directory itself; export to another folder")
    if run in out.parents:
        raise ExportError(f"out: {out_dir} is inside the run directory {run_dir}; export to a folder outside it")
    if out in run.parents:
        raise ExportError(f"out: {out_dir} holds the run directory {run_dir}; export to a folder outside it")


STAGING = ".metanet-export-"
ASIDE = "-old"  # suffix of the previous export while the fallback of :func:`publish` swaps it out


def _leftovers(final_dir: Path) -> list[Path]:
    """Staging and moved-aside folders of ``final_dir`` whose export process is gone (killed)."""
    prefix = f"{STAGING}{final_dir.name}-"
    out = []
    for path in sorted(final_dir.parent.glob(f"{prefix}*")):
        pid = path.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            out.append(path)
    return out


def restore_moved_aside(final_dir: Path) -> None:
    """Put back the previous export that a fallback swap moved aside, when the export doing it was killed
    before its new folder was in place (``final_dir`` is then missing); the newest one wins."""
    if final_dir.exists() or not final_dir.parent.is_dir():
        return
    aside = [p for p in _leftovers(final_dir) if p.name.endswith(ASIDE) and p.is_dir()]
    if aside:
        os.rename(max(aside, key=lambda p: p.stat().st_mtime), final_dir)
        _fsync_dir(final_dir.parent)


def staging_dir(final_dir: Path) -> Path:
    """A fresh sibling of ``final_dir`` (same filesystem, so the last step is a rename); leftovers of
    exports that were killed are removed first (a moved-aside export was restored before this)."""
    from metanet.writable import make_dirs
    parent = make_dirs(final_dir.parent, "out", ExportError)
    for old in _leftovers(final_dir):
        if old.name.endswith(ASIDE) and not final_dir.exists():
            continue  # the only copy of the previous export: never deleted while nothing replaced it
        shutil.rmtree(old, ignore_errors=True)
    path = parent / f"{STAGING}{final_dir.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_tree(path: Path) -> None:
    for f in path.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import ctypes.util
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    AT_FDCWD, RENAME_EXCHANGE = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    return False  # EINVAL/ENOSYS (filesystem or kernel without it): the caller falls back


def publish(staged: Path, final_dir: Path) -> None:
    """Move the finished export into place. An existing folder (--force, checked earlier) is replaced
    only now, and its files are deleted only once the new folder is at --out.

    Linux swaps the two folders in one step (renameat2 RENAME_EXCHANGE). Elsewhere (or on a filesystem
    without it) two renames remain, and between them --out does not exist for a moment: a reader then
    finds no folder, never half of one, and a kill there leaves the old export, complete, beside it
    (``.metanet-export-NAME-PID-XXXX-old``) and the new one staged; the next export to that --out puts the
    old one back before anything else. A failed second rename puts it back at once."""
    if not final_dir.exists():
        os.rename(staged, final_dir)
    elif final_dir.is_dir() and not any(final_dir.iterdir()):
        final_dir.rmdir()  # nothing to keep: an empty folder
        os.rename(staged, final_dir)
    elif _exchange(staged, final_dir):
        shutil.rmtree(staged)  # now holds the old export
    else:
        aside = staged.with_name(staged.name + ASIDE)
        os.rename(final_dir, aside)
        _fsync_dir(final_dir.parent)  # the old export is durable beside --out before --out changes
        try:
            os.rename(staged, final_dir)
        except BaseException:
            os.rename(aside, final_dir)
            raise
        _fsync_dir(final_dir.parent)  # the new export is durable at --out before the old one goes
        shutil.rmtree(aside)
    _fsync_dir(final_dir.parent)


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
backbone = timm.create_model('metanet', arch={str(d / 'arch.json')!r}, pretrained=True,
                             pretrained_cfg_overlay=dict(file={str(d / 'model.safetensors')!r}, num_classes=0),
                             features_only=True, out_indices=(2, 3, 5, 6))
```

With a new classifier: add `num_classes=N` (the backbone loads, the head starts fresh). The model runs
at any input size; relative-position tables trained at the search's proxy resolution are resized on load
(pass `img_size=` to build at another one). Inputs are normalised with mean 0.5 and std 0.5 per channel.
{extra}"""
