"""Evaluation a researcher can trust: rewards from validation data only, repeats, proxy fidelity."""
import json
import textwrap

import pytest
from click.testing import CliRunner

from metanet.cli import cli
from metanet.runs.directory import RunDir
from metanet.search.driver import run_search
from metanet.runs.config import SearchConfig

SCRAMBLED = textwrap.dedent('''
    import torch
    from torch.utils.data import TensorDataset
    from metanet import hookimpl

    def load(resolution=32, seed=0):
        from metanet.data import load_digits_bundle
        bundle = load_digits_bundle(resolution, seed)
        for split in [*bundle.sources.values(), *bundle.tasks.values()]:
            x, y = split.test.tensors
            split.test = TensorDataset(x, (y + 1) % split.num_classes)  # every test label wrong
        return bundle

    @hookimpl
    def metanet_register_datasets(register):
        register("digits-wrong-test", load)
''')


def _run(tmp_path, name, **options):
    cfg = SearchConfig.from_dict({"stages": ["downstream"], "settings": {"downstream": {"epochs": 100}},
                                  "proxy_resolution": 16, "trials": 3, "flops": ["400M"],
                                  "out": str(tmp_path / name), **options})
    messages = []
    run_search(cfg, progress=False, echo=messages.append)
    return RunDir.open(tmp_path / name), messages


@pytest.mark.slow
def test_the_strategy_never_receives_a_test_split_metric(tmp_path, monkeypatch):
    # The same search on the same images, once with every test label wrong: what the strategy receives
    # (nni.report_final_result, spied on, not replaced) is identical; only the reported test score moves.
    # A short amateur stage first: a frozen backbone at its initialisation gives features a probe cannot
    # separate (chance on both test sets, and the test below could not fail).
    import nni
    (tmp_path / "wrong_test_plugin.py").write_text(SCRAMBLED)
    monkeypatch.syspath_prepend(str(tmp_path))
    received = {}
    real = nni.report_final_result

    def spy(metric):
        received.setdefault(current, []).append(metric)
        return real(metric)

    monkeypatch.setattr(nni, "report_final_result", spy)
    rows = {}
    for current, data in (("plain", "digits"), ("wrong", "digits-wrong-test")):
        run, _ = _run(tmp_path, current, data=data, plugins=["wrong_test_plugin"], stages=["amateur", "downstream"],
                      settings={"amateur": {"max_steps": 20}, "downstream": {"epochs": 100}}, flops=["100M"])
        rows[current] = run.store.trials()
    assert received["plain"] == received["wrong"] and len(received["plain"]) == 3
    for name in ("plain", "wrong"):
        assert [r["reward"] for r in rows[name]] == received[name]
        for r in rows[name]:
            assert r["score"] == r["reward"] == r["metrics"]["downstream.acc"]  # the validation accuracy
            assert r["test_score"] == r["metrics"]["downstream.test_acc"]
    assert [r["score"] for r in rows["plain"]] == [r["score"] for r in rows["wrong"]]
    plain, wrong = ([r["test_score"] for r in rows[n]] for n in ("plain", "wrong"))
    assert sum(wrong) < sum(plain) - 0.3  # every test label wrong: the reported test score drops
    listed = json.loads(CliRunner().invoke(cli, ["results", str(tmp_path / "plain"), "--json"]).stdout)
    assert {"score", "test_score", "score_std", "repeats"} <= set(listed[0])


def test_repeats_store_mean_and_spread(tmp_path):
    run, _ = _run(tmp_path, "run", trials=1, repeats=2)
    row = run.store.trials()[0]
    assert row["metrics"]["repeats"] == 2 and row["metrics"]["score_std"] >= 0
    assert row["score"] == pytest.approx(row["metrics"]["downstream.acc"])
    table = CliRunner().invoke(cli, ["results", str(tmp_path / "run")]).stdout
    assert "±" in table


def test_a_proxy_that_collapses_attention_grids_is_warned_about_once(tmp_path):
    _, messages = _run(tmp_path, "small", stages=["zero-cost"], settings={}, trials=2)
    # (digits' validation split is small: that warning is its own, and not about tokens)
    warnings = [m for m in messages if m.startswith("warning:") and "tokens" in m]
    assert len(warnings) == 1 and "fewer than 2x2 tokens" in warnings[0] and "s5 (1x1 tokens" in warnings[0]
    _, messages = _run(tmp_path, "default", stages=["zero-cost"], settings={}, trials=1, proxy_resolution=64)
    assert not [m for m in messages if m.startswith("warning:") and "tokens" in m]


def _kendall_tau_b(x, y):
    n = len(x)
    conc = disc = tx = ty = 0
    for i in range(n):
        for j in range(i + 1, n):
            a, b = x[i] - x[j], y[i] - y[j]
            if a == 0 and b == 0:
                continue
            if a == 0:
                tx += 1
            elif b == 0:
                ty += 1
            elif a * b > 0:
                conc += 1
            else:
                disc += 1
    return (conc - disc) / ((conc + disc + tx) * (conc + disc + ty)) ** 0.5


def _spearman(x, y):
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = pos + 1.0
        return r
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


@pytest.mark.slow
def test_proxy_check_correlates_search_scores_with_a_re_evaluation(tmp_path):
    from metanet.data import load_data
    from metanet.plugin.manager import registry
    from metanet.search_spaces.spec import ArchSpec
    from metanet.evaluate.candidate import evaluate_repeated
    run, _ = _run(tmp_path, "run", stages=["zero-cost"], settings={}, trials=6)
    args = ["proxy-check", str(run.path), "--top", "4", "--set", "zero-cost.batch_size=48", "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ranked = sorted(run.store.trials(), key=lambda r: -r["score"])
    # the best half of K, then an even spread over the rest down to the worst
    assert [t["id"] for t in data["trials"]] == [ranked[i]["id"] for i in (0, 1, 2, 5)]
    x = [t["search_score"] for t in data["trials"]]
    y = [t["recheck_score"] for t in data["trials"]]
    assert data["kendall_tau"] == pytest.approx(_kendall_tau_b(x, y))
    assert data["spearman_rho"] == pytest.approx(_spearman(x, y))
    # each re-evaluation is the run's stages with the override, on the run's data and split
    bundle = load_data(registry(), "digits", 16, 0, 0.2)
    spec = ArchSpec.from_dict(data["trials"][0]["spec"])
    direct = evaluate_repeated(spec, ["zero-cost"], bundle, config={"zero-cost": {"batch_size": 48}}, seed=0)
    assert y[0] == pytest.approx(direct.score)
    assert x[0] == ranked[0]["score"] and y[0] != x[0]
    # the same command again resumes from the kept re-evaluations
    assert json.loads(CliRunner().invoke(cli, args).stdout) == data
    table = CliRunner().invoke(cli, args[:-1]).stdout
    assert "Kendall's tau" in table and "Spearman's rho" in table
    # --seed: the same proxy with another split and initialisation (its own re-evaluations)
    other = json.loads(CliRunner().invoke(cli, ["proxy-check", str(run.path), "--top", "4", "--seed", "5",
                                                "--json"]).stdout)
    assert other["check_dir"] != data["check_dir"]
    spec = ArchSpec.from_dict(other["trials"][0]["spec"])
    direct = evaluate_repeated(spec, ["zero-cost"], load_data(registry(), "digits", 16, 5, 0.2), seed=5)
    assert other["trials"][0]["recheck_score"] == pytest.approx(direct.score)


@pytest.mark.parametrize("args, words", [
    (["--top", "2"], "--top"),
    (["--set", "amateur.max_steps=3"], "stage 'amateur' is not among the run's stages zero-cost"),
    (["--flops", "900M"], "the run has no budget"),
])
def test_proxy_check_errors_are_one_line(tmp_path, args, words):
    run, _ = _run(tmp_path, "run", stages=["zero-cost"], settings={}, trials=1)
    result = CliRunner().invoke(cli, ["proxy-check", str(run.path), *args])
    assert result.exit_code in (1, 2) and words in result.output and "Traceback" not in result.output
    few = CliRunner().invoke(cli, ["proxy-check", str(run.path)])
    assert few.exit_code == 1 and "needs at least 3" in few.output
