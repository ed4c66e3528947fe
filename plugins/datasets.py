"""Built-in plugin: the embedded digits data and ImageFolder directories."""
from metanet.plugin.hookspecs import hookimpl


@hookimpl
def metanet_register_datasets(register):
    register("digits", "metanet.data:load_digits_bundle",
             description="scikit-learn's handwritten digits, upscaled: 3 upstream label sources on digits 0-6, "
                         "downstream task on held-out digits 7-9 (no download)")
    register("folder", "metanet.data:load_folder_bundle", path=True,
             description="a folder: train/<class>/ with optional val/ and test/ (folders or .tar files), "
                         "or INTERN's upstream/<source>/ and downstream/<task>/")
