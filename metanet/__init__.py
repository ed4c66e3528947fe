"""metanet: neural architecture search over INTERN's unified MetaNet/UniNet space."""
__version__ = "0.1.0"

from .hookspecs import hookimpl  # noqa: E402  (the marker plugins use: ``@metanet.hookimpl``)

__all__ = ["__version__", "hookimpl"]
