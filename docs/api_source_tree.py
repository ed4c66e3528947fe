"""MkDocs hooks: the source tree as Python sees it, for mkdocstrings to read; the benchmarks' figures.

setup.py maps the sibling folders ``plugins/``, ``search_spaces/`` and ``kernels/`` into the ``metanet``
package; reading the repository alone, griffe would not find ``metanet.search_spaces``. Before the build this
hook lays out ``build/api-src/metanet`` as links to ``metanet/``'s entries and to the three folders (nothing
is copied; ``build/`` is ignored by git).
"""
import os
import shutil
from pathlib import Path

from mkdocs.plugins import event_priority

MAPPED = {"plugins": "plugins", "search_spaces": "search_spaces", "kernels": "kernels"}


# before mkdocstrings reads its `paths` (hooks otherwise run after the plugins): on a clean clone the tree must
# exist by then, or the first build finds nothing
@event_priority(100)
def on_config(config):
    root = Path(config.config_file_path).resolve().parent
    tree = root / "build" / "api-src" / "metanet"
    if tree.parent.exists():
        shutil.rmtree(tree.parent)
    tree.mkdir(parents=True)
    for entry in (root / "metanet").iterdir():
        if entry.name != "__pycache__":
            os.symlink(entry, tree / entry.name)
    for name, folder in MAPPED.items():
        os.symlink(root / folder, tree / name)
    return config


def on_files(files, config):
    """The benchmarks' figures (``benchmarks/results/**/*.png``, committed beside their numbers) published at
    the same paths under the site, so a page shows the figure the script wrote, not a copy of it."""
    from mkdocs.structure.files import File
    root = Path(config.config_file_path).resolve().parent
    for png in sorted((root / "benchmarks" / "results").rglob("*.png")):
        files.append(File(png.relative_to(root).as_posix(), str(root), config["site_dir"],
                          config["use_directory_urls"]))
    return files
