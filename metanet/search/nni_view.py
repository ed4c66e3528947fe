"""NNI's record of a finished search, shown again: the experiments a run started and NNI's manager in view mode."""
from __future__ import annotations

import contextlib
import time


def stored_experiments(run_dir) -> list[dict]:
    """The NNI experiments a run's searches started (``RUN/nni-experiments.jsonl``), oldest first."""
    import json
    from pathlib import Path
    path = Path(run_dir) / "nni-experiments.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and isinstance(entry.get("experiment"), str):
                out.append(entry)
    return out


def view_experiment(experiment_id: str, port: int, host: str = "127.0.0.1", experiments_dir: str | None = None):
    """NNI's manager in view mode for a finished experiment: its web UI and REST API on ``host:port``, read-only,
    from NNI's own record (``~/nni-experiments/ID``). Returns the process once it answers.

    NNI 3.0's ``nnictl view`` and ``Experiment.view`` refuse NAS experiments (their config check rejects the
    search space NAS fills in), so the manager is started here with the arguments they would give it.
    """
    import os
    import subprocess
    import sys
    from pathlib import Path

    import nni_node
    from nni.experiment import rest

    from metanet.errors import RunError
    from metanet.search.nni_adapter import nni_listens_on
    folder = Path(experiments_dir or os.path.expanduser("~/nni-experiments"))
    if not (folder / experiment_id / "db").is_dir():
        raise RunError(f"{folder / experiment_id}: NNI's record of experiment {experiment_id} is not on this machine")
    node_dir = Path(nni_node.__path__[0])
    cmd = [str(node_dir / "node"), "--max-old-space-size=4096", str(node_dir / "main.js"), "--port", str(port),
           "--experiment-id", experiment_id, "--action", "view", "--mode", "local", "--experiments-directory",
           str(folder), "--log-level", "error", "--foreground", "false", "--python-interpreter", sys.executable]
    with nni_listens_on(host):  # node reads the hook's file as it starts: the block lasts until it answers
        proc = subprocess.Popen(cmd, cwd=node_dir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)  # its static files are found from its own folder
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip().splitlines()
                last = next((line for line in reversed(err) if line.startswith("Error")), err[-1] if err else "")
                raise RunError(f"NNI's manager could not show experiment {experiment_id} on port {port}: {last}")
            with contextlib.suppress(Exception):
                rest.get(port, "/check-status", "")
                return proc
            time.sleep(0.3)
    proc.kill()
    raise RunError(f"NNI's manager did not answer on port {port} within 30 s")
