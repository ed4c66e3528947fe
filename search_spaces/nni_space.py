"""The unified space as an NNI 3.0 ``ModelSpace``: the one place metanet touches NNI's space API.

Every choice is an ``nni.choice`` whose label is the spec key (``stem_width``, ``s3_op`` ...), and
one ``Constraint`` carries the validity rules of :mod:`metanet.search_spaces.spec` (LG-DSM only on
attention stages, attention widths divisible by the head dim), so any NNI strategy explores
exactly the valid architectures. Freezing a sample gives the plain :class:`MetaNet`.
"""
from __future__ import annotations

import warnings
from typing import Any, Iterable

with warnings.catch_warnings():
    # NNI 3.0 touches torch.nn.parameter.Buffer-era APIs that newer torch deprecates.
    warnings.simplefilter("ignore")
    import nni
    from nni.mutable import Constraint, LabeledMutable, Mutable
    from nni.mutable.exception import ConstraintViolation, SampleValidationError
    from nni.nas.nn.pytorch import ModelSpace

from .metanet import MetaNet
from .spec import ArchSpec, SpecError, spec_keys
from .unified import DEFAULT_SPACE, SpaceConfig

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
    """NNI model space over INTERN's unified conv + transformer skeleton."""

    def __init__(self, config: SpaceConfig = DEFAULT_SPACE, num_classes: int = 1000, img_size: int = 224):
        super().__init__()
        self.config = config
        self.num_classes = num_classes
        self.img_size = img_size
        choices = [self.add_mutable(nni.choice(label, values)) for label, values in config.choices().items()]
        self.add_mutable(ArchConstraint(choices))

    @classmethod
    def create_fixed_module(cls, sample: dict[str, Any], config: SpaceConfig = DEFAULT_SPACE,
                            num_classes: int = 1000, img_size: int = 224) -> MetaNet:
        # Inside NNI's frozen model context the space is never built: the plain model is.
        return MetaNet(ArchSpec.from_sample(sample), num_classes=num_classes, img_size=img_size)

    def freeze(self, sample: dict[str, Any]) -> MetaNet:
        self.validate(sample)
        return MetaNet(ArchSpec.from_sample(sample), num_classes=self.num_classes, img_size=self.img_size)

    def forward(self, x):  # pragma: no cover - a space is not a model
        raise RuntimeError("UnifiedSpace is a search space; freeze a sample to get a model")


def sample_to_spec(sample: dict[str, Any]) -> ArchSpec:
    """The spec of an NNI sample (extra labels such as the constraint's are dropped)."""
    return ArchSpec.from_sample(sample)


def labels() -> tuple[str, ...]:
    return spec_keys()


__all__ = ["UnifiedSpace", "ArchConstraint", "sample_to_spec", "Mutable"]
