"""NNI's remote training service, really run: two OpenSSH servers on 127.0.0.1, a search over both."""
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from metanet.search.driver import run_search
from metanet.runs.config import SearchConfig

SSHD = "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_ssh_servers(tmp_path):
    """Two sshd on 127.0.0.1 only (two ports), with a throwaway host key and client key."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} is not installed (make test installs openssh-server when run as root)")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root here (privilege separation)")
    keys = tmp_path / "ssh"
    keys.mkdir()
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name)], check=True)
    shutil.copy(keys / "client.pub", keys / "authorized_keys")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege-separation directory
    servers = []
    for i in range(2):
        port = _free_port()
        conf = keys / f"sshd_{i}.conf"
        conf.write_text(f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {keys / 'host'}\n"
                        f"PidFile {keys / f'sshd_{i}.pid'}\nAuthorizedKeysFile {keys / 'authorized_keys'}\n"
                        "PasswordAuthentication no\nPermitRootLogin prohibit-password\nStrictModes no\n"
                        "UsePAM no\nSubsystem sftp internal-sftp\n")
        subprocess.run([SSHD, "-f", str(conf), "-E", str(keys / f"sshd_{i}.log")], check=True)
        servers.append((port, keys / f"sshd_{i}.pid"))
    for port, _ in servers:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
    yield [port for port, _ in servers], keys / "client"
    for _, pid in servers:
        if pid.exists():
            os.kill(int(pid.read_text()), signal.SIGTERM)


@pytest.mark.slow
def test_remote_search_with_3x_more_trials_than_machines_finishes_and_exports(tmp_path, two_ssh_servers):
    """6 trials on 2 machines (concurrency 2): every trial finishes; rows and the kept trained backbones come back to
    the search without a shared filesystem, and `metanet export` of the driver's run uses those weights."""
    import sys
    from click.testing import CliRunner
    from safetensors import safe_open
    from metanet.cli import cli
    from metanet.runs.directory import KEEP_WEIGHTS, RunDir
    ports, key = two_ssh_servers
    python = sys.executable  # the interpreter itself: metanet gives NNI its folder
    machines = tmp_path / "machines.yaml"
    machines.write_text("nni_manager_ip: 127.0.0.1\nmachines:\n" + "".join(
        f"  - {{host: 127.0.0.1, port: {p}, user: {getpass.getuser()}, ssh_key_file: {key}, python_path: {python}}}\n"
        for p in ports))
    started = time.time()
    cfg = SearchConfig.from_dict({"stages": ["zero-cost", "amateur"], "settings": {"amateur": {"max_steps": 5}},
                                  "proxy_resolution": 16, "trials": 6, "flops": ["300M"], "engine": "ts",
                                  "concurrency": 2, "training_service": str(machines),
                                  "port": 19000 + os.getpid() % 1000, "out": str(tmp_path / "run")})
    summary = run_search(cfg, progress=False, echo=lambda m: None)
    assert summary.trials == 6 and summary.failed == 0
    # NNI started one trial runner per machine, each over its own SSH server, and each ran trials
    envs = [d for d in Path("/tmp/nni-experiments").glob("*/envs/*") if d.stat().st_mtime >= started - 1]
    runners = [d / "trialrunner_stdout" for d in envs if (d / "trialrunner_stdout").exists()]
    assert len(runners) == 2
    for log in runners:
        text = log.read_text()
        assert "'nniManagerIP': '127.0.0.1'" in text and "start to run trial" in text
        # the trials were never told where the run directory is: their rows came back through NNI's channel
        assert '"settings": {"run_dir": null' in text
    run = RunDir.open(tmp_path / "run")
    rows = run.store.trials()
    assert len(rows) == 6 and all(r["status"] == "ok" and r["score"] is not None for r in rows)
    assert all(r["metrics"]["amateur.acc"] == r["score"] for r in rows)
    kept = run.kept(rows[0]["budget"])
    assert len(kept) == min(KEEP_WEIGHTS, 6)
    assert sorted(p.name for p in (tmp_path / "run" / "weights").glob("*.safetensors")) == \
        sorted(f"trial_{i}.safetensors" for i in kept)  # copied over SFTP, the others dropped
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "run"), "--out", str(tmp_path / "best")])
    assert result.exit_code == 0, result.output
    assert "trained by the search's stages" in result.output
    with safe_open(str(tmp_path / "best" / "model.safetensors"), "pt") as f:
        assert f.metadata()["trained"] == "True"
