"""Bad input across every command, and the faults a run directory must survive.

Each bad input must fail with a non-zero status and one ``Error:`` line naming the field or file,
print no traceback, and create or change nothing on disk. The fault tests kill searches and exports
with SIGKILL and run two writers on one run: nothing finished may be lost or duplicated, and an export
folder is always the old one or the new one, complete.
"""
import hashlib
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from metanet.cli import cli
from metanet.errors import RunError
from metanet.runs.directory import RunDir
from metanet.search.driver import run_search
from metanet.runs.config import SearchConfig
from metanet.runs.store import TrialStore

FAST = {"stages": ["zero-cost"], "proxy_resolution": 16, "flops": [400_000_000]}
MARKER = "metanet_marker_plugin"  # a plugin module that only an edited config.json names
SEARCH = ["search", "--stages", "zero-cost", "--proxy-resolution", "16", "--trials", "1", "--out", "new"]


def _spec(**overrides):
    from conftest import tiny_spec_dict
    return json.dumps(tiny_spec_dict(**overrides))


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace with a good run, damaged copies of it, and the files the bad inputs name."""
    ws = tmp_path_factory.mktemp("ws")
    run_search(SearchConfig.from_dict({**FAST, "trials": 1, "out": str(ws / "run")}), progress=False,
               echo=lambda m: None)
    good_config = (ws / "run" / "config.json").read_text()
    store = (ws / "run" / "trials.sqlite").read_bytes()
    for name, config, data in [("garbage", good_config, b"this is not a database" * 50),
                               ("trunc", good_config, store[:len(store) // 3]),
                               ("empty_store", good_config, b""),
                               ("badjson", "{not json", store),
                               ("listcfg", "[1, 2]", store),
                               ("badtype", json.dumps({**json.loads(good_config), "trials": 1.7}), store),
                               ("nostore", good_config, None),
                               ("plugged", json.dumps({**json.loads(good_config), "plugins": [MARKER]}), store)]:
        (ws / name).mkdir()
        (ws / name / "config.json").write_text(config)
        if data is not None:
            (ws / name / "trials.sqlite").write_bytes(data)
    (ws / "emptydir").mkdir()
    (ws / "afile.txt").write_text("a file")
    (ws / "exported").mkdir()
    (ws / "exported" / "keep.txt").write_text("mine")
    (ws / "linked").symlink_to(ws / "exported")
    files = {
        "badfield.json": _spec(s2_op="conv9x9"), "huge.json": _spec(s1_depth=10 ** 9),
        "negwidth.json": _spec(s0_width=-5), "version.json": _spec(version=99), "list.json": "[]",
        "garbage.json": "{nope", "empty.json": "",
        "c_float.yaml": "trials: 1.7", "c_stages.yaml": "stages: 5", "c_seed.yaml": "seed: abc",
        "c_unknown.yaml": "colour: blue", "c_band.yaml": "band: [0.5, .inf]", "c_settings.yaml": "settings: {zero-cost: 5}",
        "c_flops.yaml": "flops: [true]", "c_list.yaml": "- a\n- b", "c_garbage.yaml": "a: [b\n", "c_bad.toml": "x = = 1",
        "c_score.yaml": "score: 5", "c_negative.yaml": "settings: {zero-cost: {batch_size: -3}}", "c_strategy.yaml": "strategy: annealing", "c_webhost.yaml": "web_host: [1]",
        "machines.yaml": "machines: []", "weights.pth": "not a checkpoint",
        # were it ever imported (it is on sys.path in these tests), it would leave a file behind
        f"{MARKER}.py": "import pathlib\npathlib.Path(__file__).with_name('imported.txt').write_text('imported')\n",
    }
    for name, text in files.items():
        (ws / name).write_text(text)
    # not UTF-8, nested past Python's recursion limit, an integer past its digit limit
    (ws / "latin1.json").write_bytes(b'{"version": 1, "name": "caf\xe9"}')
    (ws / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (ws / "bigint.json").write_text('{"version": 1, "stem_width": ' + "9" * 6000 + "}")
    (ws / "c_latin1.yaml").write_bytes(b"seed: 1 # caf\xe9\n")
    (ws / "big.json").write_text(" " * (2 << 20))
    (ws / "c_deep.yaml").write_text("seed: " + "[" * 100_000)
    return ws


SPACE = [
    (["space", "show", "--space", "nope"], "nope"),
    (["space", "show", "--resolution", "0"], "--resolution"),
    (["space", "show", "--resolution", "abc"], "--resolution"),
    (["space", "show", "--flops", "abc"], "abc"),
    (["space", "show", "--flops", "10M"], "10M"),
    (["space", "show", "--flops", "600M", "--band", "1,0.5"], "--band"),
    (["space", "show", "--flops", "600M", "--band", "0.5,inf"], "--band"),
    (["space", "show", "--flops", "600M", "--band", "nan,1"], "--band"),
    (["space", "show", "--band", "0.5"], "--band"),
    (["space", "show", "--band", "a,b"], "--band"),
    (["space", "show", "--bogus"], "--bogus"),
    (["space", "sample", "--seed", "abc"], "--seed"),
    (["space", "sample", "--flops", "-1"], "--flops"),
    (["space", "sample", "--flops", "1.5X"], "--flops"),
    (["space", "sample", "--flops", "0"], "--flops"),
    (["space", "sample", "--band", "0,1"], "--band"),
    (["space", "sample", "--band", "0.5,1.5"], "--band"),
    (["space", "sample", "--space", "nope"], "nope"),
    (["space", "sample", "--flops", "1T"], "1T"),
    (["space", "nope"], "nope"),
]

SPECS = [
    (["flops", "latin1.json"], "not UTF-8"),
    (["flops", "/dev/zero"], "/dev/zero: not a regular file"),  # read as a file, it never ends
    (["flops", "big.json"], "too large for a spec"),
    (["flops", "deep.json"], "nested too deeply"),
    (["flops", "bigint.json"], "bigint.json"),
    (["build", "deep.json"], "deep.json"),
    (["flops", "missing.json"], "missing.json"),
    (["flops", "timm:not_a_model"], "not_a_model"),
    (["flops", "metanet_b4", "--resolution", "0"], "--resolution"),
    (["flops", "garbage.json"], "garbage.json"),
    (["flops", "empty.json"], "empty.json"),
    (["flops", "list.json"], "list.json"),
    (["flops", "badfield.json"], "s2_op"),
    (["flops", "huge.json"], "s1_depth"),
    (["flops", "negwidth.json"], "s0_width"),
    (["flops", "version.json"], "version"),
    (["flops", "emptydir"], "emptydir"),
    (["build", "missing.json"], "missing.json"),
    (["build", "metanet_b4", "--num-classes", "-1"], "--num-classes"),
    (["build", "badfield.json"], "s2_op"),
    (["build", "huge.json"], "s1_depth"),
    (["build", "metanet_b4", "--resolution", "8"], "--resolution"),
    # sizes no machine holds: refused from the spec before anything is allocated
    (["build", "metanet_b4", "--resolution", "100000"], "resolution: metanet_b4 at 100,000 px needs at least"),
    (["build", "metanet_b4", "--num-classes", "100000000000"], "num_classes: a classifier of 100,000,000,000"),
    (["flops", "metanet_b4", "--count", "--resolution", "100000"], "resolution: metanet_b4 at 100,000 px"),
    (["flops", "timm:resnet18", "--resolution", "200000"], "resolution: 200,000 px images need at least"),
    (["presets", "--bogus"], "--bogus"),
    (["plugins", "extra"], "extra"),
    (["plugins", "--stage", "nope"], "nope"),
    (["-p", "no_such_plugin_module_xyz", "presets"], "no_such_plugin_module_xyz"),
    (["nope-command"], "nope-command"),
]

EVALUATE = [
    (["evaluate", "missing.json"], "missing.json"),
    (["evaluate", "metanet_b4", "--stages", "nope"], "nope"),
    (["evaluate", "metanet_b4", "--stages", ""], "stages"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost,zero-cost"], "listed twice"),
    (["evaluate", "metanet_b4", "--set", "bad"], "STAGE.SETTING"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--set", "zero-cost.batch_size=abc"], "zero-cost.batch_size"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--set", "zero-cost.nope=1"], "nope"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--data", "nope_dataset"], "nope_dataset"),
    (["evaluate", "metanet_b4", "--proxy-resolution", "4"], "--proxy-resolution"),
    (["evaluate", "metanet_b4", "--val-fraction", "1.5"], "--val-fraction"),
    (["evaluate", "metanet_b4", "--repeats", "0"], "--repeats"),
    (["evaluate", "metanet_b4", "--accelerator", "tpu"], "--accelerator"),
    (["evaluate", "metanet_b4", "--precision", "8"], "--precision"),
    (["evaluate", "metanet_b4", "--devices", "0"], "--devices"),
    (["evaluate", "metanet_b4", "--score", "zero-cost.score=abc"], "score"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--score", "nope.acc"], "nope.acc"),  # before training
    (["evaluate", "metanet_b4", "--seed", "abc"], "--seed"),
    # numbers no trial could use, refused by the stage's schema before any work
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.batch_size=0"], "amateur.batch_size"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.lr=nan"], "amateur.lr"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.lr=-1"], "amateur.lr"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.max_steps=-5"], "amateur.max_steps"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.warmup=1"], "amateur.warmup"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.optimizer=lion"], "amateur.optimizer"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--set", "amateur.epochs=inf", "--set",
      "amateur.max_steps=0"], "amateur.epochs"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--set", "zero-cost.proxy=synflow"], "zero-cost.proxy"),
    (["evaluate", "metanet_b4", "--stages", "downstream", "--set", "downstream.tasks=nope"],
     "downstream.tasks: data 'digits' has no task 'nope' (it has heldout_digits)"),
    (["evaluate", "metanet_b4", "--stages", "amateur,downstream", "--set", "downstream.fraction=0"],
     "downstream.fraction"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--score", "zero-cost.score=nan"], "score"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--score", "zero-cost.score=0"], "every weight is 0"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--score", "zero-cost.score=1,zero-cost.score=2"],
     "metric 'zero-cost.score' is given twice"),
    (["evaluate", "metanet_b4", "--stages", "zero-cost", "--proxy-resolution", "100000"],
     "proxy_resolution: metanet_b4 at 100,000 px needs at least"),
    (["evaluate", "metanet_b4", "--stages", "amateur", "--proxy-resolution", "6000"], "training step of batch 32"),
]

S = SEARCH
SEARCHES = [
    ([*S, "--config", "c_latin1.yaml"], "not UTF-8"),
    ([*S, "--config", "c_deep.yaml"], "nested too deeply"),
    ([*S, "--strategy", "annealing"], "strategy"),
    ([*S, "--stages", "nope"], "nope"),
    ([*S, "--stages", "zero-cost,zero-cost"], "listed twice"),
    ([*S, "--stages", ","], "stages"),
    ([*S, "--set", "amateur.max_steps=3"], "amateur"),
    ([*S, "--set", "zero-cost.batch_size=abc"], "zero-cost.batch_size"),
    ([*S, "--set", "zero-cost.nope=1"], "nope"),
    ([*S, "--set", "zero-cost.batch_size=0"], "zero-cost.batch_size"),
    ([*S, "--set", "zero-cost.batch_size=1e400"], "zero-cost.batch_size"),
    ([*S, "--config", "c_negative.yaml"], "zero-cost.batch_size"),
    ([*S, "--score", "zero-cost.score=inf"], "score"),
    ([*S, "--set", "noequals"], "noequals"),
    ([*S, "--set", ".x=1"], ".x=1"),
    ([*S, "--flops", "5M"], "flops"),
    ([*S, "--flops", "abc"], "flops"),
    ([*S, "--flops", "0"], "flops"),
    ([*S, "--band", "0.5,inf"], "band"),
    ([*S, "--band", "0.5"], "band"),
    ([*S, "--band", "1,0.5"], "band"),
    # a search that screened 5,000 proposals in a row: the run it made is removed, nothing changed
    ([*S, "--band", "0.9999999,1"], "band: 5,000 proposals in a row fell outside the FLOP band"),
    ([*S, "--trials", "0"], "--trials"),
    ([*S, "--trials", "1.7"], "--trials"),
    ([*S, "--proxy-resolution", "4"], "--proxy-resolution"),
    ([*S, "--resolution", "8"], "--resolution"),
    ([*S, "--val-fraction", "0"], "--val-fraction"),
    ([*S, "--val-fraction", "1"], "--val-fraction"),
    ([*S, "--engine", "nope"], "--engine"),
    ([*S, "--accelerator", "tpu"], "--accelerator"),
    ([*S, "--precision", "64"], "--precision"),
    ([*S, "--devices", "0"], "--devices"),
    ([*S, "--port", "0"], "--port"),
    ([*S, "--port", "70000"], "--port"),
    ([*S, "--web-host", "example.com"], "web_host"),
    ([*S, "--engine", "ts", "--web-host", "198.51.100.7"], "--web-host"),  # not an address of this machine
    ([*S, "--config", "c_webhost.yaml"], "web_host"),
    ([*S, "--concurrency", "0"], "--concurrency"),
    ([*S, "--budget-mode", "nope"], "--budget-mode"),
    ([*S, "--soft-weight", "abc"], "--soft-weight"),
    ([*S, "--soft-weight", "1e308"], "soft_weight: expected a number in [-10, 10]"),
    ([*S, "--seed", "-1"], "seed: expected 0-4294967295, got -1"),
    ([*S, "--config", "/dev/zero"], "/dev/zero: not a regular file"),
    ([*S, "--set", "zero-cost.source=nope"], "zero-cost.source: data 'digits' has no source 'nope'"),
    (["search", "--stages", "zero-cost,amateur", "--set", "amateur.sources=5", "--out", "new"], "amateur.sources"),
    ([*S, "--space", "nope"], "space"),
    ([*S, "--data", "/nonexistent/metanet-data"], "/nonexistent/metanet-data"),
    ([*S, "--data", "nope_dataset"], "nope_dataset"),
    ([*S, "--score", "nope.acc=1"], "nope.acc"),
    ([*S, "--score", "5"], "score"),
    ([*S, "--score", "zero-cost.score=abc"], "score"),
    ([*S, "--training-service", "machines.yaml"], "training_service"),
    ([*S, "--engine", "ts", "--training-service", "missing.yaml"], "missing.yaml"),
    ([*S, "--engine", "ts", "--training-service", "machines.yaml"], "machines.yaml"),
    ([*S, "--gpus-per-trial", "1"], "gpus"),
    ([*S, "--config", "missing.yaml"], "missing.yaml"),
    ([*S, "--config", "c_garbage.yaml"], "c_garbage.yaml"),
    ([*S, "--config", "c_list.yaml"], "c_list.yaml"),
    (["search", "--stages", "zero-cost", "--config", "c_float.yaml", "--out", "new"], "trials"),
    (["search", "--config", "c_stages.yaml", "--out", "new"], "stages"),
    ([*S, "--config", "c_seed.yaml"], "seed"),
    ([*S, "--config", "c_unknown.yaml"], "colour"),
    ([*S, "--config", "c_band.yaml"], "band"),
    ([*S, "--config", "c_settings.yaml"], "zero-cost"),
    ([*S, "--config", "c_flops.yaml"], "flops"),
    ([*S, "--config", "c_bad.toml"], "c_bad.toml"),
    ([*S, "--config", "c_strategy.yaml"], "strategy"),
    (["search", "--stages", "zero-cost", "--proxy-resolution", "16", "--config", "c_score.yaml", "--out", "new"],
     "score"),
    (["search", "--resume", "nowhere"], "nowhere"),
    (["search", "--resume", "run", "--trials", "3"], "--resume"),
    (["search", "--resume", "garbage"], "trials.sqlite is damaged"),
    (["search", "--resume", "trunc"], "trials.sqlite is damaged"),
    (["search", "--resume", "badjson"], "config.json is damaged"),
    (["search", "--resume", "listcfg"], "config.json"),
    (["search", "--resume", "badtype"], "trials"),
    (["search", "--resume", "emptydir"], "emptydir"),
    (["search", "--resume", "plugged"], f"-p {MARKER} search --resume plugged"),
    (["-p", "json", "search", "--resume", "plugged"], MARKER),
    (["search", "--stages", "zero-cost", "--proxy-resolution", "16", "--out", "run"], "already holds a search"),
    (["search", "--stages", "zero-cost", "--proxy-resolution", "16", "--out", "afile.txt"], "afile.txt"),
    # output folders that cannot be made: refused before the data is read
    ([*S[:-1], "afile.txt/sub"], "afile.txt is a file, not a folder"),
    (["search", "--stages", "zero-cost", "--proxy-resolution", "100000", "--out", "new"],
     "proxy_resolution: 100,000 px images need at least"),
    (["search", "--stages", "zero-cost", "--proxy-resolution", "20000", "--out", "new"],
     "proxy_resolution: the digits data at 20,000 px needs"),
    (["supernet", "train", "--proxy-resolution", "100000", "--out", "sn"], "proxy_resolution: 100,000 px images"),
    ([*S[:-1], "/proc/metanet-test-run"], "/proc is on proc"),
    ([*S[:-1], "/sys/metanet-test-run"], "/sys is on sysfs"),
    (["supernet", "train", "--steps", "1", "--out", "afile.txt/sub"], "afile.txt is a file, not a folder"),
    (["supernet", "train", "--steps", "1", "--out", "/proc/metanet-test-sn"], "/proc is on proc"),
]

READING = [
    (["results", "nowhere"], "nowhere"),
    (["results", "emptydir"], "emptydir"),
    (["results", "nostore"], "no trial store"),
    (["results", "garbage"], "trials.sqlite is damaged"),
    (["results", "trunc"], "trials.sqlite is damaged"),
    (["results", "empty_store"], "trials.sqlite is damaged"),
    (["results", "badjson"], "config.json is damaged"),
    (["results", "listcfg"], "config.json"),
    (["results", "badtype"], "trials"),
    (["results", "run", "--top", "0"], "--top"),
    (["results", "run", "--top", "abc"], "--top"),
    (["results", "afile.txt"], "afile.txt"),
    (["export", "run", "--out", "run"], "out: run"),
    (["export", "run", "--out", "run/sub"], "out: run/sub"),
    (["export", "run", "--out", ".", "--force"], "out: ."),
    (["export", "run", "--out", "linked", "--force"], "symbolic link"),
    (["export", "run", "--out", "exported"], "exported"),
    (["export", "run", "--out", "e", "--budget", "5G"], "budget"),
    (["export", "run", "--out", "e", "--budget", "abc"], "budget"),
    (["export", "run", "--out", "e", "--rank", "9"], "rank"),
    (["export", "run", "--out", "e", "--rank", "0"], "--rank"),
    (["export", "run", "--out", "e", "--trial", "999"], "trial"),
    (["export", "run", "--out", "e", "--trial", "1", "--rank", "1"], "--trial"),
    (["export", "run", "--out", "e", "--format", "nope"], "format"),
    (["export", "run", "--out", "e", "--num-classes", "-1"], "--num-classes"),
    (["export", "garbage", "--out", "e"], "trials.sqlite is damaged"),
    (["export", "trunc", "--out", "e"], "trials.sqlite is damaged"),
    (["export", "badjson", "--out", "e"], "config.json is damaged"),
    (["export", "nostore", "--out", "e"], "no trial store"),
    (["export", "run"], "--out"),
    (["export", "run", "--out", "afile.txt"], "afile.txt"),
    (["export", "run", "--out", "afile.txt/sub"], "out: cannot write afile.txt/sub: "),
    (["export", "run", "--out", "e", "--num-classes", "100000000000"], "num_classes: a classifier of"),
    (["proxy-check", "run", "--proxy-resolution", "100000"], "proxy_resolution: 100,000 px images need"),
    (["export", "run", "--out", "/proc/metanet-test-export"], "/proc is on proc"),
    (["convert", "weights.pth", "--preset", "uninet_b1", "--out", "/proc/metanet-test.safetensors"],
     "/proc is on proc"),
    (["convert", "weights.pth", "--preset", "uninet_b1", "--out", "afile.txt/x.safetensors"], "afile.txt is a file"),
    (["proxy-check", "run", "--top", "2"], "--top"),
    (["proxy-check", "nowhere"], "nowhere"),
    (["proxy-check", "run"], "needs at least"),
    (["proxy-check", "run", "--set", "bad"], "STAGE.SETTING"),
    (["proxy-check", "garbage"], "trials.sqlite is damaged"),
    (["proxy-check", "plugged"], f"-p {MARKER} proxy-check plugged"),
    (["convert", "missing.pth", "--preset", "metanet_b4", "--out", "x.safetensors"], "missing.pth"),
    (["convert", "weights.pth", "--preset", "nope", "--out", "x.safetensors"], "nope"),
    (["convert", "weights.pth", "--out", "x.safetensors"], "--preset"),
    (["convert", "weights.pth", "--preset", "uninet_b1", "--out", "x.safetensors"], "weights.pth"),
]

CASES = SPACE + SPECS + EVALUATE + SEARCHES + READING


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_at_least_a_hundred_bad_inputs():
    assert len(CASES) >= 100
    assert {c[0][0] for c in CASES} >= {"space", "flops", "build", "presets", "plugins", "evaluate", "search",
                                        "results", "export", "proxy-check", "convert", "supernet"}


@pytest.mark.parametrize("args, words", CASES, ids=[" ".join(a for a in c[0] if a not in SEARCH[1:]) for c in CASES])
def test_bad_input_fails_in_one_line_and_changes_nothing(ws, monkeypatch, args, words):
    monkeypatch.chdir(ws)
    monkeypatch.syspath_prepend(str(ws))  # the marker plugin could be imported: the snapshot shows it never is
    before = snapshot(ws)
    started = time.monotonic()
    result = CliRunner().invoke(cli, args)
    assert time.monotonic() - started < 60, "bad input must fail fast"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, result.output
    assert words in errors[0], errors[0]
    assert snapshot(ws) == before


def test_a_bad_input_through_the_real_entry_point(ws):
    # the console script, not the test runner: stderr gets one line, no traceback
    proc = subprocess.run([sys.executable, "-m", "metanet", "results", str(ws / "garbage")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"Error: {ws / 'garbage'}: trials.sqlite is damaged: "
                                                "file is not a database"]


# -- a search where no trial finished ---------------------------------------------------------------

ALWAYS_FAILS = textwrap.dedent('''
    from metanet import hookimpl

    @hookimpl
    def metanet_register_stages(register):
        register("broken", defaults={})

    @hookimpl
    def metanet_run_stage(stage, context):
        if stage == "broken":
            raise RuntimeError("the broken stage always fails")
''')


def test_a_search_where_no_trial_finished_fails_with_the_first_error(tmp_path, monkeypatch):
    (tmp_path / "broken_stage.py").write_text(ALWAYS_FAILS)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["-p", "broken_stage", "search", "--stages", "broken", "--proxy-resolution",
                                      "16", "--trials", "2", "--flops", "400M", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "no trial finished (2 failed" in error[0]
    assert "the broken stage always fails" in error[0]
    rows = TrialStore(tmp_path / "run" / "trials.sqlite").trials()
    assert len(rows) == 2 and all(r["status"] == "failed" for r in rows)  # kept all the same


# -- plugins a run's config names are imported only when the user names them again ----------------------

def stage_plugin(name: str, metrics: str) -> str:
    """The source of a plugin module registering stage ``name``, which returns the dict literal ``metrics``."""
    return textwrap.dedent(f'''
        from metanet import hookimpl

        @hookimpl
        def metanet_register_stages(register):
            register("{name}", defaults={{}}, score_metric="seen")

        @hookimpl
        def metanet_run_stage(stage, context):
            if stage == "{name}":
                return {metrics}
    ''')


MARKED_STAGE = stage_plugin("marked", '{"seen": 1.0}')


def test_resume_imports_the_runs_plugins_only_when_named_again(tmp_path, monkeypatch):
    (tmp_path / "marked_stage.py").write_text(MARKED_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    created = CliRunner().invoke(cli, ["-p", "marked_stage", "search", "--stages", "zero-cost,marked",
                                       "--proxy-resolution", "16", "--trials", "1", "--flops", "400M", "--out",
                                       str(run)])
    assert created.exit_code == 0, created.output
    import sqlite3
    with sqlite3.connect(run / "trials.sqlite") as db:  # as a search killed during its trial leaves it
        db.execute("UPDATE trials SET status = 'running', score = NULL, metrics = '{}', ended = NULL")
    before = snapshot(run)
    refused = CliRunner().invoke(cli, ["search", "--resume", str(run)])
    assert refused.exit_code == 1 and "Traceback" not in refused.output
    errors = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: {run}: the run's config.json lists plugin module(s) marked_stage, which are imported "
                      f"only when named again: metanet -p marked_stage search --resume {run} "
                      f"(or metanet --trust-stored-plugins search --resume {run})"]
    # every other command that reads the run refuses the same way, before importing anything
    for command, args in ((f"proxy-check {run}", ["proxy-check", str(run), "--top", "3"]),
                          (f"evaluate --rerun {run} 1", ["evaluate", "--rerun", str(run), "1"])):
        other = CliRunner().invoke(cli, args)
        assert other.exit_code == 1 and "Traceback" not in other.output, other.output
        assert f"named again: metanet -p marked_stage {command} (or metanet --trust-stored-plugins {command})" \
            in other.output, other.output
    assert snapshot(run) == before  # refused before the run was locked, checked or touched
    trusted = CliRunner().invoke(cli, ["--trust-stored-plugins", "search", "--resume", str(run)])
    assert trusted.exit_code == 0, trusted.output
    rows = TrialStore(run / "trials.sqlite").trials()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["metrics"]["marked.seen"] == 1.0
    with sqlite3.connect(run / "trials.sqlite") as db:
        db.execute("UPDATE trials SET status = 'running', score = NULL, metrics = '{}', ended = NULL")
    resumed = CliRunner().invoke(cli, ["-p", "marked_stage", "search", "--resume", str(run)])
    assert resumed.exit_code == 0, resumed.output
    rows = TrialStore(run / "trials.sqlite").trials()
    assert len(rows) == 1 and rows[0]["status"] == "ok" and rows[0]["metrics"]["marked.seen"] == 1.0


def test_resume_refusal_through_the_real_entry_point(ws):
    proc = subprocess.run([sys.executable, "-m", "metanet", "search", "--resume", str(ws / "plugged")],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ws) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and MARKER in lines[0] and f"-p {MARKER}" in lines[0], proc.stderr
    assert not (ws / "imported.txt").exists()


# -- fault tests ----------------------------------------------------------------------------------

SLOW = textwrap.dedent('''
    import time
    from metanet import hookimpl

    @hookimpl
    def metanet_trial_started(trial):
        time.sleep(0.7)
''')


def _env(tmp_path):
    (tmp_path / "slow_plugin.py").write_text(SLOW)
    return {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "METANET_PLUGINS": "slow_plugin"}


def _search_proc(tmp_path, *args):
    return subprocess.Popen([sys.executable, "-m", "metanet", "search", *args], env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait(predicate, proc, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _lock_holder(run):
    try:
        return json.loads((run / RunDir.LOCK).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def _rows(run):
    path = run / "trials.sqlite"
    if not path.exists():
        return []
    try:
        return TrialStore(path, create=False).trials()
    except RunError:
        RunDir(run).check_store()  # fails unless no table exists yet: a search killed as it created the store
        return []


@pytest.mark.slow
def test_two_writers_on_one_run(tmp_path):
    run = tmp_path / "run"
    first = _search_proc(tmp_path, "--stages", "zero-cost", "--proxy-resolution", "16", "--trials", "3",
                         "--flops", "400M", "--out", str(run))
    try:
        assert _wait(lambda: _lock_holder(run) == first.pid and _rows(run), first), first.stderr.read()
        before = _rows(run)
        for args in (["search", "--resume", str(run)],
                     ["search", "--stages", "zero-cost", "--proxy-resolution", "16", "--out", str(run)]):
            started = time.monotonic()
            second = CliRunner().invoke(cli, args)
            assert time.monotonic() - started < 30  # at once, not after the first one ends
            assert second.exit_code == 1 and "Traceback" not in second.output
            errors = [line for line in second.output.splitlines() if line.startswith("Error:")]
            assert len(errors) == 1
            assert ("already holds a search" in errors[0] or f"in use by another search (pid {first.pid}"
                    in errors[0]), errors[0]
        assert f"pid {first.pid}" in CliRunner().invoke(cli, ["search", "--resume", str(run)]).output
        assert first.wait(timeout=180) == 0, first.stderr.read()
    finally:
        if first.poll() is None:
            first.kill()
    rows = _rows(run)
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    for row in before:
        if row["status"] == "ok":
            assert row in rows
    assert len({json.dumps(r["spec"], sort_keys=True) for r in rows}) == 3


# One process that has imported metanet, torch, Lightning and NNI forks each search of the kill test: every
# search is a real process of the real command, killed with a real SIGKILL, but does not pay the seconds of
# imports again (ten fresh interpreters cost more than the rest of the test). The zygote runs no torch op
# before forking (budget_space is pure Python), so no OpenMP pool is copied into a child.
ZYGOTE = textwrap.dedent(r"""
    import json, os, signal, sys
    import lightning_fabric, nni.nas.evaluator, nni.nas.experiment, nni.nas.strategy
    import metanet.cli, metanet.search.nni_adapter, metanet.train.runtime, metanet.search.driver, metanet.search.trial
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    budget_space(DEFAULT_SPACE, 400_000_000, (0.9, 1.0), 224)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the searches: a gone pid is a dead search
    print("ready", flush=True)
    for line in sys.stdin:
        argv, log = json.loads(line)
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            code = 1
            try:
                metanet.cli.main(argv)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                os._exit(code)
        print(pid, flush=True)
""")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# When each of the ten searches is killed: while it starts, once it holds the run, while a trial runs (for a
# resumed run, the in-flight trial it re-runs first), the moment a trial has finished, and at a fixed time.
KILL_MOMENTS = ["starting", "locked", "running", "finished", "running", "finished", "after 2 s", "finished",
                "running", "finished"]


@pytest.mark.slow
def test_sigkill_during_search_then_resume_loses_and_duplicates_nothing(tmp_path):
    run, trials = tmp_path / "run", 7
    config = ["--stages", "zero-cost", "--proxy-resolution", "16", "--trials", str(trials), "--flops", "400M",
              "--seed", "3"]
    zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], env=_env(tmp_path), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    finished: dict[int, dict] = {}
    kills = []
    try:
        assert zygote.stdout.readline().strip() == "ready"
        for cycle, moment in enumerate(KILL_MOMENTS):
            before = _rows(run)
            seen = max((r["id"] for r in before), default=0)
            args = ["search", "--resume", str(run)] if (run / "config.json").exists() else \
                ["search", *config, "--out", str(run)]
            zygote.stdin.write(json.dumps([args, str(tmp_path / f"search-{cycle}.log")]) + "\n")
            zygote.stdin.flush()
            pid, started = int(zygote.stdout.readline()), time.monotonic()
            moments = {
                "starting": lambda: time.monotonic() - started > 0.3,
                "locked": lambda: _lock_holder(run) == pid,
                "running": lambda: any(r["status"] == "running" and r["id"] > seen for r in _rows(run)),
                "finished": lambda: any(r["status"] == "ok" and r["id"] not in finished for r in _rows(run)),
                "after 2 s": lambda: time.monotonic() - started > 2.0,
            }
            deadline = time.monotonic() + 120
            while _alive(pid) and not moments[moment]() and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                kills.append(moment)
            while _alive(pid):
                time.sleep(0.02)
            rows = _rows(run)
            for trial_id, row in finished.items():  # nothing finished is lost or changed by a kill
                assert next(r for r in rows if r["id"] == trial_id) == row, (cycle, moment)
            assert len({r["spec_key"] for r in rows}) == len(rows), (cycle, moment)  # no architecture twice
            finished.update({r["id"]: r for r in rows if r["status"] == "ok"})
    finally:
        zygote.stdin.close()
        zygote.wait(timeout=60)
    assert kills == KILL_MOMENTS  # every search was killed while it still had work to do
    assert 3 <= len(finished) < trials
    result = CliRunner().invoke(cli, ["search", "--resume", str(run), "--json"])
    assert result.exit_code == 0, result.output
    rows = _rows(run)
    assert len(rows) == trials and all(r["status"] == "ok" for r in rows)
    for trial_id, row in finished.items():
        assert next(r for r in rows if r["id"] == trial_id) == row
    assert len({json.dumps(r["spec"], sort_keys=True) for r in rows}) == trials  # each architecture once


@pytest.mark.slow
def test_resume_restores_missing_kept_weights(tmp_path):
    cfg = {**FAST, "stages": ["zero-cost", "amateur"], "settings": {"amateur": {"max_steps": 2}}, "trials": 2,
           "out": str(tmp_path / "run")}
    run_search(SearchConfig.from_dict(cfg), progress=False, echo=lambda m: None)
    run = RunDir.open(tmp_path / "run")
    kept = run.kept(400_000_000)
    assert kept and all(run.weights_path(i).exists() for i in kept)
    run.weights_path(kept[0]).unlink()  # as a process killed between the row and the weights left it
    said = []
    run_search(SearchConfig.from_dict(cfg), resume=True, progress=False, echo=said.append)
    assert run.weights_path(kept[0]).exists()
    assert any(f"trial {kept[0]} finished but its kept weights are missing" in m for m in said)
    assert len(TrialStore(tmp_path / "run" / "trials.sqlite").trials()) == 2


def _complete_export(folder: Path, onnx: bool = True) -> int | None:
    """The trial of a complete export folder, None when the folder is missing; fails when it is partial."""
    if not folder.exists():
        return None
    names = {p.name for p in folder.iterdir()}
    assert {"arch.json", "model.safetensors", "config.json", "README.md", *(["model.onnx"] if onnx else [])} \
        <= names, names
    from safetensors.torch import load_file
    load_file(str(folder / "model.safetensors"))
    if onnx:
        import onnx as onnx_lib
        onnx_lib.checker.check_model(str(folder / "model.onnx"))
    return json.loads((folder / "config.json").read_text())["search"]["trial"]


@pytest.mark.slow
def test_sigkill_during_export_force_leaves_the_old_or_the_new_export(tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig.from_dict({**FAST, "trials": 2, "out": str(run)}), progress=False, echo=lambda m: None)
    old_id, new_id = (r["id"] for r in TrialStore(run / "trials.sqlite").trials())
    out = tmp_path / "export"
    from metanet.export.run_export import export_run
    export_run(run, out, trial=old_id, formats=("onnx",))
    assert _complete_export(out) == old_id
    seen = set()
    for delay in (2.0, 4.0, 6.0, 8.0):
        proc = subprocess.Popen([sys.executable, "-m", "metanet", "export", str(run), "--out", str(out), "--force",
                                 "--trial", str(new_id), "--format", "onnx"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        trial = _complete_export(out)  # at every moment: the old export or the new one, complete
        assert trial in (old_id, new_id)
        seen.add(trial)
        if trial == new_id:
            shutil.rmtree(out)
            export_run(run, out, trial=old_id, formats=("onnx",))
    result = CliRunner().invoke(cli, ["export", str(run), "--out", str(out), "--force", "--trial", str(new_id),
                                      "--format", "onnx"])
    assert result.exit_code == 0, result.output
    assert _complete_export(out) == new_id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".metanet-export-")]  # no staging left behind


# Where the kernel cannot swap two folders (not Linux, or a filesystem without RENAME_EXCHANGE) export falls
# back to two renames: the old export moves aside, the new one moves in, and only then is the old one deleted.

def _two_runs_exports(tmp_path):
    run = tmp_path / "run"
    run_search(SearchConfig.from_dict({**FAST, "trials": 2, "out": str(run)}), progress=False, echo=lambda m: None)
    old_id, new_id = (r["id"] for r in TrialStore(run / "trials.sqlite").trials())
    from metanet.export.run_export import export_run
    export_run(run, tmp_path / "export", trial=old_id)
    return run, old_id, new_id


def test_export_without_an_atomic_swap_deletes_the_old_export_only_after_the_new_one_is_in_place(
        tmp_path, monkeypatch):
    import metanet.export.run_export
    from metanet.export.run_export import export_run
    run, old_id, new_id = _two_runs_exports(tmp_path)
    out = tmp_path / "export"
    monkeypatch.setattr(metanet.export.run_export, "_exchange", lambda a, b: False)
    rename, moves = os.rename, []

    def watched(src, dst):
        if Path(dst) == out:  # the new export moves in: the old one, complete, waits beside --out
            moves.append(_complete_export(Path(f"{src}-old"), onnx=False))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", watched)
    export_run(run, out, trial=new_id, force=True)
    assert moves == [old_id] and _complete_export(out, onnx=False) == new_id

    def failing(src, dst):
        if Path(dst) == out and not str(src).endswith("-old"):  # the new export cannot move in
            raise OSError("the second rename failed")
        rename(src, dst)

    monkeypatch.setattr(os, "rename", failing)
    with pytest.raises(OSError, match="second rename"):
        export_run(run, out, trial=old_id, force=True)
    assert _complete_export(out, onnx=False) == new_id  # put back at once
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".metanet-export-")]


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, signal, sys
    import metanet.export.run_export
    metanet.export.run_export._exchange = lambda a, b: False
    rename = os.rename

    def rename_then_die(src, dst):
        rename(src, dst)
        if str(dst).endswith("-old"):  # the old export is aside, the new one not yet in place
            os.kill(os.getpid(), signal.SIGKILL)

    os.rename = rename_then_die
    metanet.export.run_export.export_run(sys.argv[1], sys.argv[2], trial=int(sys.argv[3]), force=True)
""")


@pytest.mark.slow
def test_export_killed_between_the_two_renames_keeps_the_old_export(tmp_path):
    run, old_id, new_id = _two_runs_exports(tmp_path)
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-c", KILL_BETWEEN_RENAMES, str(run), str(out), str(new_id)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not out.exists()
    aside = [p for p in tmp_path.iterdir() if p.name.endswith("-old")]
    assert len(aside) == 1 and _complete_export(aside[0], onnx=False) == old_id
    # the next export puts the old one back first: without --force it is the user's and is not replaced
    refused = CliRunner().invoke(cli, ["export", str(run), "--out", str(out), "--trial", str(new_id)])
    assert refused.exit_code == 1 and "use --force" in refused.output
    assert _complete_export(out, onnx=False) == old_id
    replaced = CliRunner().invoke(cli, ["export", str(run), "--out", str(out), "--trial", str(new_id), "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert _complete_export(out, onnx=False) == new_id
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".metanet-export-")]


def test_resume_completes_a_store_killed_before_its_first_table(tmp_path):
    cfg = {**FAST, "trials": 1, "out": str(tmp_path / "run")}
    run_search(SearchConfig.from_dict(cfg), progress=False, echo=lambda m: None)
    store = tmp_path / "run" / "trials.sqlite"
    for leftover in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        leftover.unlink(missing_ok=True)
    store.write_bytes(b"")  # as a search killed between creating the file and its first table leaves it
    run_search(SearchConfig.from_dict(cfg), resume=True, progress=False, echo=lambda m: None)
    rows = TrialStore(store).trials()
    assert len(rows) == 1 and rows[0]["status"] == "ok"


@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe", "ppo"])
def test_an_option_the_strategy_does_not_take_is_refused_before_the_run(tmp_path, strategy):
    # NNI's strategies take **kwargs and would ignore a misspelt option silently
    config = tmp_path / "search.yaml"  # YAML holds JSON
    config.write_text(json.dumps({"strategy": strategy, "strategy_options": {"populaton_size": 8}}))
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--config", str(config), "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and f"strategy {strategy!r} takes no option 'populaton_size'" in errors[0], result.output
    assert not out.exists()
    config.write_text(json.dumps({"strategy": "evolution", "strategy_options": {"population_size": 8},
                                  "stages": ["zero-cost"], "proxy_resolution": 16, "trials": 1}))
    ok = CliRunner().invoke(cli, ["search", "--config", str(config), "--out", str(out)])
    assert ok.exit_code == 0, ok.output


ODD_STAGE = stage_plugin("odd", '{"seen": 1.0, "unstable": float("nan"), "huge": float("inf")}')


def test_json_output_is_json_even_when_a_metric_is_not_a_number(tmp_path, monkeypatch):
    (tmp_path / "odd_stage.py").write_text(ODD_STAGE)
    monkeypatch.syspath_prepend(str(tmp_path))

    def strict(text):  # what jq and JavaScript accept: no NaN, no Infinity
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"--json printed {c}"))

    run = tmp_path / "run"
    made = CliRunner().invoke(cli, ["-p", "odd_stage", "search", "--stages", "zero-cost,odd", "--proxy-resolution",
                                    "16", "--trials", "1", "--out", str(run), "--json"])
    assert made.exit_code == 0, made.output
    strict(made.stdout)
    rows = strict(CliRunner().invoke(cli, ["-p", "odd_stage", "results", str(run), "--json"]).stdout)
    assert rows[0]["metrics"]["odd.unstable"] is None and rows[0]["metrics"]["odd.huge"] is None
    assert rows[0]["metrics"]["odd.seen"] == 1.0


def test_resume_of_a_run_whose_store_is_gone_is_an_error_not_a_fresh_search(tmp_path):
    run = tmp_path / "run"
    cfg = {**FAST, "trials": 1, "out": str(run)}
    run_search(SearchConfig.from_dict(cfg), progress=False, echo=lambda m: None)
    (run / "trials.sqlite").unlink()
    before = snapshot(run)
    result = CliRunner().invoke(cli, ["search", "--resume", str(run)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "trials.sqlite: missing" in errors[0] and "its trials are lost" in errors[0]
    assert snapshot(run) == before


# -- a stage plugin that misbehaves fails its trial, named; the search goes on --------------------------

@pytest.mark.parametrize("returns, words", [
    ('"not a dict"', "returned str, not a dict of metrics"),
    ('__import__("sys").exit(3)', "the stage called sys.exit(3)"),
    ('{"seen": 1 / 0}', "ZeroDivisionError"),
])
def test_a_misbehaving_stage_plugin_fails_its_trials_naming_the_plugin(tmp_path, monkeypatch, returns, words):
    module = "odd_stage_" + re.sub(r"\W", "_", tmp_path.name)  # a module of its own per case (imports are cached)
    (tmp_path / f"{module}.py").write_text(stage_plugin("odd", returns))
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(cli, ["-p", module, "search", "--stages", "zero-cost,odd", "--proxy-resolution",
                                      "16", "--trials", "2", "--flops", "400M", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "no trial finished (2 failed" in error[0], result.output
    assert f"stage odd (plugin {module})" in error[0] and words in error[0], error[0]
    rows = TrialStore(tmp_path / "run" / "trials.sqlite").trials()
    assert len(rows) == 2 and all(r["status"] == "failed" for r in rows)  # both trials ran: the search went on


# -- a read-only disk: refused before any work, naming the option -------------------------------------

@pytest.fixture
def read_only(tmp_path):
    """A read-only folder holding a finished run: a read-only tmpfs mounted as root (root writes through
    permission bits), or a folder without write permission for other users; skipped where neither is possible."""
    ro = tmp_path / "ro"
    ro.mkdir()
    run_search(SearchConfig.from_dict({**FAST, "trials": 1, "out": str(ro / "run")}), progress=False,
               echo=lambda m: None)
    if os.geteuid() == 0:
        if shutil.which("mount") is None or subprocess.run(["mount", "--bind", str(ro), str(ro)]).returncode != 0 \
                or subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)]).returncode != 0:
            subprocess.run(["umount", str(ro)], capture_output=True)
            pytest.skip("root here cannot mount a read-only folder (mount --bind -o ro)")
        yield ro
        subprocess.run(["umount", str(ro)], check=True)
    else:
        ro.chmod(0o555)
        (ro / "run").chmod(0o555)
        yield ro
        (ro / "run").chmod(0o755)
        ro.chmod(0o755)


@pytest.mark.parametrize("args, words", [
    ([*SEARCH[:-1], "{ro}/new"], "out: cannot write {ro}/new: {ro} is "),
    (["search", "--resume", "{ro}/run"], "resume: cannot write {ro}/run: {ro}/run is "),
    (["proxy-check", "{ro}/run", "--top", "3"], "run_dir: cannot write {ro}/run: "),
    (["export", "{ro}/run", "--out", "{ro}/export"], "out: cannot write {ro}/export: {ro} is "),
    (["supernet", "train", "--steps", "1", "--out", "{ro}/sn"], "out: cannot write {ro}/sn: {ro} is "),
])
def test_a_read_only_disk_is_named_before_any_work(read_only, args, words):
    before = snapshot(read_only)
    result = CliRunner().invoke(cli, [a.format(ro=read_only) for a in args])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and words.format(ro=read_only) in errors[0], result.output
    assert errors[0].endswith(("read-only filesystem", "not writable (permission denied)")), errors[0]
    assert snapshot(read_only) == before
