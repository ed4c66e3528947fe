"""A stage's settings as a typed schema: each one's type, range and choices, checked before any trial.

A stage registers ``defaults={"batch_size": Setting(32, ge=1, integer=True), ...}``; a plain value
(``{"scale": 1e-6}``) is a setting typed by its default, as plugins wrote them before schemas existed.
Users' values (``--set amateur.batch_size=0``, a config file's ``settings:``) are checked against it when the
search or evaluation is set up, so a value no trial could use is one line naming ``stage.setting``, not a
failed trial per candidate (or worse, a search that "succeeds" on nonsense).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from metanet.errors import ConfigError

_TYPES = {bool: "boolean", int: "integer", float: "number", str: "text"}


@dataclass(frozen=True)
class Setting:
    """One stage setting: its default and what values it takes.

    ``type``: ``bool``, ``int``, ``float`` or ``str`` (read from the default; give it when the default is
    None; a list or mapping default is untyped: any value). ``gt``/``ge``/``lt``/``le``: bounds on a number, as in pydantic's ``Field``. ``choices``: the values
    it takes. ``finite``: whether infinities are refused (NaN always is). ``nullable``: whether None (JSON
    null) is taken (always when the default is None). ``names``: ``"sources"`` or ``"tasks"``, the value names
    the data's upstream sources or downstream tasks (a name, comma-separated names or a list of them; checked
    against the data once it is read, before any trial). ``description``: shown by ``metanet plugins``.
    """

    default: Any
    description: str = ""
    type: type | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None
    choices: tuple | None = None
    finite: bool = True
    nullable: bool = False
    names: str | None = None

    def __post_init__(self):
        if self.type is None and type(self.default) in _TYPES:  # a list or mapping default takes any value
            object.__setattr__(self, "type", type(self.default))
        if self.type not in (None, *_TYPES):
            raise TypeError(f"Setting type must be one of bool, int, float, str, got {self.type!r}")
        if self.choices is not None:
            object.__setattr__(self, "choices", tuple(self.choices))
        if self.names not in (None, "sources", "tasks"):
            raise TypeError(f"Setting names must be 'sources' or 'tasks', got {self.names!r}")

    @classmethod
    def of(cls, value: Any) -> "Setting":
        """A plain default as a setting: typed by its value, any number of that kind (as before schemas:
        an int default takes fractional values, for plugins whose 'epochs' stay fractional)."""
        if isinstance(value, Setting):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value, type=float, finite=False)
        if isinstance(value, float):
            return cls(value, finite=False)
        return cls(value)

    @property
    def kind(self) -> str:
        return _TYPES.get(self.type, "any")

    def check(self, where: str, value: Any) -> Any:
        """``value`` as this setting takes it (``5.0`` -> ``5`` for an integer, ``"inf"`` -> inf for a number),
        or a one-line :class:`ConfigError` naming ``where``."""
        if value is None:
            if self.nullable or self.default is None:
                return None
            raise ConfigError(f"{where}: expected {self._expected()}, got null")
        if self.names is not None:
            listed = value.split(",") if isinstance(value, str) else value
            if not isinstance(listed, (list, tuple)) or not listed or \
                    not all(isinstance(n, str) and n.strip() for n in listed):
                raise ConfigError(f"{where}: expected the name of one of the data's {self.names} (or comma-separated "
                                  f"names, or a list), got {value!r}")
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: expected true or false, got {value!r}")
        elif self.type in (int, float):
            value = self._number(where, value)
        elif self.type is str and not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, self.choices))}, got {value!r}")
        return value

    def _number(self, where: str, value: Any) -> int | float:
        if isinstance(value, str):  # 'inf' from --set, '1e-3' from YAML 1.1 (which reads it as text)
            try:
                value = float(value.strip())
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{where}: expected a number, got NaN")
        if math.isinf(value) and (self.finite or self.type is int):
            raise ConfigError(f"{where}: expected a finite number, got {value}")
        if self.type is int:
            if not float(value).is_integer():
                raise ConfigError(f"{where}: expected a whole number, got {value!r}")
            value = int(value)
        elif isinstance(self.default, int) and not isinstance(self.default, bool) and float(value).is_integer() \
                and not math.isinf(value):
            value = int(value)  # a plain int default keeps its type for integer values, as before schemas
        for op, bound, ok in (("greater than", self.gt, lambda v, b: v > b), ("at least", self.ge, lambda v, b: v >= b),
                              ("less than", self.lt, lambda v, b: v < b), ("at most", self.le, lambda v, b: v <= b)):
            if bound is not None and not ok(value, bound):
                raise ConfigError(f"{where}: must be {op} {bound:g}, got {value!r}")
        return value

    def check_data(self, where: str, value: Any, bundle) -> None:
        """For a setting that names the data's sources or tasks: each name must be one ``bundle`` has."""
        if self.names is None or value is None:
            return
        table = bundle.sources if self.names == "sources" else bundle.tasks
        kind = self.names[:-1]
        for name in (value.split(",") if isinstance(value, str) else value):
            if name.strip() not in table:
                has = f"it has {', '.join(table)}" if table else f"it has no {self.names}"
                raise ConfigError(f"{where}: data '{bundle.name}' has no {kind} {name.strip()!r} ({has})")

    def _expected(self) -> str:
        if self.choices:
            return f"one of {', '.join(map(str, self.choices))}"
        return {"boolean": "true or false", "integer": "a whole number", "number": "a number"}.get(self.kind, self.kind)

    def describe(self) -> dict[str, Any]:
        """The setting as ``metanet plugins --json`` lists it: default, type, and the constraints it has."""
        out: dict[str, Any] = {"default": self.default, "type": self.kind}
        for key in ("gt", "ge", "lt", "le", "choices"):
            if getattr(self, key) is not None:
                out[key] = list(self.choices) if key == "choices" else getattr(self, key)
        if self.nullable or self.default is None:
            out["nullable"] = True
        if self.names:
            out["names"] = self.names
        if self.description:
            out["description"] = self.description
        return out

    def constraint_text(self) -> str:
        """``integer >= 1``, ``one of sgd, adamw``, ``number in (0, 1]`` ...: for help tables and docs."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        if self.names:
            return f"names of the data's {self.names}"
        low = f"({self.gt:g}" if self.gt is not None else f"[{self.ge:g}" if self.ge is not None else None
        high = f"{self.lt:g})" if self.lt is not None else f"{self.le:g}]" if self.le is not None else None
        if low and high:
            return f"{self.kind} in {low}, {high}"
        if low:
            return f"{self.kind} {'>' if low[0] == '(' else '>='} {low[1:]}"
        if high:
            return f"{self.kind} {'<' if high[-1] == ')' else '<='} {high[:-1]}"
        return self.kind


def schema(defaults: dict[str, Any] | None) -> dict[str, Setting]:
    """A stage's ``defaults`` as settings (plain values typed by themselves)."""
    return {key: Setting.of(value) for key, value in (defaults or {}).items()}


def check_data_names(stage: str, settings: dict[str, Setting], config: dict[str, Any], bundle) -> None:
    """A stage's settings that name the data's sources or tasks, against the data it will read."""
    for key, setting in settings.items():
        setting.check_data(f"{stage}.{key}", config.get(key), bundle)


def check_settings(stage: str, settings: dict[str, Setting], values: dict[str, Any] | None) -> dict[str, Any]:
    """The defaults with ``values`` applied and checked; an unknown key or an unusable value is an error."""
    out = {key: s.default for key, s in settings.items()}
    for key, value in (values or {}).items():
        if key not in settings:
            raise ConfigError(f"stage {stage!r}: unknown setting {key!r} (settings: {', '.join(settings)})")
        out[key] = settings[key].check(f"{stage}.{key}", value)
    return out


__all__ = ["Setting", "schema", "check_settings", "check_data_names"]
