"""Hook specifications: every extension point of metanet, in one module.

Plugins implement these with the :data:`metanet.hookimpl` marker (or an unmarked function with the
same ``metanet_`` name). Collection hooks receive a ``register`` callback and are called once per
plugin when the plugin manager loads, so what each plugin registers is attributed to it.
"""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("metanet")
hookimpl = pluggy.HookimplMarker("metanet")


# -- collection hooks -------------------------------------------------------------------------

@hookspec
def metanet_register_search_spaces(register):
    """Register search spaces: ``register(name, space)``.

    Called once per plugin at load time. ``space`` is a
    :class:`metanet.search_spaces.unified.SpaceConfig` (choice lists over the unified skeleton).
    The name is what ``--space`` selects. Returns nothing.
    """


@hookspec
def metanet_register_operators(register):
    """Register block operators: ``register(name, factory, cost=None, attention=False)``.

    Called once per plugin at load time. ``factory(cin, cout, stride, expand, head_dim, drop_path,
    grid)`` returns an ``nn.Module`` mapping NCHW to NCHW (stride and width change happen in the
    first block of a stage). ``cost`` has the same arguments plus ``hw_in``/``hw_out`` and returns
    ``(flops, params)``; without it the estimator counts one built block with fvcore (cached per
    shape). ``attention=True`` lets LG-DSM and the head-dim rules apply. The built-in operators
    (``mbconv``, ``fused_mbconv``, ``attention``, ``attention_rpb``, ``xca``) are registered through
    this hook too; a name registered twice is an error. Returns nothing.
    """


@hookspec
def metanet_register_strategies(register):
    """Register search strategies: ``register(name, factory, description="", constraints=True)``.

    Called once per plugin at load time. ``factory(seed=..., **options)`` returns an NNI 3.0
    strategy. ``constraints=False`` for strategies that cannot read the space's validity constraint
    (NNI's TPE): invalid samples are then repaired or screened. Returns nothing.
    """


@hookspec
def metanet_register_datasets(register):
    """Register data sources: ``register(name, loader, description="", path=False)``.

    Called once per plugin at load time. ``loader(resolution=..., seed=...)`` returns a
    :class:`metanet.data.DataBundle` (upstream label sources and downstream tasks). With
    ``path=True`` the loader reads a folder: ``loader(path, resolution=..., seed=...)``, selected by
    ``--data NAME:PATH`` (or ``--data PATH`` when it is the only such loader). Returns nothing.
    """


@hookspec
def metanet_register_stages(register):
    """Register evaluation stages: ``register(name, run=None, defaults=None, description="",
    trains_backbone=False, score_metric="acc", check=None, fidelity=False)``.

    Called once per plugin at load time. ``run(context)`` evaluates one candidate (``context`` is a
    :class:`metanet.evaluate.candidate.StageContext`) and returns a dict of metric name -> number: metrics
    measured on held-out data come from ``context.data``'s validation sets (``split.val``; rewards
    are computed from them), with their test-set counterparts named ``test_<name>`` (reported only;
    :func:`metanet.train.loop.evaluate_split` gives both). ``defaults``
    is the stage's settings schema (epochs, batch size, lr ...) that users override with ``--set``: each a
    :class:`metanet.Setting` (default, type, range, choices) or a plain value typed by itself, every value a
    user gives checked against it before any trial. ``trains_backbone=True`` declares that the stage leaves
    trained backbone weights in ``context.state[name]["weights"]`` (the search keeps the best for
    export). ``score_metric`` is the metric that scores a candidate when this is the last stage of
    a run that declares one (``None``: never the default score). ``check(config, setup)``, optional,
    raises a ``metanet.errors.MetanetError`` before any trial when the stage cannot run with the
    search's or evaluation's ``setup`` (a dict: ``data``, ``proxy_resolution``, ``resolution``, ``space``,
    ``flops``, ``band``). ``fidelity=True`` declares that the stage trains in steps that a multi-fidelity
    search (``--fidelity MIN:MAX``) sets per rung: it gets ``context.fidelity`` and trains through
    ``context.trainer(...)``, leaving its state with ``context.keep(key, trainer)`` so that a promoted trial
    continues it. Without ``run``, the stage runs through :func:`metanet_run_stage`. Returns nothing.
    """


@hookspec
def metanet_register_exporters(register):
    """Register export formats: ``register(name, export, description="")``.

    Called once per plugin at load time. ``export(model, spec, out_dir, **options)`` writes the
    format into ``out_dir`` and returns the path it wrote. Returns nothing.
    """


# -- running a candidate ------------------------------------------------------------------

@hookspec(firstresult=True)
def metanet_run_stage(stage, context):
    """Run evaluation stage ``stage`` (its registered name) on one candidate: an optional override.

    Tried before the stage's registered ``run``; stages registered without ``run`` rely on it.

    ``context`` is a :class:`metanet.evaluate.candidate.StageContext`: the candidate ``model`` (a backbone
    without classifier), its ``spec``, the ``data`` bundle, the stage's merged ``config``, and
    ``state``, what earlier stages left (``state[stage_name]`` holds their weights and metrics).
    Return a dict of metric name -> number (and store weights in ``context.state[stage]``), or
    ``None`` when this implementation does not handle ``stage``. Stops at first non-None result.
    """


# -- observing a search -----------------------------------------------------------------------

@hookspec
def metanet_trial_started(trial):
    """A candidate is about to be evaluated. ``trial`` is a dict with ``id``, ``spec`` (dict),
    ``stages`` and ``budget``. Return value ignored."""


@hookspec
def metanet_trial_finished(trial, metrics):
    """A candidate finished all its stages. ``metrics`` maps ``"stage.metric"`` to numbers and
    holds ``score``, what the search optimises (from validation-split metrics), and ``test_score``,
    the same formula on the test split (reported only). Return value ignored."""


@hookspec
def metanet_trial_failed(trial, error):
    """A candidate failed. ``error`` is a dict with ``stage``, ``plugin`` (the plugin whose code
    raised, when known) and ``message``. The search goes on. Return value ignored."""


@hookspec
def metanet_search_finished(run):
    """A search ended. ``run`` is a dict with ``out_dir``, ``trials`` (count), ``failed`` and ``best``
    (per budget). Return value ignored."""
