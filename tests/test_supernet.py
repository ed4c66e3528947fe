"""The weight-sharing supernet: sub-networks equal their standalone models, training resumes, scoring and
the two-phase search run through the real CLI."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from metanet.cli import cli
from metanet.errors import SupernetError
from metanet.search_spaces.budget_space import budget_space
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.presets import PRESETS
from metanet.search_spaces.supernet_model import Supernet, sample_specs
from metanet.search_spaces.unified import DEFAULT_SPACE

BUDGET, RES = 150_000_000, 32
TRAIN = ["supernet", "train", "--flops", "150M", "--proxy-resolution", str(RES), "--batch-size", "8",
         "--random-subnets", "1"]


@pytest.fixture(scope="module")
def space():
    return budget_space(DEFAULT_SPACE, BUDGET)


@pytest.fixture(scope="module")
def net(space):
    return Supernet([space], RES, num_classes=7, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A supernet trained for a few steps through the CLI (shared by the CLI tests)."""
    out = tmp_path_factory.mktemp("sn") / "supernet"
    result = CliRunner().invoke(cli, [*TRAIN, "--steps", "3", "--save-every", "3", "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output[result.output.index("{"):])


def _specs(net, space, n=4, seed=0):
    rng = random.Random(seed)
    specs = [net.largest(), net.smallest()]
    # cover every operator and downsampling module the space offers somewhere
    while len(specs) < n + 2 or not {"xca", "attention_rpb", "fused_mbconv"} <= {s.op for sp in specs
                                                                                 for s in sp.stages}:
        specs.append(sample_specs(space, rng))
        if len(specs) > 60:
            break
    return specs


@pytest.mark.slow
def test_a_subnet_with_inherited_weights_equals_its_standalone_model(net, space):
    torch.manual_seed(0)
    with torch.no_grad():  # weights unlike their initialisation, so a wrong slice cannot pass
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        for k, v in net.shared_state().items():
            if k.endswith("running_var"):
                v.uniform_(0.5, 2.0)
    net.eval()
    x = torch.randn(3, 3, RES, RES)
    specs = _specs(net, space)
    assert {"xca", "attention_rpb", "fused_mbconv", "mbconv"} <= {s.op for sp in specs for s in sp.stages}
    for spec in specs:
        model = MetaNet(spec, num_classes=7, img_size=RES).eval()
        state = net.extract(spec)
        state.update({f"classifier.{k}": v for k, v in net.classifier.state_dict().items()})
        model.load_state_dict(state)
        torch.testing.assert_close(net(x, spec), model(x), atol=1e-5, rtol=1e-5)


def test_training_a_subnet_updates_only_the_slices_it_uses(net, space):
    # its own copy, moved off the initialisation (zero-initialised residual branches pass no gradient to the
    # block's inner convolutions): the test does not depend on the module's other tests having run first
    import copy
    net = copy.deepcopy(net)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    net.train()
    net.zero_grad(set_to_none=True)
    spec = net.smallest()
    net(torch.randn(4, 3, RES, RES), spec).sum().backward()
    stem = net.shared("stem.conv.weight")
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    # the smallest sub-network is narrower than the widest block 0 of its first stage: the rest gets no gradient
    first = f"s0.{spec.stages[0].op}.b0"
    key = next(k for k in net.shared_state() if k.startswith(first) and k.endswith("conv_pw.weight"))
    grad = net.shared(key).grad
    used = spec.stages[0].width
    assert grad[:used].abs().sum() > 0 and (grad.shape[0] == used or grad[used:].abs().sum() == 0)
    unused = [k for k in net.shared_state() if k.startswith("s5.") and f"s5.{spec.stages[5].op}." not in k
              and not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert unused and all(net.shared(k).grad is None for k in unused)
    net.zero_grad(set_to_none=True)


def test_a_spec_outside_the_supernet_is_named(net):
    with pytest.raises(SupernetError, match=r"^s\d\.\w+\.b\d+ \(.*(needs shape|not in the supernet)"):
        net.check(PRESETS["uninet_b1"].spec)


@pytest.mark.slow
def test_train_then_score_a_candidate_in_one_line_of_cli(trained, space, tmp_path):
    out, summary = trained
    assert summary["step"] == 3 and (out / "supernet.safetensors").is_file()
    info = json.loads((out / "supernet.json").read_text())
    assert info["step"] == 3 and info["settings"]["flops"] == [BUDGET]
    spec_path = tmp_path / "spec.json"
    sample_specs(space, random.Random(3)).save(spec_path)
    result = CliRunner().invoke(cli, ["evaluate", str(spec_path), "--stages", "supernet", "--set",
                                      f"supernet.path={out}", "--proxy-resolution", str(RES), "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output[result.output.index("{"):])["metrics"]
    assert 0 <= metrics["supernet.acc"] <= 1 and metrics["supernet.supernet_step"] == 3


@pytest.mark.parametrize("args, words", [
    (["--proxy-resolution", "64"], "trained at 32px"),
    (["--set", "supernet.path=/nonexistent/dir"], "not a supernet directory"),
])
def test_scoring_with_a_mismatched_supernet_fails_in_one_line(trained, args, words):
    out, _ = trained
    base = ["evaluate", "metanet_b4", "--stages", "supernet", "--set", f"supernet.path={out}",
            "--proxy-resolution", str(RES)]
    result = CliRunner().invoke(cli, base + args)
    assert result.exit_code == 1 and words in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) <= 2


def test_a_search_for_another_budget_is_refused_before_its_run_directory(trained, tmp_path):
    out, _ = trained
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--stages", "supernet", "--set", f"supernet.path={out}",
                                      "--flops", "300M", "--proxy-resolution", str(RES), "--out", str(run)])
    assert result.exit_code == 1 and "trained for budget(s) 150M, not 300M" in result.output
    assert not run.exists()


@pytest.mark.slow
def test_two_phase_search_rescores_the_top_trials_with_the_final_stages(trained, tmp_path):
    out, _ = trained
    run = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--stages", "supernet", "--set", f"supernet.path={out}",
                                      "--flops", "150M", "--proxy-resolution", str(RES), "--trials", "4",
                                      "--final-stages", "zero-cost", "--final-top", "2", "--out", str(run),
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    final = summary["final"][str(BUDGET)]
    assert final["stages"] == ["zero-cost"] and len(final["trials"]) == 2
    assert all(t["final_score"] is not None for t in final["trials"])
    # the two best of the first phase, in its order
    rows = json.loads(CliRunner().invoke(cli, ["results", str(run), "--json"]).output)
    best_two = [r["id"] for r in sorted(rows, key=lambda r: -(r["score"] or -1))[:2]]
    assert [t["id"] for t in final["trials"]] == best_two
    # the exported best of the first phase carries the supernet's weights for its spec
    export = tmp_path / "export"
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(export)])
    assert result.exit_code == 0, result.output
    assert (export / "model.safetensors").is_file()


@pytest.mark.slow
def test_kill_during_training_then_resume_continues_the_step_count(tmp_path):
    out = tmp_path / "supernet"
    cmd = [sys.executable, "-m", "metanet", *TRAIN, "--steps", "8", "--save-every", "2", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    info = out / "supernet.json"
    deadline = time.time() + 240
    while time.time() < deadline:
        if info.is_file() and json.loads(info.read_text())["step"] >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(info.read_text())["step"]
    assert 2 <= saved < 8
    # a second trainer on a directory in use, or a fresh one on a used directory, is refused in one line
    result = CliRunner().invoke(cli, [*TRAIN, "--steps", "8", "--out", str(out)])
    assert result.exit_code != 0 and "--resume" in result.output
    result = CliRunner().invoke(cli, ["supernet", "train", "--resume", "--out", str(out), "--lr", "0.1"])
    assert result.exit_code != 0 and "only --steps" in result.output
    result = subprocess.run([sys.executable, "-m", "metanet", "supernet", "train", "--resume", "--out", str(out),
                             "--json"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed_from"] >= saved and summary["step"] == 8
    assert json.loads(info.read_text())["step"] == 8
    assert not any(name.endswith(".tmp") for name in os.listdir(out))
