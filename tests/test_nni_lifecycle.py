"""A training-service search ends, or says why it cannot: NNI's channel decoding, a dead manager, signals.

Real NNI managers on this machine (the local training service); the remote one is in test_remote.py.
"""
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

METANET = str(Path(sys.executable).with_name("metanet"))


def test_channel_messages_with_comment_marks_in_nested_strings_decode():
    """NNI's trial-end event carries the space's base64 pickle escaped twice; json_tricks' comment stripping
    cut such a message at a '//' inside it, and the search waited forever for a trial that had ended."""
    import nni
    from metanet.search.nni_lifecycle import strict_json
    inner = json.dumps({"hyper_params": json.dumps({"model_kwargs": {"__nni_obj__": "gAWVaw//sGRi#x"}})})
    message = json.dumps({"type": "EN", "content": inner})
    with pytest.raises(json.JSONDecodeError):
        nni.load(message)  # NNI 3.0 as shipped: if this passes, NNI fixed it and strict_json can go
    with strict_json():
        assert nni.load(message) == {"type": "EN", "content": inner}
    with pytest.raises(json.JSONDecodeError):
        nni.load(message)  # restored after the block


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _search(out: Path, port: int, trials: int = 3):
    cmd = [METANET, "search", "--out", str(out), "--stages", "zero-cost,amateur", "--set", "amateur.max_steps=30",
           "--trials", str(trials), "--engine", "ts", "--concurrency", "1", "--port", str(port),
           "--proxy-resolution", "16"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finished(out: Path) -> int:
    try:
        with sqlite3.connect(out / "trials.sqlite") as db:
            return db.execute("SELECT count(*) FROM trials WHERE status='ok'").fetchone()[0]
    except sqlite3.Error:
        return 0


def _manager_pids(port: int) -> list[int]:
    found = subprocess.run(["pgrep", "-f", f"nni_node/main.js --port {port} "], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _after_first_trial(proc, out: Path) -> None:
    deadline = time.monotonic() + 240
    while _finished(out) < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no trial finished in 240 s"
        time.sleep(0.5)


def _signal_the_manager(tmp_path, signum):
    """A ts search whose NNI manager gets ``signum`` once the first trial has finished: (process, run, port)."""
    out, port = tmp_path / "run", _port()
    proc = _search(out, port)
    _after_first_trial(proc, out)
    pids = _manager_pids(port)
    assert len(pids) == 1
    os.kill(pids[0], signum)
    return proc, out, port


@pytest.mark.slow
def test_a_manager_that_dies_is_named_within_a_minute_and_the_run_resumes(tmp_path):
    proc, out, port = _signal_the_manager(tmp_path, signal.SIGKILL)
    killed = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and time.monotonic() - killed < 60
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "NNI's manager" in lines[0] and f"--resume {out}" in lines[0], err
    assert "Traceback" not in err
    kept = _finished(out)
    assert kept >= 1  # the finished trials stay
    resumed = subprocess.run([METANET, "search", "--resume", str(out)], capture_output=True, text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stderr
    assert _finished(out) == 3 and not _manager_pids(port)


@pytest.mark.slow
def test_sigterm_stops_the_manager_and_the_port_is_free_for_the_next_search(tmp_path):
    out, port = tmp_path / "run", _port()
    proc = _search(out, port)
    _after_first_trial(proc, out)
    assert _manager_pids(port)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in err
    assert not _manager_pids(port)  # no orphan holding the port (and port + 1)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    assert _finished(out) >= 1


@pytest.mark.slow
def test_a_manager_that_stops_answering_is_named_and_killed(tmp_path):
    """SIGSTOP: the manager keeps its sockets open and answers nothing (a hung process, a swapped-out machine);
    the channel sees no failure, the watchdog's REST check does: exit 1 naming it, the manager killed, the
    finished trials kept."""
    proc, out, port = _signal_the_manager(tmp_path, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, err = proc.communicate(timeout=180)
    finally:
        left = _manager_pids(port)  # what the search left behind (cleaned up here whatever the outcome)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    took = time.monotonic() - stopped
    lines = [line for line in err.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 1 and len(lines) == 1, err
    assert f"NNI's manager on port {port} stopped answering" in lines[0] and f"--resume {out}" in lines[0]
    assert "Traceback" not in err and took < 90, took  # ~40 s to be sure it is silent, 5 s of grace to stop
    assert not left and _finished(out) >= 1
