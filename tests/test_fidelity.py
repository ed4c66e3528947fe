"""Multi-fidelity search: the ladder of rungs, continuation that equals training straight on, every rung
stored, the strategy told the highest rung, resume after SIGKILL mid-rung, and steps asked being steps trained."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from metanet.cli import cli
from metanet.search.fidelity import Ladder, asha_continues, brackets
from metanet.runs.directory import RunDir
from metanet.search_spaces.spec import ArchSpec
from metanet.search.trial import _evaluate, trial_settings

# 9 trials on the sh ladder 2 -> 6 -> 18 steps of the amateur stage, small enough for a test
LADDER = ["--trials", "9", "--fidelity", "2:18", "--eta", "3", "--stages", "zero-cost,amateur", "--flops", "100M",
          "--proxy-resolution", "16", "--set", "amateur.batch_size=8"]


def _rows(out):
    return json.loads(CliRunner().invoke(cli, ["results", str(out), "--json"]).stdout)


def _ladder(rows):
    counts = {}
    for r in rows:
        for g in r["rungs"] or []:
            if g.get("score") is not None:
                counts[g["steps"]] = counts.get(g["steps"], 0) + 1
    return counts


def test_rungs_brackets_and_the_asha_rule():
    assert Ladder(20, 180, 3).rungs == [20, 60, 180] and Ladder(2, 18, 3).rungs == [2, 6, 18]
    assert Ladder(10, 100, 3).rungs == [11, 33, 100]  # anchored at MAX, the first rung at least MIN
    assert [Ladder(20, 180, 3).kept(9, k) for k in range(3)] == [9, 3, 1]
    assert [Ladder(20, 180, 3).kept(6, k) for k in range(3)] == [6, 2, 1]
    sh, hb = brackets(Ladder(20, 180, 3), "sh"), brackets(Ladder(20, 180, 3), "hyperband")
    assert [next(sh) for _ in range(2)] == [(0, 9), (0, 9)]
    assert [next(hb) for _ in range(4)] == [(0, 9), (1, 5), (2, 3), (0, 9)]  # Li et al.'s brackets for s_max = 2
    assert asha_continues(0.5, [0.5], 3)  # the first at a rung goes on
    assert not asha_continues(0.4, [0.4, 0.9], 3) and asha_continues(0.9, [0.4, 0.9], 3)
    assert asha_continues(0.8, [0.1, 0.2, 0.8], 3) and not asha_continues(0.2, [0.1, 0.2, 0.8], 3)


@pytest.mark.slow
def test_successive_halving_climbs_the_ladder_continuing_from_checkpoints(tmp_path):
    import fidelity_probe_plugin as probe
    probe.RECEIVED.clear()
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["-p", "fidelity_probe_plugin", "search", "--out", str(out), *LADDER,
                                      "--strategy", "recording", "--json"])
    assert result.exit_code == 0, result.output
    assert "fidelity: sh, eta 3, rungs 2, 6, 18 steps" in result.stderr
    rows = _rows(out)
    assert len(rows) == 9 and _ladder(rows) == {2: 9, 6: 3, 1 * 18: 1}  # 9 at 2 steps, 3 to 6, 1 to 18
    top = rows[0]  # the best is taken from the highest rung reached
    assert [g["steps"] for g in top["rungs"]] == [2, 6, 18] and [g["trained"] for g in top["rungs"]] == [2, 4, 12]
    assert set(top["rungs"][0]) >= {"steps", "trained", "score", "test_score", "seconds"}
    assert top["score"] == top["rungs"][-1]["score"] == top["metrics"]["amateur.acc"]
    assert top["metrics"]["amateur.train_steps"] == 18
    # the ones promoted to 6 steps were the best three at 2 steps
    at2 = sorted(rows, key=lambda r: -r["rungs"][0]["score"])
    assert {r["id"] for r in at2[:3]} == {r["id"] for r in rows if len(r["rungs"]) >= 2}
    # continued 2 -> 6 -> 18 equals training straight to 18 steps (the schedule is over the ladder's 18)
    run = RunDir.open(out)
    straight = _evaluate(ArchSpec.from_dict(top["spec"]), trial_settings(run.config, run.path, top["budget"]),
                         trial_id=top["id"], fidelity=(18, 18))
    assert straight["metrics"] == {k: v for k, v in top["metrics"].items()}
    # the strategy received each trial's highest-rung score, once, after its bracket
    received = {}
    for sample, metric in probe.RECEIVED:  # (out-of-band proposals get the screen's penalty, as always)
        received.setdefault(json.dumps(sample, sort_keys=True), []).append(metric)
    for r in rows:
        assert received[json.dumps(r["proposal"], sort_keys=True)] == [pytest.approx(r["reward"])]
    assert received[json.dumps(top["proposal"], sort_keys=True)] == [top["rungs"][-1]["score"]]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())  # dropped when done
    table = CliRunner().invoke(cli, ["results", str(out)]).output
    assert "ladder 100M: 9 at 2 steps, 3 at 6 steps, 1 at 18 steps" in table and "2/6/18" in table


@pytest.mark.slow
def test_asha_decides_after_each_rung_and_hyperband_starts_brackets_higher(tmp_path):
    asha = tmp_path / "asha"
    result = CliRunner().invoke(cli, ["search", "--out", str(asha), *LADDER, "--scheduler", "asha", "--trials", "5"])
    assert result.exit_code == 0, result.output
    rows = sorted(_rows(asha), key=lambda r: r["id"])
    assert [g["steps"] for g in rows[0]["rungs"]] == [2, 6, 18]  # the first at every rung goes on
    for r in rows:  # every rung a trial stopped at says why
        done = [g for g in r["rungs"] if g.get("score") is not None]
        assert all(g.get("continue") is True for g in done[:-1])
        assert len(done) == 3 or done[-1].get("continue") is False
    hb = tmp_path / "hb"
    result = CliRunner().invoke(cli, ["search", "--out", str(hb), *LADDER, "--scheduler", "hyperband",
                                      "--trials", "11"])
    assert result.exit_code == 0, result.output
    rows = _rows(hb)
    first = {r["bracket"]: min(g["steps"] for g in r["rungs"]) for r in rows}
    assert first == {0: 2, 1: 6}  # bracket 0 of 9 at 2 steps, bracket 1 (2 of its 5 trials) straight at 6
    assert _ladder([r for r in rows if r["bracket"] == 1]) == {6: 2, 18: 1}


@pytest.mark.slow
def test_sigkill_mid_rung_then_resume_loses_no_finished_rung(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "metanet", "search", "--out", str(out), *LADDER]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    # wait until a continuation is under way: the bracket's rung 0 is done and a checkpoint is being continued
    line = ""
    while time.time() < deadline and "continued to rung 2" not in line:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
    assert "continued to rung 2" in line, "the search never reached the top rung"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["id"]: [g for g in r["rungs"] if g.get("score") is not None] for r in _rows(out)}
    assert sum(len(v) for v in before.values()) == 9 + 3  # rungs 0 and 1 were finished before the kill
    result = CliRunner().invoke(cli, ["search", "--resume", str(out)])
    assert result.exit_code == 0, result.output
    rows = _rows(out)
    assert _ladder(rows) == {2: 9, 6: 3, 18: 1}
    for r in rows:  # no finished rung was evaluated again: the same numbers, the same number of entries
        assert [g for g in r["rungs"] if g.get("score") is not None][:len(before[r["id"]])] == before[r["id"]]


@pytest.mark.slow
def test_steps_asked_are_steps_trained(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--out", str(out), "--trials", "1", "--stages", "amateur",
                                      "--flops", "100M", "--proxy-resolution", "16", "--set", "amateur.max_steps=1000",
                                      "--set", "amateur.batch_size=64"])
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stderr.splitlines() if "max_steps=1000 asked" in line]
    assert len(notes) == 1 and "caps it at" in notes[0] and "amateur.epochs=inf" in notes[0]
    m = _rows(out)[0]["metrics"]
    assert m["amateur.capped_by_epochs"] == 1 and m["amateur.steps_asked"] == 1000 and m["amateur.train_steps"] < 1000
    # a fidelity in steps is never capped by epochs
    ladder = tmp_path / "ladder"
    result = CliRunner().invoke(cli, ["search", "--out", str(ladder), *LADDER, "--trials", "1",
                                      "--set", "amateur.epochs=0.01"])
    assert result.exit_code == 0, result.output
    assert _rows(ladder)[0]["metrics"]["amateur.train_steps"] == 18


@pytest.mark.parametrize("args, words", [
    (["--scheduler", "asha"], "scheduler: needs --fidelity MIN:MAX"),
    (["--fidelity", "20"], "expected MIN:MAX training steps"),
    (["--fidelity", "30:20"], "need 1 <= MIN < MAX"),
    (["--fidelity", "2:18", "--stages", "zero-cost"], "none of the stages zero-cost trains in steps"),
    (["--fidelity", "2:18", "--engine", "ts", "--scheduler", "sh"], "use --scheduler asha"),
    (["--fidelity", "2:18", "--repeats", "2"], "--repeats > 1 is not supported with --fidelity"),
    (["--fidelity", "2:18", "--eta", "1"], "--eta"),
])
def test_bad_fidelity_options_are_one_line(tmp_path, args, words):
    result = CliRunner().invoke(cli, ["search", "--out", str(tmp_path / "run"), *args])
    assert result.exit_code in (1, 2) and words in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
