"""The unified space as an NNI 3.0 ``ModelSpace``: the one place metanet touches NNI's space API.

Every choice is an ``nni.choice`` whose label is the spec key (``stem_width``, ``s3_op`` ...), and
one ``Constraint`` carries the validity rules of :mod:`metanet.search_spaces.spec` (LG-DSM only on
attention stages, attention widths divisible by the head dim), so any NNI strategy explores
exactly the valid architectures. Freezing a sample gives the plain :class:`MetaNet`.
"""
from __future__ import annotations

from typing import Any, Iterable

from metanet.quiet import quiet

with quiet():
    import nni
    from nni.mutable import Constraint, LabeledMutable
    from nni.mutable.exception import ConstraintViolation, SampleValidationError
    from nni.nas.nn.pytorch import ModelSpace

from metanet.search_spaces.budget_space import BudgetSpace
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.spec import ArchSpec, SpecError
from metanet.search_spaces.unified import DEFAULT_SPACE, SpaceConfig, project_to_budget, repair_sample

CONSTRAINT_LABEL = "valid_arch"


class ArchConstraint(Constraint):
    """Rejects samples that are not buildable architectures, with the spec's own message."""

    def __init__(self, choices: list[LabeledMutable], label: str = CONSTRAINT_LABEL):
        self.label = label
        self.choices = choices

    def leaf_mutables(self, is_leaf) -> Iterable[LabeledMutable]:
        for c in self.choices:
            yield from c.leaf_mutables(is_leaf)
        yield self

    def check_contains(self, sample: dict[str, Any]) -> SampleValidationError | None:
        for c in self.choices:
            exc = c.check_contains(sample)
            if exc is not None:
                return exc
        try:
            ArchSpec.from_sample(sample)
        except SpecError as exc:
            return ConstraintViolation(str(exc))
        return None

    def extra_repr(self) -> str:
        return f"label={self.label!r}"


class UnifiedSpace(ModelSpace):
    """NNI model space over INTERN's unified conv + transformer skeleton.

    With a ``budget`` in the opt-in ``"project"`` mode, a sample is REWRITTEN into the architecture a
    seeded walk reaches inside the FLOP band (:func:`project_to_budget`): the strategy no longer
    controls what is evaluated, and every trial records how many choices the walk changed. The
    default search uses :class:`BudgetModelSpace` instead, where nothing is rewritten.
    """

    def __init__(self, config: SpaceConfig = DEFAULT_SPACE, num_classes: int = 1000, img_size: int = 224,
                 budget: int | None = None, band: tuple[float, float] = (0.9, 1.0), resolution: int = 224,
                 budget_mode: str = "project", seed: int = 0, constrained: bool = True):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.img_size = img_size
        self.budget_args = (budget, tuple(band), resolution, budget_mode, seed)
        choices = [self.add_mutable(nni.choice(label, values)) for label, values in config.choices().items()]
        if constrained:  # HPO-based strategies (TPE) cannot read constraints: invalid samples are screened instead
            self.add_mutable(ArchConstraint(choices))

    @classmethod
    def create_fixed_module(cls, sample: dict[str, Any], config: SpaceConfig = DEFAULT_SPACE,
                            num_classes: int = 1000, img_size: int = 224, budget: int | None = None,
                            band=(0.9, 1.0), resolution: int = 224, budget_mode: str = "project",
                            seed: int = 0, constrained: bool = True) -> MetaNet:
        # Inside NNI's frozen model context the space is never built: the plain model is.
        spec = resolve_spec(sample, config, budget, band, resolution, budget_mode, seed)
        proposed = {k: sample[k] for k in spec.to_sample() if k in sample}
        return _with_proposal(MetaNet(spec, num_classes=num_classes, img_size=img_size), sample, proposed)

    def freeze(self, sample: dict[str, Any]) -> MetaNet:
        self.validate(sample)
        spec = resolve_spec(sample, self.config, *self.budget_args)
        proposed = {k: sample[k] for k in spec.to_sample() if k in sample}
        return _with_proposal(MetaNet(spec, num_classes=self.num_classes, img_size=self.img_size), sample, proposed)

    def forward(self, x):  # pragma: no cover - a space is not a model
        raise RuntimeError("UnifiedSpace is a search space; freeze a sample to get a model")


def _with_proposal(model: MetaNet, sample: dict[str, Any], proposed: dict[str, Any]) -> MetaNet:
    """Attach what the strategy proposed, and the architecture that proposal stands for, to the built model."""
    model.proposal = {k: v for k, v in sample.items() if k != CONSTRAINT_LABEL}
    model.proposed_spec = proposed
    return model


class BudgetModelSpace(ModelSpace):
    """NNI model space over the relative choices of one budget (:mod:`metanet.search_spaces.budget_space`).

    Every sample decodes into exactly one buildable architecture; nothing rewrites it. Whether it
    lies in the FLOP band is the search's business (screened proposals are never built).
    """

    def __init__(self, space: BudgetSpace, num_classes: int = 1000, img_size: int = 224, seed: int | None = None):
        super().__init__()
        self.space = space
        self.num_classes = num_classes
        self.img_size = img_size
        self.seed = seed
        for label, values in space.choices().items():
            self.add_mutable(nni.choice(label, values))

    @classmethod
    def create_fixed_module(cls, sample: dict[str, Any], space: BudgetSpace, num_classes: int = 1000,
                            img_size: int = 224, seed: int | None = None) -> MetaNet:
        import contextlib

        from metanet.seeds import seeded
        spec = space.decode(sample)
        # initialised exactly as the stages would build it, so a trial can use it as is; in a block, so that the
        # strategy's own draws from the global generators (PPO's policy) are not reset by every model built
        with seeded(seed) if seed is not None else contextlib.nullcontext():
            model = _with_proposal(MetaNet(spec, num_classes=num_classes, img_size=img_size), sample,
                                   spec.to_sample())
        model.built_seed = seed
        return model

    def freeze(self, sample: dict[str, Any]) -> MetaNet:
        self.validate(sample)
        return self.create_fixed_module(sample, self.space, self.num_classes, self.img_size, self.seed)

    def forward(self, x):  # pragma: no cover - a space is not a model
        raise RuntimeError("BudgetModelSpace is a search space; freeze a sample to get a model")


_projected: dict[tuple, ArchSpec | None] = {}


def resolve_spec(sample, config, budget=None, band=(0.9, 1.0), resolution=224, budget_mode="project",
                 seed=0) -> ArchSpec:
    """The architecture a sample stands for: itself, or its projection into the FLOP band."""
    if budget is None or budget_mode != "project":
        return ArchSpec.from_sample(sample)
    spec = ArchSpec.from_sample(repair_sample(sample))
    projected = project(spec, config, budget, band, resolution, seed)
    return projected if projected is not None else spec


def project(spec: ArchSpec, config: SpaceConfig, budget, band, resolution, seed) -> ArchSpec | None:
    key = (spec.to_json(indent=None), config.name, budget, tuple(band), resolution, seed)
    if key not in _projected:
        _projected[key] = project_to_budget(config, spec, budget, band, resolution, seed=seed)
    return _projected[key]


__all__ = ["UnifiedSpace", "BudgetModelSpace", "ArchConstraint", "resolve_spec", "project"]
