"""Built-in plugin: the operators of the unified space, registered exactly as a plugin's are.

Each has a factory (``metanet.search_spaces.operators``, imported when a block is built, so the
registry stays free of torch) and its analytic cost formula (``metanet.search_spaces.estimate``).
"""
from metanet.plugin.hookspecs import hookimpl
from metanet.search_spaces import estimate

_FACTORIES = "metanet.search_spaces.operators:"


@hookimpl
def metanet_register_operators(register):
    register("mbconv", _FACTORIES + "mbconv", cost=estimate.mbconv_cost,
             description="expand 1x1, depthwise 3x3, SE, project 1x1 (MetaNet MBConv, UniNet DWConvBlock)")
    register("fused_mbconv", _FACTORIES + "fused_mbconv", cost=estimate.fused_mbconv_cost,
             description="full 3x3 conv for expand + depthwise, SE, project 1x1 (MetaNet FusedMBConv)")
    register("attention", _FACTORIES + "attention_block", cost=estimate.attention_cost, attention=True,
             description="global MHSA + MLP, 3x3 depthwise conv positional encoding (MetaNet SABlock)")
    register("attention_rpb", _FACTORIES + "attention_rpb_block", cost=estimate.attention_rpb_cost, attention=True,
             description="global MHSA + MLP with a learned relative-position bias")
    register("xca", _FACTORIES + "xca_block", cost=estimate.xca_cost, attention=True,
             description="cross-covariance attention + MLP (XCiT; MetaNet-B15)")
