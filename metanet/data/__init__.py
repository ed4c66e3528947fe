"""Data for the evaluation stages: upstream label sources and downstream tasks, read as users have them.

``--data`` takes the embedded demo (``digits``), a folder (a plain classification dataset,
``train/<class>/*.jpg`` with optional ``val/`` and ``test/``, folders or ``.tar`` files; or INTERN's
``upstream/<source>/`` and ``downstream/<task>/`` layout), or a dataset timm names (``hfds/NAME``,
``wds/NAME`` with ``--data-dir``). Everything is read with timm's readers and decoded once per search.

What lives where: :mod:`.bundle` (splits and the bundle the stages receive), :mod:`.images` (image
sources, views and transforms), :mod:`.folders` (the folder layouts, links and skipped files),
:mod:`.timm_datasets` (``hfds/`` and ``wds/``), :mod:`.decoded` (the decode-once cache),
:mod:`.augment` (training augmentation on decoded tensors), :mod:`.digits` (the demo) and :mod:`.load`
(``--data`` to a bundle). This package imports nothing of metanet's but its errors and the export
normalisation; the stages import it, never the reverse.
"""
from ..errors import DataError
from .bundle import DEFAULT_MIN_VAL_IMAGES, DEFAULT_VAL_FRACTION, DataBundle, Split, dataset_labels, for_eval, split_indices, subset
from .digits import HELDOUT_DIGITS, UPSTREAM_DIGITS, load_digits_bundle
from .folders import load_folder_bundle, read_tasks
from .images import ImageSource, ImageTransforms, ImageViews, folder_workers, to_rgb
from .load import load_data

__all__ = ["DEFAULT_MIN_VAL_IMAGES", "DEFAULT_VAL_FRACTION", "DataBundle", "DataError", "HELDOUT_DIGITS", "ImageSource",
           "ImageTransforms", "ImageViews", "Split", "UPSTREAM_DIGITS", "dataset_labels", "folder_workers",
           "for_eval", "load_data", "load_digits_bundle", "load_folder_bundle", "read_tasks", "split_indices",
           "subset", "to_rgb"]
