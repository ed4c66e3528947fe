"""metanet: neural architecture search over INTERN's unified MetaNet/UniNet space."""
__version__ = "0.1.0"
