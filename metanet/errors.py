"""One error base for everything a user can get wrong; the CLI turns it into one line, once.

Every message names the field, file or option at fault. Subclasses say which area raised; they
also derive from ``ValueError`` so callers of the Python API can catch the broad family.
``param`` names the command-line option the error is about: the CLI then answers as a usage
error (exit status 2) instead of a failed command (exit status 1).
"""
from __future__ import annotations


class MetanetError(ValueError):
    """Base of every user-facing error; ``str(exc)`` is the one-line message."""

    def __init__(self, message: str, *, param: str | None = None):
        super().__init__(message)
        self.param = param

    def __str__(self) -> str:
        return self.args[0] if self.args else ""


class SpecError(MetanetError):
    """An architecture spec that cannot be built; the message names the field."""


class ConfigError(MetanetError):
    """Search or stage options that cannot be used; the message names the option."""


class UnknownName(ConfigError):
    """A name that nothing registered (stage, operator, space, strategy, dataset, exporter)."""


class PluginError(MetanetError):
    """A plugin could not be loaded or one of its hooks failed; the message names the plugin."""

    def __init__(self, message: str, plugin: str | None = None):
        super().__init__(message)
        self.plugin = plugin


class DataError(MetanetError):
    """Unusable data; the message names the folder, file or task."""


class RunError(MetanetError):
    """A run directory that cannot be used as asked (missing, damaged, already a run)."""


class ExportError(MetanetError):
    """An export that cannot be made; the message names the option or file."""


class RemoteConfigError(ConfigError):
    """A machines file NNI could not use; the message names the file and the field."""


class SupernetError(MetanetError):
    """A supernet that cannot serve what is asked (another space, budget or resolution; a damaged checkpoint)."""
