"""Built-in plugin: the unified MetaNet/UniNet search space."""
from metanet.plugin.hookspecs import hookimpl
from metanet.search_spaces.unified import DEFAULT_SPACE


@hookimpl
def metanet_register_search_spaces(register):
    register("unified", DEFAULT_SPACE)
