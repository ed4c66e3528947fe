"""Reading the small structured files users write (search configs, machine lists)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def load_structured(path: str | os.PathLike, what: str, error: type[Exception]) -> Any:
    """Parse a YAML (default), TOML (``.toml``) or JSON (``.json``) file; failures raise ``error`` naming it."""
    path = Path(path)
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
