"""INTERN's stages as plugins: the whole pipeline on the digits default, scores and settings."""
import math
import random

import pytest
import torch

from conftest import tiny_spec_dict
from metanet.data import HELDOUT_DIGITS, load_digits_bundle
from metanet.errors import ConfigError, UnknownName
from metanet.plugin.manager import registry
from metanet.search_spaces.spec import ArchSpec
from metanet.search_spaces.unified import sample_within_budget
from metanet.evaluate.candidate import combine_score, default_score_weights, evaluate_candidate, parse_score

TINY = {"amateur": {"max_steps": 12, "batch_size": 32}, "expert": {"max_steps": 6, "batch_size": 32},
        "generalist": {"max_steps": 8, "batch_size": 32}, "downstream": {"epochs": 40}}
ALL_STAGES = ["zero-cost", "amateur", "expert", "generalist", "downstream"]


@pytest.fixture(scope="module")
def digits():
    return load_digits_bundle(24).with_validation(0.2, seed=0)


def test_digits_bundle_sources_and_held_out_task(digits):
    assert set(digits.sources) == {"digit", "parity", "magnitude"}
    assert digits.sources["digit"].num_classes == 7 and digits.sources["parity"].num_classes == 2
    x, _ = digits.sources["digit"].train[0]
    assert x.shape == (3, 24, 24)
    task = digits.tasks["heldout_digits"]
    assert task.classes == [str(d) for d in HELDOUT_DIGITS]
    # the downstream images are ones the upstream never saw (different digits altogether)
    up = torch.stack([digits.sources["digit"].train[i][0] for i in range(50)])
    down = torch.stack([task.train[i][0] for i in range(len(task.train))])
    assert not any(torch.equal(u, d) for u in up for d in down)


@pytest.mark.slow
def test_a_candidate_runs_through_every_stage(space, digits):
    # Wall time is measured by benchmarks/stages.py, not asserted here (shared machines are noisy).
    spec = sample_within_budget(space, 200e6, random.Random(3))
    result = evaluate_candidate(spec, ALL_STAGES, digits, config=TINY, seed=0)
    assert result.status == "ok", result.error
    assert all(math.isfinite(v) for v in result.metrics.values())
    assert result.score == result.metrics["downstream.acc"] == result.metrics["score"]
    for stage in ("amateur", "generalist", "downstream"):
        assert result.metrics[f"{stage}.train_loss_last"] < result.metrics[f"{stage}.train_loss_first"], stage
    # experts start from the amateur's weights and heads, already far below chance; a few fine-tuning steps
    # wander around there (3-step windows of batch 32), so what they show is that they kept what it learned
    chance = sum(math.log(digits.sources[s].num_classes) for s in digits.sources) / len(digits.sources)
    assert result.metrics["expert.train_loss_last"] < 0.6 * chance
    assert 0 <= result.metrics["downstream.acc"] <= 1
    # the stages handed weights along: expert from amateur, downstream from the generalist
    assert all(e["origin"] == "amateur" for e in result.state["expert"]["experts"].values())
    assert result.state["generalist"]["origin"] == "amateur"
    assert result.state["downstream"]["backbone"] == "generalist"
    # GV-B: 10% of the task's training labels
    n_train = len(digits.tasks["heldout_digits"].train)
    assert result.metrics["downstream.heldout_digits.labels_used"] == pytest.approx(0.1 * n_train, abs=3)


def test_downstream_data_efficiency_baselines(digits):
    # INTERN's comparison: adapted with 10% against the same backbone adapted with 100%, and against the
    # architecture trained from scratch on 100% for a schedule in epochs (it grows with the data).
    spec = ArchSpec.from_dict(tiny_spec_dict())
    result = evaluate_candidate(spec, ["downstream"], digits, seed=0, config={"downstream": {
        "epochs": 20, "from_scratch": True, "scratch_epochs": 2, "adapted_full": True, "finetune_steps": 5}})
    assert result.status == "ok", result.error
    m = result.metrics
    task = digits.tasks["heldout_digits"]
    assert m["downstream.heldout_digits.scratch100_steps"] == math.ceil(2 * len(task.train) / 64)
    for split in ("", "test_"):
        assert m[f"downstream.{split}adapted10_minus_scratch100"] == pytest.approx(
            m[f"downstream.{split}acc"] - m[f"downstream.{split}scratch100_acc"])
        assert m[f"downstream.{split}adapted10_minus_adapted100"] == pytest.approx(
            m[f"downstream.{split}acc"] - m[f"downstream.{split}adapted100_acc"])
    assert "downstream.heldout_digits.finetune_acc" in m
    assert m["downstream.heldout_digits.labels_used"] == pytest.approx(0.1 * len(task.train), abs=3)
    assert result.state["downstream"]["backbone"] == "init"


def test_score_is_validation_and_test_score_is_its_test_counterpart(digits):
    spec = ArchSpec.from_dict(tiny_spec_dict())
    result = evaluate_candidate(spec, ["zero-cost", "downstream"], digits, seed=0,
                                score_weights={"downstream.acc": 1.0, "zero-cost.score": 0.001},
                                config={"downstream": {"epochs": 5}})
    m = result.metrics
    assert result.score == pytest.approx(m["downstream.acc"] + 0.001 * m["zero-cost.score"])
    # the zero-cost score has no test counterpart and enters both as it is
    assert result.test_score == pytest.approx(m["downstream.test_acc"] + 0.001 * m["zero-cost.score"])
    assert m["test_score"] == result.test_score
    # a score with no test counterpart at all has no test score
    assert evaluate_candidate(spec, ["zero-cost"], digits).test_score is None


def test_repeats_average_seeds_and_report_their_spread(digits):
    from metanet.evaluate.candidate import evaluate_repeated
    spec = ArchSpec.from_dict(tiny_spec_dict())
    settings = {"downstream": {"epochs": 5, "finetune_steps": 3}}
    single = [evaluate_candidate(spec, ["downstream"], digits, config=settings, seed=s) for s in (4, 5)]
    both = evaluate_repeated(spec, ["downstream"], digits, config=settings, seed=4, repeats=2)
    scores = [r.score for r in single]
    assert both.score == pytest.approx(sum(scores) / 2)
    assert both.metrics["score_std"] == pytest.approx(abs(scores[0] - scores[1]) / math.sqrt(2))
    assert both.test_score == pytest.approx(sum(r.test_score for r in single) / 2)
    assert both.metrics["repeats"] == 2


@pytest.mark.parametrize("proxy", ["naswot", "grad_norm"])
def test_zero_cost_proxies_rank_something(digits, proxy):
    spec = ArchSpec.from_dict(tiny_spec_dict())
    result = evaluate_candidate(spec, ["zero-cost"], digits, config={"zero-cost": {"proxy": proxy}})
    assert result.status == "ok" and math.isfinite(result.score) and result.score > 0
    assert result.score == result.metrics["zero-cost.score"]


def test_generalist_without_experts_is_a_clear_failure(digits):
    spec = ArchSpec.from_dict(tiny_spec_dict())
    result = evaluate_candidate(spec, ["generalist"], digits)
    assert result.status == "failed"
    assert result.error["plugin"] == "metanet.plugins.stages"  # the plugin that registered the stage
    assert "run the 'expert' stage before it" in result.error["message"]


def test_bad_settings_raise_before_any_work(digits):
    spec = ArchSpec.from_dict(tiny_spec_dict())
    with pytest.raises(ConfigError, match="stage 'amateur': unknown setting 'epoch'"):
        evaluate_candidate(spec, ["amateur"], digits, config={"amateur": {"epoch": 3}})
    with pytest.raises(UnknownName, match="unknown stage 'pretrain'"):
        evaluate_candidate(spec, ["pretrain"], digits)
    with pytest.raises(ConfigError, match="settings: stage 'expert' is not among the stages amateur"):
        evaluate_candidate(spec, ["amateur"], digits, config={"expert": {"lr": 1.0}})
    # the stage's schema refuses a value no trial could use, before any trial
    with pytest.raises(ConfigError, match="zero-cost.proxy: expected one of naswot, grad_norm, got 'synflow'"):
        evaluate_candidate(spec, ["zero-cost"], digits, config={"zero-cost": {"proxy": "synflow"}})
    for key, value, words in [("batch_size", 0, "at least 1"), ("lr", float("nan"), "NaN"), ("lr", -1, "greater than 0"),
                              ("optimizer", "lion", "one of sgd, adamw, adam"), ("max_steps", 2.5, "whole number")]:
        with pytest.raises(ConfigError, match=f"amateur.{key}: .*{words}"):
            evaluate_candidate(spec, ["amateur"], digits, config={"amateur": {key: value}})


def test_score_weights():
    assert default_score_weights(ALL_STAGES) == {"downstream.acc": 1.0}
    assert default_score_weights(["zero-cost"]) == {"zero-cost.score": 1.0}
    assert default_score_weights(["zero-cost", "amateur"]) == {"amateur.acc": 1.0}
    weights = parse_score("downstream.acc=1, zero-cost.score=0.01")
    assert combine_score({"downstream.acc": 0.5, "zero-cost.score": 100.0}, weights) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="not a number"):
        parse_score("downstream.acc=high")
    with pytest.raises(ConfigError, match="metric 'expert.acc' was not produced"):
        combine_score({"amateur.acc": 1.0}, {"expert.acc": 1.0})


def test_evaluate_command(tmp_path):
    import json

    from click.testing import CliRunner

    from metanet.cli import cli
    path = tmp_path / "arch.json"
    ArchSpec.from_dict(tiny_spec_dict()).save(path)
    result = CliRunner().invoke(cli, ["evaluate", str(path), "--stages", "zero-cost,amateur", "--json",
                                      "--set", "amateur.max_steps=3", "--proxy-resolution", "16"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["status"] == "ok" and data["score"] == data["metrics"]["amateur.acc"]
    assert data["test_score"] == data["metrics"]["amateur.test_acc"]
    # the tiny spec holds attention at s5, which 16px leaves with 1x1 tokens
    assert "fewer than 2x2 tokens" in result.stderr and "s5 (1x1 tokens" in result.stderr
    bad = CliRunner().invoke(cli, ["evaluate", str(path), "--set", "amateur=3"])
    assert bad.exit_code == 2 and "STAGE.SETTING=VALUE" in bad.output
    assert registry() is not None


@pytest.mark.slow
def test_downstream_tasks_are_independent_of_each_other(digits):
    # Two identical tasks with fine-tuning on: each gets the numbers it gets alone, whatever the order.
    from metanet.data import DataBundle
    split = digits.tasks["heldout_digits"]
    spec = ArchSpec.from_dict(tiny_spec_dict())
    settings = {"downstream": {"finetune_steps": 5, "epochs": 5}}

    def metrics(task_names):
        bundle = DataBundle("twins", digits.resolution, digits.sources, {n: split for n in task_names})
        result = evaluate_candidate(spec, ["downstream"], bundle, config=settings)
        assert result.status == "ok", result.error
        return result.metrics

    together, reversed_order = metrics(["a", "b"]), metrics(["b", "a"])
    for name in ("a", "b"):
        alone = metrics([name])
        for key in ("probe_acc", "finetune_acc", "acc", "labels_used"):
            assert together[f"downstream.{name}.{key}"] == alone[f"downstream.{name}.{key}"]
            assert reversed_order[f"downstream.{name}.{key}"] == alone[f"downstream.{name}.{key}"]


def test_schedule_warms_up_decays_clips_and_spares_norms_from_weight_decay():
    import torch.nn as nn

    from metanet.train.loop import LossLog, Schedule
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    cfg = {"lr": 0.1, "optimizer": "sgd", "weight_decay": 0.05, "schedule": "cosine", "warmup": 0.2,
           "min_lr_ratio": 0.01, "clip_grad": 0.5}
    schedule = Schedule([model], cfg, steps=10)
    decays = {p.ndim: g["weight_decay"] for g in schedule.opt.param_groups for p in g["params"]}
    assert decays == {2: 0.05, 1: 0.0}  # weights decay; biases and the norm's parameters do not
    lrs, log = [], LossLog()
    for _ in range(10):
        lrs.append(schedule.lr)
        loss = model(torch.randn(16, 4) * 100).pow(2).mean()
        schedule.step(loss, log)
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]).norm()
        assert grad <= 0.5 + 1e-4  # clipped
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.1)  # warmup over 2 of 10 steps
    assert lrs[2] > lrs[5] > lrs[9] > 0.1 * 0.01  # cosine decay toward lr * min_lr_ratio
    with pytest.raises(ValueError, match="schedule: expected one of cosine, constant"):
        Schedule([model], {**cfg, "schedule": "step"}, steps=10)


@pytest.mark.slow
def test_bf16_mixed_precision_trains_on_cpu(digits, tmp_path):
    import json

    from click.testing import CliRunner

    from metanet.cli import cli
    spec = ArchSpec.from_dict(tiny_spec_dict())
    settings = {"amateur": {"max_steps": 12, "batch_size": 32}}
    fp32 = evaluate_candidate(spec, ["amateur"], digits, config=settings, accelerator="cpu")
    bf16 = evaluate_candidate(spec, ["amateur"], digits, config=settings, accelerator="cpu", precision="bf16-mixed")
    assert bf16.status == "ok", bf16.error
    m = bf16.metrics
    assert m["amateur.train_loss_last"] < 0.8 * m["amateur.train_loss_first"]  # it learns (no stale casts)
    assert m["amateur.train_loss_last"] != fp32.metrics["amateur.train_loss_last"]  # and ran in bf16
    assert abs(m["amateur.acc"] - fp32.metrics["amateur.acc"]) < 0.2
    path = tmp_path / "arch.json"
    spec.save(path)
    ok = CliRunner().invoke(cli, ["evaluate", str(path), "--stages", "zero-cost", "--proxy-resolution", "16",
                                  "--accelerator", "cpu", "--precision", "bf16-mixed", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["runtime"] == {"accelerator": "cpu", "device": "cpu", "precision": "bf16-mixed",
                                                "world_size": 1, "compile": False, "deterministic": True}
    bad = CliRunner().invoke(cli, ["evaluate", str(path), "--precision", "16-mixed", "--accelerator", "cpu"])
    assert bad.exit_code == 2 and "16-mixed needs a GPU" in bad.output
