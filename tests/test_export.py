"""Export: the folder loads through timm (with and without features_only), TorchScript and ONNX."""
import json
import sqlite3

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

import metanet  # noqa: F401  (registers the timm models)
from metanet.cli import cli
from metanet.export.run_export import ExportError, export_run
from metanet.runs.directory import RunDir
from metanet.search.driver import run_search
from metanet.runs.config import SearchConfig
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.spec import ArchSpec


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "run"
    cfg = SearchConfig.from_dict({"out": str(out), "trials": 2, "flops": [300_000_000], "proxy_resolution": 16,
                                  "stages": ["zero-cost", "amateur"], "settings": {"amateur": {"max_steps": 3}}})
    run_search(cfg, progress=False, echo=lambda m: None)
    return out


def _search_model(run_dir, trial):
    """The model as the search trained it: the spec built at the proxy size with the kept weights."""
    model = MetaNet(ArchSpec.from_dict(trial["spec"]), num_classes=0, img_size=16).eval()
    model.load_state_dict(load_file(str(RunDir(run_dir).weights_path(trial["id"]))))
    return model


@pytest.mark.slow
def test_export_reloads_through_timm_with_the_same_outputs(run, tmp_path):
    result = export_run(run, tmp_path / "best", formats=("torchscript", "onnx"))
    assert result.trained
    names = {f.name for f in result.files}
    assert {"arch.json", "model.safetensors", "config.json", "README.md", "model.torchscript.pt", "model.onnx"} <= names
    cfg = json.loads((tmp_path / "best" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["input_size"] == [3, 224, 224] and cfg["search"]["trial"] == result.trial["id"]
    assert result.load_line in (tmp_path / "best" / "README.md").read_text()

    reference = _search_model(run, result.trial)
    d = tmp_path / "best"
    x = torch.randn(2, 3, 16, 16)
    model = timm.create_model("metanet", arch=str(d / "arch.json"), img_size=16, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(d / "model.safetensors"))).eval()
    assert model.num_classes == 0  # the export's config: a backbone, no classifier to miss
    data_cfg = timm.data.resolve_data_config(model=model)
    assert data_cfg["mean"] == (0.5, 0.5, 0.5) and data_cfg["std"] == (0.5, 0.5, 0.5)  # as it was trained
    assert data_cfg["input_size"] == (3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
        # the one line the export prints: built at the deployment size, tables resized on load
        scope = {}
        exec(result.load_line, scope)
        assert scope["model"].eval()(torch.randn(1, 3, 32, 32)).shape == (1, 1280)

    spec = ArchSpec.from_dict(result.trial["spec"])
    feats = timm.create_model("metanet", arch=str(d / "arch.json"), img_size=16, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(d / "model.safetensors")),
                              features_only=True, out_indices=(2, 4, 6)).eval()
    assert feats.feature_info.channels() == [spec.stages[1].width, spec.stages[3].width, spec.stages[5].width]
    assert feats.feature_info.reduction() == [4, 16, 32]
    with torch.no_grad():
        outs = feats(x)
        expected = reference.forward_intermediates(x, indices=[2, 4, 6], intermediates_only=True)
    for a, b in zip(outs, expected):
        torch.testing.assert_close(a, b)

    with_head = timm.create_model("metanet", arch=str(d / "arch.json"), img_size=16, pretrained=True, num_classes=5,
                                  pretrained_cfg_overlay=dict(file=str(d / "model.safetensors")))
    assert with_head.get_classifier().out_features == 5
    torch.testing.assert_close(with_head.stem.conv.weight, reference.stem.conv.weight)

    import onnxruntime as ort
    xs = torch.randn(2, 3, 224, 224)
    ref = timm.create_model("metanet", arch=str(d / "arch.json"), img_size=16, pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(d / "model.safetensors"))).eval()
    with torch.no_grad():
        want = ref(xs).numpy()
    got = ort.InferenceSession(str(d / "model.onnx")).run(None, {"input": xs.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    scripted = torch.jit.load(str(d / "model.torchscript.pt"))
    torch.testing.assert_close(scripted(xs), torch.from_numpy(want), rtol=1e-4, atol=1e-4)


def test_export_by_budget_rank_and_trial(run, tmp_path):
    second = export_run(run, tmp_path / "r2", budget="300M", rank=2)
    first = export_run(run, tmp_path / "r1", rank=1)
    assert first.trial["score"] >= second.trial["score"]
    by_id = export_run(run, tmp_path / "t", trial=second.trial["id"])
    assert by_id.trial["id"] == second.trial["id"]


def test_presets_are_timm_models():
    assert {"metanet_b4", "metanet_b15", "uninet_b0", "uninet_b6"} <= set(timm.list_models("*net_b*"))
    model = timm.create_model("uninet_b0", num_classes=7)
    assert model.pretrained_cfg["input_size"] == (3, 160, 160) and model.num_classes == 7


def test_untrained_trials_are_exported_with_a_loud_note(tmp_path):
    out = tmp_path / "zc"
    run_search(SearchConfig.from_dict({"out": str(out), "trials": 1, "flops": [300_000_000], "proxy_resolution": 16,
                                       "stages": ["zero-cost"]}), progress=False, echo=lambda m: None)
    result = CliRunner().invoke(cli, ["export", str(out), "--out", str(tmp_path / "exp")])
    assert result.exit_code == 0, result.output
    assert "RANDOMLY INITIALISED" in result.output
    assert "RANDOMLY INITIALISED" in (tmp_path / "exp" / "README.md").read_text()


def test_export_errors_are_one_line_and_overwrite_nothing(run, tmp_path):
    def fails(*args):
        result = CliRunner().invoke(cli, ["export", str(run), *args])
        assert result.exit_code == 1 and "Traceback" not in result.output, result.output
        return result.output

    existing = tmp_path / "exists"
    existing.mkdir()
    (existing / "keep.txt").write_text("mine")
    assert "exists and is not empty; use --force" in fails("--out", str(existing))
    assert (existing / "keep.txt").read_text() == "mine"
    assert "budget: 5G is not a budget of this run" in fails("--out", str(tmp_path / "a"), "--budget", "5G")
    assert "rank: 9 is out of range" in fails("--out", str(tmp_path / "a"), "--rank", "9")
    assert "trial: no trial 999" in fails("--out", str(tmp_path / "a"), "--trial", "999")
    assert not (tmp_path / "a").exists()
    forced = CliRunner().invoke(cli, ["export", str(run), "--out", str(existing), "--force"])
    assert forced.exit_code == 0 and not (existing / "keep.txt").exists()

    empty = CliRunner().invoke(cli, ["export", str(tmp_path), "--out", str(tmp_path / "b")])
    assert empty.exit_code == 1 and "not a search run directory" in empty.output


def test_corrupt_weights_and_spec_are_named(run, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    best = export_run(copy, tmp_path / "ok").trial
    RunDir(copy).weights_path(best["id"]).write_bytes(b"garbage")
    with pytest.raises(ExportError, match=f"trial_{best['id']}.safetensors: corrupt weights file"):
        export_run(copy, tmp_path / "x", trial=best["id"])
    db = sqlite3.connect(copy / "trials.sqlite")
    spec = dict(best["spec"], s2_op="conv9x9")
    db.execute("UPDATE trials SET spec=? WHERE id=?", (json.dumps(spec), best["id"]))
    db.commit()
    db.close()
    with pytest.raises(ExportError, match="s2_op: unknown operator 'conv9x9'"):
        export_run(copy, tmp_path / "y", trial=best["id"])
    failed_run = tmp_path / "nothing"
    failed_run.mkdir()
    (failed_run / "config.json").write_text(SearchConfig(out=str(failed_run)).to_json())
    from metanet.runs.store import TrialStore
    TrialStore(failed_run / "trials.sqlite")
    with pytest.raises(ExportError, match="no finished trial"):
        export_run(failed_run, tmp_path / "z")
