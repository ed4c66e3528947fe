"""NNI's ``remote`` training service: trials over SSH on the machines a file lists.

The file (YAML or JSON) holds ``machines``, each with ``host`` and ``user`` and either ``ssh_key_file``
or ``password``; optional ``port`` (22), ``python_path`` (the interpreter with metanet installed
there, or the folder holding it, which is what NNI wants), ``ssh_passphrase``, ``gpu_indices`` and
``use_active_gpu``; and, at the top level, ``nni_manager_ip``: the address of this machine that the
machines connect back to (NNI guesses one otherwise, wrongly on loopback or multi-homed hosts). Every
machine needs metanet installed and the data reachable at the same path. Validated here, before the
run directory is created and before NNI tries to connect.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from metanet.errors import RemoteConfigError

ALLOWED = {"host", "user", "port", "password", "ssh_key_file", "ssh_passphrase", "python_path", "gpu_indices",
           "use_active_gpu"}
TOP_LEVEL = {"machines", "nni_manager_ip"}


def load_machines_file(path: str | os.PathLike) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The machines of ``path``, validated, and its top-level options (``nni_manager_ip``)."""
    from metanet.runs.files import load_structured
    path = Path(path)
    data = load_structured(path, "machines file", RemoteConfigError)
    if isinstance(data, dict):
        unknown = sorted(set(data) - TOP_LEVEL)
        if unknown:
            raise RemoteConfigError(f"{path}: unknown field {unknown[0]!r} (top level: {', '.join(sorted(TOP_LEVEL))})")
        ip = data.get("nni_manager_ip")
        if ip is not None and (not isinstance(ip, str) or not ip):
            raise RemoteConfigError(f"{path}: nni_manager_ip: expected an address, got {ip!r}")
    return load_machines(path, data), {"nni_manager_ip": data.get("nni_manager_ip")}


def load_machines(path: str | os.PathLike, data: Any = None) -> list[dict[str, Any]]:
    from metanet.runs.files import load_structured
    path = Path(path)
    if data is None:
        data = load_structured(path, "machines file", RemoteConfigError)
    machines = data.get("machines") if isinstance(data, dict) else None
    if not isinstance(machines, list) or not machines:
        raise RemoteConfigError(f"{path}: expected a non-empty list under 'machines'")
    out = []
    for i, m in enumerate(machines):
        where = f"{path}: machines[{i}]"
        if not isinstance(m, dict):
            raise RemoteConfigError(f"{where}: expected a mapping")
        unknown = sorted(set(m) - ALLOWED)
        if unknown:
            raise RemoteConfigError(f"{where}: unknown field {unknown[0]!r} (fields: {', '.join(sorted(ALLOWED))})")
        for key in ("host", "user"):
            if not isinstance(m.get(key), str) or not m[key]:
                raise RemoteConfigError(f"{where}: {key}: required")
        port = m.get("port", 22)
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise RemoteConfigError(f"{where}: port: expected 1-65535, got {port!r}")
        if not m.get("password") and not m.get("ssh_key_file"):
            raise RemoteConfigError(f"{where}: give ssh_key_file or password")
        if m.get("ssh_key_file") and not Path(os.path.expanduser(m["ssh_key_file"])).is_file():
            raise RemoteConfigError(f"{where}: ssh_key_file: {m['ssh_key_file']} does not exist")
        python = m.get("python_path")
        if python is not None:
            if not isinstance(python, str) or not python:
                raise RemoteConfigError(f"{where}: python_path: expected a path, got {python!r}")
            if os.path.basename(python.rstrip("/")).startswith("python"):  # the interpreter: NNI wants its folder
                m = {**m, "python_path": os.path.dirname(python.rstrip("/"))}
        out.append({**m, "port": port})
    return out


def remote_service_config(path: str | os.PathLike, service=None):
    """NNI's ``RemoteConfig`` for the machines in ``path`` (``service``: fill that one); NNI validates it
    again when the run starts."""
    from nni.experiment.config import RemoteConfig, RemoteMachineConfig
    machines, options = load_machines_file(path)
    service = service if service is not None else RemoteConfig()
    service.machine_list = [RemoteMachineConfig(**{"ssh_key_file": None, **m}) for m in machines]
    service.reuse_mode = True
    if options["nni_manager_ip"]:
        service.nni_manager_ip = options["nni_manager_ip"]
    return service


def fetch_file(machines: list[dict[str, Any]], remote_path: str, dest: Path, host_hint: str | None = None) -> str:
    """Copy ``remote_path`` into ``dest`` over SFTP from whichever of ``machines`` holds it (the one whose
    host is ``host_hint`` first); returns that machine as ``host:port``. NNI's remote training service shares
    no filesystem, so this is how a trial's files reach the search.

    Host keys are taken as NNI's own SSH client takes them (unchecked): these are the machines the user named.
    """
    import paramiko
    order = sorted(machines, key=lambda m: m["host"] != host_hint)
    errors = []
    for m in order:
        where = f"{m['host']}:{m['port']}"
        client = paramiko.SSHClient()
        client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
        try:
            client.connect(m["host"], port=m["port"], username=m["user"], password=m.get("password"),
                           key_filename=os.path.expanduser(m["ssh_key_file"]) if m.get("ssh_key_file") else None,
                           passphrase=m.get("ssh_passphrase"), timeout=20, allow_agent=False,
                           look_for_keys=False)
            with client.open_sftp() as sftp:
                sftp.get(remote_path, str(dest))
            return where
        except FileNotFoundError:
            errors.append(f"{where}: no such file")
        except Exception as exc:  # a machine that cannot be reached may not be the one that holds the file
            errors.append(f"{where}: {type(exc).__name__}: {exc}")
        finally:
            client.close()
    raise FileNotFoundError(f"{remote_path} on none of the machines ({'; '.join(errors)})")


def weights_fetcher(machines_file: str | os.PathLike, run, echo):
    """The callback that brings a remote trial's trained backbone into ``run`` when the run keeps it (the best
    trials of the budget, as for local trials), and drops the weights that fell out of the best."""
    from safetensors.torch import load_file
    from metanet.runs.store import OK
    machines, _ = load_machines_file(machines_file)

    def on_record(trial_id: int, row: dict[str, Any]) -> None:
        where = row.get("weights")
        if row.get("status") != OK or not isinstance(where, dict) or trial_id not in run.kept(row["budget"]):
            return
        tmp = run.weights_path(trial_id).with_suffix(".part")
        tmp.parent.mkdir(exist_ok=True)
        try:
            fetch_file(machines, where["path"], tmp, where.get("host"))
            run.save_weights(trial_id, load_file(str(tmp)), where["stage"], int(where["img_size"]))
        except Exception as exc:
            echo(f"warning: trial {trial_id}: its trained backbone could not be copied from the machine that "
                 f"trained it ({exc}); an export of it would start from random weights")
        finally:
            tmp.unlink(missing_ok=True)
        run.drop_weights(row["budget"])

    return on_record
