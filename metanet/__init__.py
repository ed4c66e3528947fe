"""metanet: neural architecture search over INTERN's unified MetaNet/UniNet space."""
__version__ = "0.1.0"

from . import _timm_hook  # noqa: E402
from .hookspecs import hookimpl  # noqa: E402  (the marker plugins use: ``@metanet.hookimpl``)

# timm.create_model('metanet', arch=...) and the presets (metanet_b4, uninet_b1 ...) work in any
# process that imported metanet, whichever of the two was imported first.
_timm_hook.install()

__all__ = ["__version__", "hookimpl"]
