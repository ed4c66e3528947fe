"""Reproducible evaluation on real images: the same command, seed and data give the same numbers; a task's
numbers do not depend on other tasks, their order or the stages before; a stored trial re-runs exactly."""
import json
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import extract_cifar, tiny_spec_dict
from metanet.cli import cli
from metanet.search_spaces.spec import ArchSpec

RES = "32"
SHORT = {"amateur": {"max_steps": 4, "batch_size": 8}, "expert": {"max_steps": 2, "batch_size": 8},
         "generalist": {"max_steps": 2, "batch_size": 8},
         "downstream": {"finetune_steps": 3, "batch_size": 8, "epochs": 3}}


def quick(stages: str) -> list[str]:
    """Short schedules for the stages named: --set flags, and the proxy resolution."""
    sets = [f"{stage}.{k}={v}" for stage in stages.split(",") for k, v in SHORT.get(stage, {}).items()]
    return ["--proxy-resolution", RES, *[a for s in sets for a in ("--set", s)]]


@pytest.fixture(scope="module")
def intern(tmp_path_factory):
    """INTERN's layout from real images: upstream/objects (3 classes), downstream/pets and downstream/ships."""
    root = tmp_path_factory.mktemp("repro") / "data"
    extract_cifar(root / "upstream" / "objects", {"train": 16, "test": 6}, ("airplane", "automobile", "truck"))
    extract_cifar(root / "downstream" / "pets", {"train": 12, "test": 6}, ("cat", "dog"))
    extract_cifar(root / "downstream" / "ships", {"train": 12, "test": 6}, ("ship", "horse"))
    return root


@pytest.fixture(scope="module")
def arch(tmp_path_factory):
    path = tmp_path_factory.mktemp("arch") / "arch.json"
    ArchSpec.from_dict(tiny_spec_dict()).save(path)
    return str(path)


def _evaluate(arch, data, stages, *extra):
    result = CliRunner().invoke(cli, ["evaluate", arch, "--data", str(data), "--stages", stages, *quick(stages),
                                      *extra, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    out.pop("seconds")  # wall time: the one number that is not a result
    return out


def _copy_without(src, dest, *tasks):
    shutil.copytree(src, dest)
    for t in tasks:
        shutil.rmtree(dest / "downstream" / t)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("stages", ["amateur,downstream", "zero-cost", "amateur,expert,generalist"])
def test_the_same_evaluation_twice_gives_identical_numbers(intern, arch, stages):
    first = _evaluate(arch, intern, stages)
    second = _evaluate(arch, intern, stages)
    assert first["status"] == "ok" and first == second  # every metric, to the last digit


@pytest.mark.slow
def test_the_same_command_in_two_processes_gives_identical_json(intern, arch):
    # the command, each time in a fresh interpreter (nothing shared but the files)
    cmd = [sys.executable, "-m", "metanet", "evaluate", arch, "--data", str(intern), "--stages", "amateur,downstream",
           "--set", "amateur.max_steps=5", "--set", "downstream.finetune_steps=10", "--proxy-resolution", RES,
           "--set", "amateur.batch_size=8", "--json"]
    runs = [subprocess.run(cmd, capture_output=True, text=True, timeout=600) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    a, b = (json.loads(r.stdout) for r in runs)
    a.pop("seconds"), b.pop("seconds")
    assert a == b and len(a["metrics"]) > 30


@pytest.mark.slow
def test_the_supernet_stage_twice_gives_identical_numbers(arch, tmp_path):
    from test_supernet import BUDGET, TRAIN
    out = tmp_path / "sn"
    assert CliRunner().invoke(cli, [*TRAIN, "--steps", "2", "--save-every", "2", "--out", str(out)]).exit_code == 0
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.supernet_model import sample_specs
    from metanet.search_spaces.unified import DEFAULT_SPACE
    import random
    spec = tmp_path / "spec.json"
    sample_specs(budget_space(DEFAULT_SPACE, BUDGET), random.Random(1)).save(spec)
    args = ["evaluate", str(spec), "--stages", "supernet", "--set", f"supernet.path={out}", "--proxy-resolution", RES,
            "--json"]
    runs = [json.loads(CliRunner().invoke(cli, args).stdout) for _ in range(2)]
    for r in runs:
        r.pop("seconds")
    assert runs[0]["status"] == "ok" and runs[0] == runs[1]


@pytest.mark.slow
def test_a_task_does_not_depend_on_the_other_tasks_or_their_order(intern, arch, tmp_path):
    alone = _copy_without(intern, tmp_path / "alone", "ships")
    # an identical copy of the task, listed before it
    shutil.copytree(intern / "downstream" / "pets", alone.parent / "twin" / "downstream" / "aaa_pets")
    shutil.copytree(intern / "upstream", alone.parent / "twin" / "upstream")
    shutil.copytree(intern / "downstream" / "pets", alone.parent / "twin" / "downstream" / "pets")
    one = _evaluate(arch, alone, "amateur,downstream")["metrics"]
    two = _evaluate(arch, alone.parent / "twin", "amateur,downstream")["metrics"]
    three = _evaluate(arch, intern, "amateur,downstream")["metrics"]
    mine = {k: v for k, v in one.items() if k.startswith("downstream.pets.")}
    assert mine and all(two[k] == v and three[k] == v for k, v in mine.items())
    # an upstream source's numbers do not depend on the downstream folder
    upstream = {k: v for k, v in one.items() if k.startswith("amateur.")}
    assert all(two[k] == v and three[k] == v for k, v in upstream.items())


def test_stages_before_a_stage_change_nothing_it_does_not_consume(intern, arch):
    alone = _evaluate(arch, intern, "amateur")["metrics"]
    after = _evaluate(arch, intern, "zero-cost,amateur")["metrics"]
    assert {k: after[k] for k in alone} == alone  # the zero-cost stage drew its own batch, at its own seed


@pytest.mark.slow
def test_a_stored_trial_re_runs_exactly_and_a_changed_dataset_is_named(intern, tmp_path):
    data = shutil.copytree(intern, tmp_path / "data")
    out = tmp_path / "run"
    search = CliRunner().invoke(cli, ["search", "--data", str(data), "--out", str(out), "--trials", "2", "--flops",
                                      "400M", "--stages", "zero-cost,amateur,downstream", *quick("amateur,downstream"),
                                      "--json"])
    assert search.exit_code == 0, search.output
    rows = json.loads(CliRunner().invoke(cli, ["results", str(out), "--json"]).stdout)
    repro = rows[0]["repro"]
    assert repro["seed"] == 0 and repro["settings"]["amateur"]["max_steps"] == 4  # resolved with the defaults
    assert repro["settings"]["amateur"]["lr"] == 2e-3 and repro["data"]["images"] > 0 and repro["data"]["listing"]
    assert {"metanet", "torch", "timm", "python"} <= set(repro["versions"])
    for row in rows:
        again = CliRunner().invoke(cli, ["evaluate", "--rerun", str(out), str(row["id"]), "--json"])
        assert again.exit_code == 0, again.output
        report = json.loads(again.stdout)
        assert report["matches"] and report["differences"] == {} and report["metrics"] == len(row["metrics"])
    text = CliRunner().invoke(cli, ["evaluate", "--rerun", str(out), str(rows[0]["id"])])
    assert text.exit_code == 0 and "reproduced" in text.output
    refused = CliRunner().invoke(cli, ["evaluate", "--rerun", str(out), "1", "--seed", "3"])
    assert refused.exit_code == 2 and "give no SPEC or other evaluation option (got --seed)" in refused.output
    # the data changes under the run: the re-run says so, in one line, and fails
    shutil.copy(next((data / "upstream" / "objects" / "train" / "truck").glob("*.jpg")),
                data / "upstream" / "objects" / "train" / "truck" / "extra.jpg")
    changed = CliRunner().invoke(cli, ["evaluate", "--rerun", str(out), str(rows[0]["id"])])
    assert changed.exit_code == 1 and "the data changed since" in changed.output
