"""Plugins that misbehave: every hook's failure is one line naming the plugin, the search goes on where it can, and
its exit status says what happened.

Each plugin here is real (a module on sys.path, loaded with ``-p`` as a user's would be); its failure mode is read
from an environment variable when the hook runs, so one module serves every case of a test.
"""
import os
import re
import textwrap

import pytest
from click.testing import CliRunner

from metanet.cli import cli
from metanet.runs.store import TrialStore

SEARCH = ["search", "--stages", "zero-cost", "--proxy-resolution", "16", "--trials", "2", "--flops", "400M"]

FAULTY = textwrap.dedent('''
    import os
    import sys

    import torch.nn as nn

    from metanet import hookimpl


    def misbehave(hook, good):
        """What the hook named in METANET_FAULT does instead of its work; other hooks work."""
        hook_name, _, how = os.environ.get("METANET_FAULT", "").partition("-")
        if hook_name != hook:
            return good()
        if how == "raise":
            raise RuntimeError(f"{hook} is broken")
        if how == "exit":
            sys.exit(3)
        return ("not", "what", "was", "asked")


    class Conv(nn.Module):
        def __init__(self, cin, cout, stride, expand, head_dim, drop_path, grid):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1)

        def forward(self, x):
            return self.conv(x)


    @hookimpl
    def metanet_register_operators(register):
        def factory(cin, cout, stride, expand, head_dim, drop_path, grid):
            return misbehave("factory", lambda: Conv(cin, cout, stride, expand, head_dim, drop_path, grid))

        def cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid):
            return misbehave("cost", lambda: (cin * cout * 9 * hw_out, cin * cout * 9 + cout))
        register("conv3", factory, cost=cost)


    @hookimpl
    def metanet_register_strategies(register):
        def factory(seed=0):
            import nni.nas.strategy as strategy
            return misbehave("strategy", lambda: strategy.Random(seed=seed))
        register("faulty", factory)


    @hookimpl
    def metanet_register_datasets(register):
        def loader(resolution=16, seed=0):
            from metanet.data import load_digits_bundle
            return misbehave("data", lambda: load_digits_bundle(16, seed))
        register("faulty-digits", loader)


    @hookimpl
    def metanet_register_exporters(register):
        def export(model, spec, out_dir, **options):
            path = os.path.join(out_dir, "weights.txt")
            with open(path, "w") as fh:
                fh.write(str(sum(p.numel() for p in model.parameters())))
            return misbehave("export", lambda: path)
        register("faulty", export)


    @hookimpl
    def metanet_trial_started(trial):
        misbehave("observer", lambda: None)
''')


@pytest.fixture
def faulty(tmp_path, monkeypatch):
    module = "faulty_plugin_" + re.sub(r"\W", "_", tmp_path.name)  # one module per test: imports are cached
    (tmp_path / f"{module}.py").write_text(FAULTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def run(fault, *args):
        monkeypatch.setenv("METANET_FAULT", fault)
        return CliRunner().invoke(cli, ["-p", module, *args])
    run.module = module
    return run


def _one_error(result) -> str:
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    return errors[0]


def _spec_file(path, op="conv3"):
    import json

    from conftest import tiny_spec_dict
    path.write_text(json.dumps(tiny_spec_dict(s2_op=op, s2_dsm="block")))
    return str(path)


@pytest.mark.parametrize("fault, option, words", [
    ("strategy-raise", ["--strategy", "faulty"], "strategy 'faulty': factory raised RuntimeError: strategy is broken"),
    ("strategy-exit", ["--strategy", "faulty"], "strategy 'faulty': factory called sys.exit(3)"),
    ("strategy-wrong", ["--strategy", "faulty"], "strategy 'faulty': factory returned tuple, not an NNI strategy"),
    ("data-raise", ["--data", "faulty-digits"], "dataset 'faulty-digits': loader raised RuntimeError: data is broken"),
    ("data-exit", ["--data", "faulty-digits"], "dataset 'faulty-digits': loader called sys.exit(3)"),
    ("data-wrong", ["--data", "faulty-digits"], "dataset 'faulty-digits': loader returned tuple, not a "
                                                "metanet.data.DataBundle"),
])
def test_a_strategy_or_data_loader_that_fails_is_one_line_before_the_run_exists(faulty, tmp_path, fault, option,
                                                                                 words):
    result = faulty(fault, *SEARCH, *option, "--out", "run")
    assert result.exit_code == 1
    assert f"plugin '{faulty.module}': {words}" in _one_error(result)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("how, words", [("raise", "export raised RuntimeError: export is broken"),
                                        ("exit", "export called sys.exit(3)"),
                                        ("wrong", "returned tuple, not the path it wrote")])
def test_an_exporter_that_fails_leaves_no_export(faulty, tmp_path, how, words):
    assert faulty("", *SEARCH, "--out", "run").exit_code == 0
    result = faulty(f"export-{how}", "export", "run", "--out", "best", "--format", "faulty")
    assert result.exit_code == 1
    assert f"plugin '{faulty.module}': exporter 'faulty': {words}" in _one_error(result)
    assert not (tmp_path / "best").exists() and not list(tmp_path.glob(".metanet-export-*"))
    assert faulty("", "export", "run", "--out", "best", "--format", "faulty").exit_code == 0
    assert (tmp_path / "best" / "weights.txt").read_text().isdigit()


@pytest.mark.parametrize("fault, words", [
    ("factory-raise", "operator 'conv3': factory(24, 32, 2, 2) raised RuntimeError: factory is broken"),
    ("factory-exit", "operator 'conv3': factory(24, 32, 2, 2) called sys.exit(3)"),
    ("factory-wrong", "operator 'conv3': factory returned tuple, not a torch.nn.Module"),
    ("cost-raise", "operator 'conv3': cost formula raised RuntimeError: cost is broken"),
    ("cost-exit", "operator 'conv3': cost formula called sys.exit(3)"),
    ("cost-wrong", "operator 'conv3': cost formula returned ('not', 'what', 'was', 'asked')"),
])
def test_an_operator_that_fails_is_one_line_naming_it(faulty, tmp_path, fault, words):
    spec = _spec_file(tmp_path / "arch.json")
    command = ["flops", spec] if fault.startswith("cost") else ["build", spec, "--resolution", "32"]
    result = faulty(fault, *command)
    assert result.exit_code == 1
    assert f"plugin '{faulty.module}': {words}" in _one_error(result)


def test_an_observer_that_exits_ends_nothing(faulty, tmp_path):
    result = faulty("observer-exit", *SEARCH, "--out", "run")
    assert result.exit_code == 0, result.output
    assert result.output.count(f"warning: plugin '{faulty.module}': metanet_trial_started called sys.exit(3) "
                               "(reported once)") == 1, result.output
    rows = TrialStore(tmp_path / "run" / "trials.sqlite").trials()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)


# -- a search that finished with some trials failed says so in its exit status ---------------------------

FLAKY = textwrap.dedent('''
    import os
    import time

    from metanet import hookimpl


    @hookimpl
    def metanet_register_stages(register):
        register("flaky", defaults={}, score_metric="seen")


    @hookimpl
    def metanet_run_stage(stage, context):
        """The first architecture it sees fails, every time (METANET_FLAKY says how); the others score."""
        if stage != "flaky":
            return None
        marker, spec = os.environ["METANET_FLAKY_MARKER"], context.spec.to_json()
        if not os.path.exists(marker):
            with open(marker, "w") as fh:
                fh.write(spec)
        if open(marker).read() != spec:
            return {"seen": float(sum(p.numel() for p in context.model.parameters()))}
        how = os.environ.get("METANET_FLAKY", "raise")
        if how == "sleep":
            time.sleep(600)
        if how in ("os._exit", "sleep"):
            os._exit(7)
        raise RuntimeError("the first trial is unlucky")
''')


def test_a_search_with_some_failed_trials_exits_3_with_a_warning(tmp_path, monkeypatch):
    (tmp_path / "flaky_stage.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("METANET_FLAKY_MARKER", str(tmp_path / "marker"))
    result = CliRunner().invoke(cli, ["-p", "flaky_stage", "search", "--stages", "zero-cost,flaky",
                                      "--proxy-resolution", "16", "--trials", "3", "--flops", "400M",
                                      "--out", str(tmp_path / "run"), "--json"])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output and not re.search(r"^Error:", result.output, re.M)
    warning = [line for line in result.output.splitlines() if line.startswith("warning: 1 of 3 trials failed")]
    assert len(warning) == 1 and "the first trial is unlucky" in warning[0]
    rows = TrialStore(tmp_path / "run" / "trials.sqlite").trials()
    assert [r["status"] for r in rows] == ["failed", "ok", "ok"]


@pytest.mark.slow
def test_a_trial_process_that_dies_in_a_stage_fails_that_trial_naming_the_stage(tmp_path):
    """ts engine: the stage ends its trial process with os._exit; NNI marks the trial failed, the search marks its
    row failed naming the stage and plugin (it stayed 'running' before, and the search ran experiment after
    experiment for trials that never finished), and goes on."""
    import subprocess
    import sys
    (tmp_path / "flaky_stage.py").write_text(FLAKY)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "METANET_FLAKY_MARKER": str(tmp_path / "marker"), "METANET_FLAKY": "os._exit"}
    proc = subprocess.run([sys.executable, "-m", "metanet", "-p", "flaky_stage", "search", "--engine", "ts",
                           "--stages", "zero-cost,flaky", "--proxy-resolution", "16", "--trials", "2", "--flops",
                           "400M", "--port", str(18000 + os.getpid() % 1000), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    rows = TrialStore(tmp_path / "run" / "trials.sqlite").trials()
    assert sorted(r["status"] for r in rows) == ["failed", "ok"]
    failed = next(r for r in rows if r["status"] == "failed")
    assert failed["error"].startswith("the trial process ended without a result in stage flaky (plugin flaky_stage)")


# -- the sequential engine: a trial that ends the search process every time is failed after three resumes ------

def _search_process(tmp_path, *args, how="os._exit"):
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "METANET_FLAKY_MARKER": str(tmp_path / "marker"), "METANET_FLAKY": how}
    return subprocess.Popen([sys.executable, "-m", "metanet", "-p", "flaky_stage", "search", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)


@pytest.mark.slow
def test_a_trial_that_kills_the_search_every_time_is_failed_after_three_resumes(tmp_path):
    (tmp_path / "flaky_stage.py").write_text(FLAKY)
    run = tmp_path / "run"
    first = _search_process(tmp_path, "--stages", "zero-cost,flaky", "--proxy-resolution", "16", "--trials", "2",
                            "--flops", "400M", "--out", str(run))
    assert first.wait(300) == 7
    for _ in range(3):  # each resume runs the in-flight trial again first, and dies in it again
        assert _search_process(tmp_path, "--resume", str(run)).wait(300) == 7
    last = _search_process(tmp_path, "--resume", str(run))
    out, err = last.communicate(timeout=300)
    assert last.returncode == 3, out + err
    assert "resume: trial 4: the search process died 4 times while this trial ran in stage flaky (plugin " \
           "flaky_stage)" in err
    rows = TrialStore(run / "trials.sqlite").trials()
    assert [r["status"] for r in rows] == ["failed", "ok"]  # the search went on to its second trial
    assert rows[0]["error"].startswith("the search process died 4 times while this trial ran in stage flaky")


@pytest.mark.slow
def test_sigterm_stops_a_sequential_search_and_its_trial_runs_again_uncounted(tmp_path):
    import signal
    import time
    (tmp_path / "flaky_stage.py").write_text(FLAKY)
    run = tmp_path / "run"
    proc = _search_process(tmp_path, "--stages", "zero-cost,flaky", "--proxy-resolution", "16", "--trials", "2",
                           "--flops", "400M", "--out", str(run), how="sleep")
    deadline = time.monotonic() + 120
    while not (tmp_path / "marker").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "interrupted (SIGTERM)" in err and "Traceback" not in err, err
    rows = TrialStore(run / "trials.sqlite").trials()
    assert [r["status"] for r in rows] == ["running"] and rows[0]["stage"] == {
        "stage": "flaky", "plugin": "flaky_stage", "interrupted": True}
    store = TrialStore(run / "trials.sqlite")
    from metanet.runs.store import spec_key
    assert store.counter(rows[0]["budget"], f"restarts:{spec_key(rows[0]['spec'])}") == 0
