"""Data parallelism inside one evaluation (--devices N): ranks started by Fabric's DDP launcher on CPU."""
import json

import pytest
from click.testing import CliRunner

from conftest import tiny_spec_dict
from metanet.cli import cli
from metanet.data import load_digits_bundle
from metanet.errors import ConfigError
from metanet.plugin.manager import PluginManager
from metanet.train.runtime import Runtime
from metanet.search_spaces.spec import ArchSpec
from metanet.evaluate.candidate import evaluate_candidate


@pytest.fixture(scope="module")
def digits():
    return load_digits_bundle(24).with_validation(0.2, seed=0)


def test_ranks_train_on_disjoint_shards_and_stay_identical(digits, tmp_path):
    pm = PluginManager(plugins=("rank_probe_plugin",))
    spec = ArchSpec.from_dict(tiny_spec_dict())
    result = evaluate_candidate(spec, ["rank-probe"], digits, pm=pm, accelerator="cpu", devices=2,
                                config={"rank-probe": {"record": str(tmp_path)}})
    assert result.status == "ok", result.error
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    for step in range(4):  # each global batch of 16 split in two halves of 8, no example in both
        a, b = ranks[0]["seen"][step], ranks[1]["seen"][step]
        assert len(a) == len(b) == 8 and not set(a) & set(b)
    assert set(ranks[0]["seen"][0]) | set(ranks[1]["seen"][0]) != set(ranks[0]["seen"][1]) | set(ranks[1]["seen"][1])
    # gradients averaged, batch-norm statistics broadcast: after 3 steps both replicas hold the same bytes
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3
    assert ranks[0]["digest"] == ranks[1]["digest"]


@pytest.mark.slow
def test_evaluate_with_two_cpu_ranks_reports_world_size(tmp_path):
    path = tmp_path / "arch.json"
    ArchSpec.from_dict(tiny_spec_dict()).save(path)
    fast = ["--set", "amateur.max_steps=4", "--set", "downstream.epochs=5", "--proxy-resolution", "32"]
    for precision in ("32", "bf16-mixed"):
        out = CliRunner().invoke(cli, ["evaluate", str(path), "--stages", "amateur,downstream", "--devices", "2",
                                       "--accelerator", "cpu", "--precision", precision, *fast, "--json"])
        assert out.exit_code == 0, out.output
        report = json.loads(out.stdout)
        assert report["status"] == "ok" and report["runtime"]["world_size"] == 2
        assert report["runtime"]["precision"] == precision
        assert report["metrics"]["amateur.train_steps"] == 4 and 0 < report["score"] <= 1


def test_devices_are_checked_before_any_work():
    from types import SimpleNamespace

    from metanet.search.nni_adapter import resolve_gpus
    with pytest.raises(ConfigError, match="devices: expected a whole number >= 1, got 0"):
        Runtime.create("cpu", "32", 0)
    # a trial on 2 GPUs needs NNI to give it 2
    cfg = SimpleNamespace(devices=2, accelerator="auto", gpus_per_trial=1, training_service="local")
    with pytest.raises(ConfigError, match="devices: 2 per trial, but --gpus-per-trial gives each trial 1"):
        resolve_gpus(cfg, 4)
    assert resolve_gpus(SimpleNamespace(**{**vars(cfg), "gpus_per_trial": None}), 4) == (2, None)
    out = CliRunner().invoke(cli, ["evaluate", "uninet_b0", "--devices", "0"])
    assert out.exit_code == 2 and "--devices" in out.output


@pytest.mark.slow
def test_compile_runs_the_stages_forward_passes_through_dynamo(digits, monkeypatch):
    import torch._dynamo
    from torch._dynamo.utils import counters

    import metanet.train.loop as training
    # Dynamo's graph capture of the whole candidate, without inductor's C++ build (minutes on 2 cores)
    monkeypatch.setattr(training, "COMPILE_OPTIONS", {"backend": "eager"})
    spec = ArchSpec.from_dict(tiny_spec_dict())
    settings = {"amateur": {"max_steps": 4}, "downstream": {"epochs": 5}}
    eager = evaluate_candidate(spec, ["amateur", "downstream"], digits, accelerator="cpu", config=settings)
    counters.clear()
    compiled = evaluate_candidate(spec, ["amateur", "downstream"], digits, accelerator="cpu", config=settings,
                                  compile=True)
    assert compiled.status == "ok", compiled.error
    assert counters["stats"]["unique_graphs"] >= 1 and not counters["graph_break"]  # one graph, no breaks
    assert compiled.metrics["amateur.train_loss_last"] == pytest.approx(eager.metrics["amateur.train_loss_last"],
                                                                        rel=1e-4)
    torch._dynamo.reset()
