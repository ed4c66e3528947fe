"""NNI's ``remote`` training service: trials over SSH on the machines a file lists.

The file (YAML or JSON) holds ``machines``, each with ``host`` and ``user`` and either ``ssh_key_file``
or ``password``; optional ``port`` (22), ``python_path`` (the interpreter with metanet installed
there) and ``ssh_passphrase``. Every machine needs metanet installed and the data reachable at the
same path. Validated here, before NNI tries to connect.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import RemoteConfigError

ALLOWED = {"host", "user", "port", "password", "ssh_key_file", "ssh_passphrase", "python_path"}


def load_machines(path: str | os.PathLike) -> list[dict[str, Any]]:
    from .files import load_structured
    path = Path(path)
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
        out.append({**m, "port": port})
    return out


def remote_service_config(path: str | os.PathLike):
    """NNI's ``RemoteConfig`` for the machines in ``path`` (NNI validates it again when the run starts)."""
    from nni.experiment.config import RemoteConfig, RemoteMachineConfig
    machines = [RemoteMachineConfig(**{"ssh_key_file": None, **m}) for m in load_machines(path)]
    return RemoteConfig(machine_list=machines, reuse_mode=True)
