"""metanet: neural architecture search over INTERN's unified MetaNet/UniNet space.

The packages, in the order data flows through them (each may import the ones before it, never after;
``tests/test_architecture.py`` holds the contract):

* core modules: :mod:`metanet.errors` (one-line errors), :mod:`metanet.budget` (FLOP budgets), :mod:`metanet.seeds`
  (seeds derived from names), :mod:`metanet.atomic` (locks and atomic file writes), :mod:`metanet.writable` (output
  folders checked before any work), :mod:`metanet.quiet` (NNI's noise).
* :mod:`metanet.plugin`: hook specs, the plugin manager, the registered objects (operators, spaces, stages ...).
* :mod:`metanet.data`: data as users have it (folders, tars, timm datasets), splits, the decode-once cache.
* :mod:`metanet.search_spaces`: architecture specs, the unified space, operators, the model, estimator and counter,
  the supernet model (mapped from the ``search_spaces/`` folder).
* :mod:`metanet.kernels`: the Triton attention kernels beside their torch reference (``kernels/``).
* :mod:`metanet.train`: where and how candidates train: the Fabric runtime, training loops, seeds, supernet training.
* :mod:`metanet.evaluate`: running stages on a candidate, its score, its reproduction record.
* :mod:`metanet.runs`: a run's directory, trial store, config, locks and atomic files.
* :mod:`metanet.search`: the search driver, NNI, budgets' screening, multi-fidelity, proxy-check, reports.
* :mod:`metanet.export`: exporting a searched backbone (timm folder, TorchScript, ONNX), converting checkpoints.
* :mod:`metanet.cli`: the ``metanet`` command line.
* :mod:`metanet.plugins`: the built-in plugins, registered as external ones are (``plugins/``).
"""
__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.util
import sys

# Modules that moved when metanet became packages, importable under their old names for plugins and scripts
# written against them (`import metanet.training`, `from metanet.stages import StageContext` ...).
MOVED = {
    "metanet.hookspecs": "metanet.plugin.hookspecs", "metanet.plugin_manager": "metanet.plugin.manager",
    "metanet.registered": "metanet.plugin.registered", "metanet.runtime": "metanet.train.runtime",
    "metanet.training": "metanet.train.loop",
    "metanet.supernet": "metanet.train.supernet_training", "metanet.stages": "metanet.evaluate.candidate",
    "metanet.reproduce": "metanet.search.reproduce", "metanet.counter": "metanet.search_spaces.counter",
    "metanet.search_config": "metanet.runs.config", "metanet.run_dir": "metanet.runs.directory",
    "metanet.store": "metanet.runs.store", "metanet.files": "metanet.runs.files",
    "metanet.nni_experiment": "metanet.search.nni_adapter", "metanet.remote": "metanet.search.remote",
    "metanet.fidelity": "metanet.search.fidelity", "metanet.trial": "metanet.search.trial",
    "metanet.proxy_check": "metanet.search.proxy_check", "metanet.report": "metanet.search.report",
    "metanet.progress": "metanet.search.progress", "metanet.convert": "metanet.export.convert",
    "metanet.plugins.amateur": "metanet.plugins.stages.amateur",
    "metanet.plugins.downstream": "metanet.plugins.stages.downstream",
    "metanet.plugins.expert": "metanet.plugins.stages.expert",
    "metanet.plugins.generalist": "metanet.plugins.stages.generalist",
    "metanet.plugins.zero_cost": "metanet.plugins.stages.zero_cost",
    "metanet.plugins.supernet": "metanet.plugins.stages.supernet_scoring",
    "metanet.search_spaces.supernet": "metanet.search_spaces.supernet_model",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name in :data:`MOVED` and gives the module it moved to (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _Moved) for f in sys.meta_path):
    sys.meta_path.insert(0, _Moved())

from metanet.search_spaces.timm_models import install_timm_hook  # noqa: E402

# timm.create_model('metanet', arch=...) and the presets (metanet_b4, uninet_b1 ...) work in any
# process that imported metanet, whichever of the two was imported first.
install_timm_hook()


def __getattr__(name):
    # ``metanet.hookimpl`` (the marker plugins use) and ``metanet.registry`` need pluggy; resolved on
    # first use so that ``metanet.kernels`` imports on a machine with torch and Triton alone.
    if name == "hookimpl":
        from metanet.plugin.hookspecs import hookimpl
        return hookimpl
    if name == "registry":
        from metanet.plugin.manager import registry
        return registry
    if name == "Setting":  # a stage setting's type and range: register("s", run, defaults={"k": Setting(...)})
        from metanet.plugin.settings import Setting
        return Setting
    raise AttributeError(f"module 'metanet' has no attribute {name!r}")


__all__ = ["__version__", "hookimpl", "registry", "Setting"]
