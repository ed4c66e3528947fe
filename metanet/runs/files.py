"""Reading the small structured files users write (search configs, machine lists)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


MAX_BYTES = 16 << 20  # far above any config or machines file; a larger one is not one


def load_structured(path: str | os.PathLike, what: str, error: type[Exception]) -> Any:
    """Parse a YAML (default), TOML (``.toml``) or JSON (``.json``) file; failures raise ``error`` naming it."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a device, a pipe or a folder: read as a file it may never end
        raise error(f"{path}: not a regular file; a {what} is a YAML, TOML or JSON file")
    if path.is_file() and path.stat().st_size > MAX_BYTES:
        raise error(f"{path}: {path.stat().st_size:,} bytes is too large for a {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte {exc.start})") from None
    kind = {".toml": "TOML", ".json": "JSON"}.get(path.suffix, "YAML")
    try:
        if kind == "TOML":
            import tomllib
            return tomllib.loads(text)
        if kind == "JSON":
            return json.loads(text)
        import yaml
        return yaml.safe_load(text)
    except RecursionError:
        raise error(f"{path}: {what} is nested too deeply") from None
    except Exception as exc:
        raise error(f"{path}: not valid {kind} ({str(exc).splitlines()[0]})") from None
