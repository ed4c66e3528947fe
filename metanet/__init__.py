"""metanet: neural architecture search over INTERN's unified MetaNet/UniNet space."""
__version__ = "0.1.0"

from .search_spaces.timm_models import install_timm_hook  # noqa: E402

# timm.create_model('metanet', arch=...) and the presets (metanet_b4, uninet_b1 ...) work in any
# process that imported metanet, whichever of the two was imported first.
install_timm_hook()


def __getattr__(name):
    # ``metanet.hookimpl`` (the marker plugins use) and ``metanet.registry`` need pluggy; resolved on
    # first use so that ``metanet.kernels`` imports on a machine with torch and Triton alone.
    if name == "hookimpl":
        from .hookspecs import hookimpl
        return hookimpl
    if name == "registry":
        from .plugin_manager import registry
        return registry
    raise AttributeError(f"module 'metanet' has no attribute {name!r}")


__all__ = ["__version__", "hookimpl", "registry"]
