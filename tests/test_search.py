"""The search: strategies under FLOP budgets, failures, resume after SIGKILL, families, engines."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from click.testing import CliRunner

from metanet.cli import cli
from metanet.errors import RunError
from metanet.search.nni_adapter import screen_penalty
from metanet.runs.directory import RunDir
from metanet.search.driver import run_search
from metanet.runs.config import SearchConfig
from metanet.runs.store import TrialStore

CHEAP = {"stages": ["zero-cost"], "proxy_resolution": 16, "trials": 3, "flops": [400_000_000]}


def _search(tmp_path, **options):
    cfg = SearchConfig.from_dict({**CHEAP, "out": str(tmp_path / "run"), **options})
    return run_search(cfg, progress=False, echo=lambda m: None), TrialStore(tmp_path / "run" / "trials.sqlite")


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe", "ppo"])
def test_each_strategy_evaluates_what_it_proposed_inside_the_band(tmp_path, strategy):
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    summary, store = _search(tmp_path, strategy=strategy)
    rows = store.trials()
    assert len(rows) == 3 and all(r["status"] == "ok" for r in rows)
    space = budget_space(DEFAULT_SPACE, 400_000_000)
    for r in rows:  # faithful: the evaluated spec is the one the proposal decodes to, nothing rewritten
        assert r["rewritten"] == 0 and space.decode(r["proposal"]).to_dict() == r["spec"]
        assert 0.9 * 400e6 <= r["flops"] <= 400e6
    assert summary.best[400_000_000]["score"] == max(r["score"] for r in rows)
    # every proposal was trained, screened, or decoded to an architecture already evaluated (replayed)
    assert store.counter(400_000_000, "proposals") == \
        len(rows) + summary.screened[400_000_000] + store.counter(400_000_000, "duplicates")


@pytest.mark.slow
def test_recounted_flops_of_evaluated_trials_lie_in_the_band(tmp_path):
    from metanet.search_spaces.counter import count_flops
    from metanet.search_spaces.metanet import MetaNet
    _, store = _search(tmp_path, flops=[1_200_000_000], trials=2)
    for r in store.trials():
        counted = count_flops(MetaNet(r["spec"], num_classes=1000), 224).total
        assert 0.9 * 1.2e9 * 0.99 <= counted <= 1.2e9 * 1.01  # the counter agrees with the estimator within 1%


RECORDER = textwrap.dedent('''
    from metanet import hookimpl
    RECEIVED = []

    def _recording_random(seed=None, **options):
        from nni.nas.execution.event import ModelEventType
        from nni.nas.strategy import Random

        class Recording(Random):
            def _initialize(self, model_space, engine):
                engine.register_model_event_callback(ModelEventType.FinalMetric,
                                                     lambda event: RECEIVED.append((event.model.sample, event.metric)))
                return super()._initialize(model_space, engine)
        return Recording(seed=seed, **options)

    @hookimpl
    def metanet_register_strategies(register):
        register("recording-random", _recording_random)
''')


def test_screened_proposals_reach_the_strategy_with_a_distance_penalty(tmp_path, monkeypatch):
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    (tmp_path / "recorder_strategy.py").write_text(RECORDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    summary, store = _search(tmp_path, strategy="recording-random", plugins=["recorder_strategy"], trials=2,
                             flops=[600_000_000])
    import recorder_strategy
    space = budget_space(DEFAULT_SPACE, 600_000_000)
    scores = {json.dumps(r["proposal"], sort_keys=True): r["score"] for r in store.trials()}
    screened, seen = 0, []
    for sample, metric in recorder_strategy.RECEIVED:
        flops = space.flops(space.decode(sample))
        if json.dumps(sample, sort_keys=True) in scores:
            assert metric == scores[json.dumps(sample, sort_keys=True)]
            seen.append(metric)
        else:  # never trained: below every reward trained so far, by the distance from the band
            screened += 1
            assert space.distance(flops) > 0
            assert metric == pytest.approx(screen_penalty(space.distance(flops), seen, -1.0))
            assert metric < min(seen, default=-1.0)
    assert screened == summary.screened[600_000_000] > 0


def test_the_penalty_grows_with_the_distance_from_the_band():
    from metanet.search_spaces.budget_space import budget_space
    from metanet.search_spaces.unified import DEFAULT_SPACE
    space = budget_space(DEFAULT_SPACE, 600_000_000)
    assert space.distance(0.95 * 600e6) == 0
    assert 0 < space.distance(0.8 * 600e6) < space.distance(0.5 * 600e6)
    assert 0 < space.distance(1.1 * 600e6) < space.distance(2 * 600e6)
    # on the scale of the rewards: just below the worst, a spread lower per unit of distance
    assert screen_penalty(0.5, [], -1.0) == -1.5
    assert screen_penalty(0.5, [290.0, 300.0], -1.0) == pytest.approx(290.0 - 10.0 * 0.6)
    assert screen_penalty(1.0, [0.5, 0.7], -1.0) < screen_penalty(0.2, [0.5, 0.7], -1.0) < 0.5


def test_soft_constraint_reward(tmp_path):
    from metanet.search.trial import soft_reward
    assert soft_reward(0.8, 1.2e9, 1e9, -0.07) == pytest.approx(0.8 * 1.2 ** -0.07)
    _, store = _search(tmp_path, budget_mode="soft", soft_weight=-0.5, trials=2)
    for r in store.trials():
        assert r["reward"] == pytest.approx(r["score"] * (r["flops"] / 400e6) ** -0.5)
        assert 0.5 * 400e6 <= r["flops"] <= 2 * 400e6  # trained in soft mode, screened beyond these limits


@pytest.mark.parametrize("strategy", ["random", "evolution", "tpe"])
def test_a_seed_reproduces_the_same_trials(tmp_path, strategy):
    runs = []
    for name in ("a", "b"):
        cfg = SearchConfig.from_dict({**CHEAP, "strategy": strategy, "seed": 7, "out": str(tmp_path / name)})
        run_search(cfg, progress=False, echo=lambda m: None)
        runs.append([(r["proposal"], r["spec"]) for r in TrialStore(tmp_path / name / "trials.sqlite").trials()])
    assert runs[0] == runs[1]


def test_evolution_resumes_with_its_population(tmp_path):
    from nni.nas.strategy import RegularizedEvolution
    from metanet.search.nni_adapter import warm_start
    _, store = _search(tmp_path, strategy="evolution", trials=3)
    strategy = RegularizedEvolution(population_size=8, sample_size=4)
    assert warm_start(strategy, store, 400_000_000) == "population"
    population = strategy.state_dict()["population"]
    assert [(p.x, p.y) for p in population] == [(r["proposal"], r["reward"]) for r in store.trials()]
    from nni.nas.strategy import Random
    assert warm_start(Random(), store, 400_000_000) == "none"


FLAKY = textwrap.dedent('''
    import math
    from metanet import hookimpl
    CALLS = [0]

    @hookimpl
    def metanet_register_stages(register):
        register("flaky", defaults={"sleep": 0.0})

    @hookimpl
    def metanet_run_stage(stage, context):
        if stage != "flaky":
            return None
        import time
        time.sleep(context.config["sleep"])
        CALLS[0] += 1
        if CALLS[0] % 3 == 1:
            raise MemoryError("out of memory in trial")
        if CALLS[0] % 3 == 2:
            return {"acc": math.nan}
        return {"acc": 0.5}
''')


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    (tmp_path / "flaky_plugin.py").write_text(FLAKY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "flaky_plugin"


def test_raising_and_nan_trials_are_recorded_and_the_search_goes_on(tmp_path, flaky):
    summary, store = _search(tmp_path, stages=["flaky"], plugins=[flaky], trials=6)
    rows = store.trials()
    assert len(rows) == 6
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(failed) == 4 and summary.failed == 4
    assert any("MemoryError: out of memory in trial" in r["error"] and "plugin flaky_plugin" in r["error"]
               for r in failed)
    assert any(r["error"] == "score is nan" for r in failed)
    assert [r["score"] for r in rows if r["status"] == "ok"] == [0.5, 0.5]


@pytest.mark.slow
def test_sigkill_mid_run_then_resume(tmp_path, flaky):
    out = tmp_path / "run"
    config = tmp_path / "search.yaml"
    config.write_text(textwrap.dedent(f'''
        stages: [zero-cost]
        trials: 5
        flops: 400M
        proxy_resolution: 16
        out: {out}
    '''))
    (tmp_path / "slow_plugin.py").write_text(textwrap.dedent('''
        import time
        from metanet import hookimpl

        @hookimpl
        def metanet_trial_started(trial):
            time.sleep(1.0)
    '''))
    env = {**os.environ, "PYTHONPATH": str(tmp_path) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "METANET_PLUGINS": "slow_plugin"}
    proc = subprocess.Popen([sys.executable, "-m", "metanet", "search", "--config", str(config)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store_path = out / "trials.sqlite"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if store_path.exists():
                rows = TrialStore(store_path).trials()
                if sum(r["status"] == "ok" for r in rows) >= 2 and any(r["status"] == "running" for r in rows):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the search did not get two trials done in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = {r["id"]: r for r in TrialStore(store_path).trials() if r["status"] == "ok"}
    assert any(r["status"] == "running" for r in TrialStore(store_path).trials())

    result = CliRunner().invoke(cli, ["search", "--resume", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = TrialStore(store_path).trials()
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    for trial_id, row in before.items():  # finished trials unchanged
        assert next(r for r in rows if r["id"] == trial_id) == row
    assert len({json.dumps(r["spec"], sort_keys=True) for r in rows}) == 5  # each architecture once


@pytest.mark.slow
def test_budget_family_writes_table_and_plot(tmp_path):
    summary, store = _search(tmp_path, flops=[300_000_000, 600_000_000], trials=2)
    assert set(summary.best) == {300_000_000, 600_000_000}
    assert "300M" in summary.table and "600M" in summary.table
    assert (tmp_path / "run" / "summary.txt").read_text() == summary.table + "\n"
    assert summary.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    listed = json.loads(CliRunner().invoke(cli, ["results", str(tmp_path / "run"), "--json"]).stdout)
    assert len(listed) == 4 and {"id", "status", "spec", "flops", "params", "score"} <= set(listed[0])
    assert listed[0]["budget"] == 300_000_000 and listed[0]["score"] >= listed[1]["score"]
    top = json.loads(CliRunner().invoke(cli, ["results", str(tmp_path / "run"), "--json", "--top", "1"]).stdout)
    assert [r["id"] for r in top] == [summary.best[300_000_000]["id"], summary.best[600_000_000]["id"]]


def test_search_finished_hook_and_pareto_front(tmp_path, monkeypatch):
    (tmp_path / "watch_plugin.py").write_text(textwrap.dedent('''
        from metanet import hookimpl
        RUNS = []

        @hookimpl
        def metanet_search_finished(run):
            RUNS.append(run)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    summary, _ = _search(tmp_path, trials=1, plugins=["watch_plugin"])
    import watch_plugin
    assert watch_plugin.RUNS[0]["trials"] == 1 and watch_plugin.RUNS[0]["out_dir"] == str(summary.run_dir)
    from metanet.search.report import pareto_front
    pts = [(1, 0.5), (2, 0.4), (2, 0.7), (3, 0.6), (4, 0.9)]
    assert pareto_front(pts) == [0, 2, 4]


def _listening(port: int) -> set[str]:
    """Addresses a TCP socket listens on at ``port`` in this network namespace (Linux /proc/net/tcp, tcp6)."""
    import socket
    out = set()
    for name, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        try:
            lines = open(f"/proc/net/{name}").read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                raw = b"".join(bytes.fromhex(address[i:i + 8])[::-1] for i in range(0, len(address), 8))
                out.add(socket.inet_ntop(family, raw))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads listening sockets from Linux's /proc/net")
def test_local_training_service_engine_runs_two_trials_with_nni_on_localhost_only(tmp_path):
    import threading
    port = 18080 + os.getpid() % 1000
    seen, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            seen.update(_listening(port))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        summary, store = _search(tmp_path, engine="ts", concurrency=2, trials=2, port=port)
    finally:
        stop.set()
        watcher.join()
    rows = store.trials()
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)  # trials reached the manager
    assert seen == {"127.0.0.1"}  # NNI's manager listened, and on the loopback address only (not 0.0.0.0 or ::)


def _node_listens(host: str, call: str) -> dict:
    """Start a server in NNI's own node as NNI's manager would be started, with ``call`` as its listen."""
    import subprocess
    import nni_node
    from metanet.search.nni_adapter import nni_listens_on
    script = ("const http = require('http'); const s = http.createServer((q, r) => r.end('ok'));"
              "const get = (n) => http.get({host: '127.0.0.1', port: s.address().port}, (r) => {"
              "  let b = ''; r.on('data', (d) => b += d); r.on('end', () => { report(b); }); })"
              "  .on('error', (e) => n ? setTimeout(() => get(n - 1), 100) : report(e.code));"
              "const report = (via) => { console.log(JSON.stringify({address: s.address().address, via,"
              "  inherited: process.env.NODE_OPTIONS || null, host: process.env.METANET_NNI_HOST || null})); s.close(); };"
              f"{call.replace('PORT', str(19080 + os.getpid() % 1000))}")
    node = os.path.join(nni_node.__path__[0], "node")
    with nni_listens_on(host):
        proc = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("host, call, address", [
    ("127.0.0.1", "s.listen(PORT, () => get(20));", "127.0.0.1"),            # NNI's call: no address
    ("127.0.0.1", "s.listen(PORT, '0.0.0.0', () => get(20));", "127.0.0.1"),  # a wildcard is replaced too
    ("127.0.0.1", "s.listen({port: PORT}, () => get(20));", "127.0.0.1"),
    ("0.0.0.0", "s.listen(PORT, () => get(20));", "0.0.0.0"),                 # the user's opt-in
    ("127.0.0.2", "s.listen(PORT, () => get(20));", "127.0.0.2"),             # one address, and 127.0.0.1 relayed
])
def test_nni_manager_listens_where_asked(host, call, address):
    out = _node_listens(host, call)
    assert out["address"] == address
    assert out["via"] == "ok"  # NNI's Python side and local trials reach it at localhost
    assert out["inherited"] is None and out["host"] is None  # the manager's trials do not inherit the hook


def test_web_host_is_checked_before_the_run(tmp_path):
    from metanet.errors import ConfigError
    from metanet.search.driver import check_engine
    assert SearchConfig.from_dict({"web_host": "localhost"}).web_host == "127.0.0.1"
    for bad in ("example.com", 5, "127.0.0.1:80"):
        with pytest.raises(ConfigError, match="web_host: expected an IP address"):
            SearchConfig.from_dict({"web_host": bad})
    with pytest.raises(ConfigError, match="web_host: 198.51.100.7 is not an address of this machine"):
        check_engine(SearchConfig.from_dict({**CHEAP, "engine": "ts", "web_host": "198.51.100.7"}))
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key")
    machines = tmp_path / "machines.yaml"
    machines.write_text(f"nni_manager_ip: 10.0.0.2\nmachines:\n  - {{host: 10.0.0.5, user: ml, ssh_key_file: {key}}}\n")
    remote = {**CHEAP, "engine": "ts", "training_service": str(machines)}
    # remote machines cannot reach a manager that listens on the loopback address only: said before the run
    with pytest.raises(ConfigError, match="web_host: NNI's manager would listen on 127.0.0.1 only, but the "
                                          "machines connect back to 10.0.0.2"):
        check_engine(SearchConfig.from_dict(remote))
    check_engine(SearchConfig.from_dict({**remote, "web_host": "0.0.0.0"}))
    result = CliRunner().invoke(cli, ["search", "--engine", "ts", "--training-service", str(machines),
                                      "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--web-host" in result.output and not (tmp_path / "run").exists()


def test_config_file_and_flags(tmp_path):
    (tmp_path / "search.toml").write_text(textwrap.dedent(f'''
        stages = "zero-cost"
        trials = 1
        flops = "300M"
        proxy_resolution = 16
        out = "{tmp_path / 'run'}"
    '''))
    result = CliRunner().invoke(cli, ["search", "--config", str(tmp_path / "search.toml"), "--flops", "500M",
                                      "--json"])
    assert result.exit_code == 0, result.output
    assert RunDir.open(tmp_path / "run").config.flops == [500_000_000]  # the flag overrides the file
    assert json.loads(result.stdout)["trials"] == 1


@pytest.mark.parametrize("args, words", [
    (["--strategy", "annealing"], "strategy: unknown strateg"),
    (["--stages", "zero-cost", "--set", "amateur.max_steps=3"], "settings: stage 'amateur' is not among"),
    (["--flops", "5M"], "outside what space 'unified' reaches at 224px"),
    (["--flops", "abc"], "flops: invalid FLOP budget 'abc'"),
    (["--config", "missing.yaml"], "missing.yaml: cannot read config"),
    (["--resume", "nowhere"], "nowhere: not a search run directory"),
])
def test_search_errors_are_one_line(args, words):
    result = CliRunner().invoke(cli, ["search", *args])
    assert result.exit_code == 1 and words in result.output and "Traceback" not in result.output


def test_existing_run_dir_is_not_overwritten(tmp_path):
    _search(tmp_path, trials=1)
    with pytest.raises(RunError, match="already holds a search"):
        _search(tmp_path, trials=1)


def test_remote_machines_file_is_validated(tmp_path):
    from metanet.search.remote import RemoteConfigError, remote_service_config
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key")
    good = tmp_path / "machines.yaml"
    good.write_text(f"machines:\n  - host: 10.0.0.5\n    user: ml\n    ssh_key_file: {key}\n"
                    f"    python_path: /opt/venv/bin\n  - host: gpu2\n    user: ml\n    password: secret\n")
    config = remote_service_config(good)
    assert [m.host for m in config.machine_list] == ["10.0.0.5", "gpu2"] and config.platform == "remote"
    for text, words in [("machines: []", "non-empty list"), ("machines:\n  - host: a\n", "user: required"),
                        ("machines:\n  - {host: a, user: b}\n", "give ssh_key_file or password"),
                        ("machines:\n  - {host: a, user: b, password: x, port: 0}\n", "port: expected"),
                        ("machines:\n  - {host: a, user: b, ssh_key_file: /nope}\n", "does not exist"),
                        ("machines:\n  - {host: a, user: b, password: x, gpu: 1}\n", "unknown field 'gpu'")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(RemoteConfigError, match=words):
            remote_service_config(bad)


def test_gpus_per_trial_reach_nni_and_zero_is_never_forced_on_gpus(tmp_path):
    from metanet.search.nni_adapter import experiment_config, resolve_gpus
    cfg = SearchConfig.from_dict({**CHEAP, "engine": "ts", "concurrency": 2, "gpus_per_trial": 1,
                                  "trials_per_gpu": 2})
    service = experiment_config(cfg, 3, local_gpus=2).canonical_copy().training_service
    assert service.trial_gpu_number == 1 and service.max_trial_number_per_gpu == 2 and service.use_active_gpu
    auto = SearchConfig.from_dict({**CHEAP, "engine": "ts"})
    assert resolve_gpus(auto, local_gpus=4) == (1, None)  # a GPU machine: one per trial, never hidden
    gpus, note = resolve_gpus(auto, local_gpus=0)
    assert gpus == 0 and "no GPU on this machine" in note
    assert experiment_config(auto, 3, local_gpus=4).canonical_copy().training_service.trial_gpu_number == 1
    # this machine has no GPU: asking for one is an error before any run directory exists
    result = CliRunner().invoke(cli, ["search", "--engine", "ts", "--gpus-per-trial", "1", "--out",
                                      str(tmp_path / "run")])
    assert result.exit_code == 2 and "this machine has no GPU" in result.output
    assert not (tmp_path / "run").exists()


def test_training_service_options_need_the_ts_engine(tmp_path):
    result = CliRunner().invoke(cli, ["search", "--training-service", "machines.yaml", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "training_service: needs --engine ts" in result.output
    missing = CliRunner().invoke(cli, ["search", "--engine", "ts", "--training-service", str(tmp_path / "none.yaml"),
                                       "--out", str(tmp_path / "r")])
    assert missing.exit_code == 1 and "none.yaml" in missing.output and not (tmp_path / "r").exists()


def test_remote_config_takes_the_interpreter_or_its_folder_and_the_manager_address(tmp_path):
    from metanet.search.nni_adapter import experiment_config
    key = tmp_path / "id_ed25519"
    key.write_text("not a real key")
    machines = tmp_path / "machines.yaml"
    machine = "{{host: 127.0.0.1, port: {}, user: ml, ssh_key_file: %s, python_path: {}}}" % key
    machines.write_text("nni_manager_ip: 127.0.0.1\nmachines:\n  - " + machine.format(2222, "/opt/v/bin/python")
                        + "\n  - " + machine.format(2223, "/opt/v/bin") + "\n")
    cfg = SearchConfig.from_dict({**CHEAP, "engine": "ts", "training_service": str(machines)})
    config = experiment_config(cfg, 2, local_gpus=0)
    service = config.canonical_copy().training_service
    assert service.platform == "remote" and service.nni_manager_ip == "127.0.0.1"
    assert [m.python_path for m in service.machine_list] == ["/opt/v/bin", "/opt/v/bin"]
    assert [m.port for m in service.machine_list] == [2222, 2223]


def test_nni_errors_never_print_ssh_secrets():
    from metanet.search.nni_adapter import redact
    text = ("Bad training service platform: RemoteConfig(machine_list=[RemoteMachineConfig(host='10.0.0.5', "
            "user='ml', password='hunter2', ssh_passphrase=\"open sesame\")])")
    out = redact(text)
    assert "hunter2" not in out and "sesame" not in out and "host='10.0.0.5'" in out
    assert redact('{"password": "abc", "port": 22}') == '{"password": "***", "port": 22}'
