"""Built-in plugin: the embedded digits data and ImageFolder directories."""
from metanet.data import load_digits_bundle, load_folder_bundle
from metanet.hookspecs import hookimpl


@hookimpl
def metanet_register_datasets(register):
    register("digits", load_digits_bundle,
             description="scikit-learn's handwritten digits, upscaled: 3 upstream label sources on digits 0-6, "
                         "downstream task on held-out digits 7-9 (no download)")
    register("folder", load_folder_bundle,
             description="a directory with upstream/<source>/ and downstream/<task>/ ImageFolders")
