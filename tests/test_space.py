"""The unified space: sampling, budgets, its FLOP range and the NNI model space."""
import random

import pytest

from metanet.search_spaces.estimate import estimate
from metanet.search_spaces.presets import PRESETS
from metanet.search_spaces.spec import ArchSpec, spec_keys
from metanet.search_spaces.unified import sample_within_budget


def test_presets_are_points_of_the_space(space):
    for name, preset in PRESETS.items():  # MN-B15's stem 96 and 1536 channels, UniNet-B3's width 56, B5's depth 5
        assert space.contains(preset.spec) is None, name
    narrow = type(space)(stem_width=(16, 32))
    assert narrow.contains(PRESETS["metanet_b15"].spec).startswith("stem_width: 96 is not a choice")


def test_random_specs_are_valid_and_diverse(space, rng):
    specs = [space.random_spec(rng) for _ in range(50)]
    assert all(space.contains(s) is None for s in specs)
    assert len({s.to_json() for s in specs}) == 50
    assert {op for s in specs for op in s.ops} == {"mbconv", "fused_mbconv", "attention", "attention_rpb", "xca"}


@pytest.mark.parametrize("budget", [200e6, 600e6, 1.5e9, 10e9])
def test_budget_samples_land_in_the_band(space, budget):
    for seed in range(3):
        spec = sample_within_budget(space, budget, random.Random(seed))
        assert 0.9 * budget <= estimate(spec, 224).flops <= budget


def test_budget_band_and_resolution_are_honoured(space):
    spec = sample_within_budget(space, 1e9, random.Random(0), band=(0.5, 0.6), resolution=160)
    assert 0.5e9 <= estimate(spec, 160).flops <= 0.6e9


def test_flops_range_is_exact_bounds(space, rng):
    lo, hi = space.flops_range(224)
    flops = [estimate(space.random_spec(rng), 224).flops for _ in range(300)]
    assert lo <= min(flops) and max(flops) <= hi
    assert lo < 0.2e9 and hi > 100e9
    # the minimum is reachable: a budget just above it still samples
    spec = sample_within_budget(space, lo * 1.02, random.Random(0), band=(0.0001, 1.0))
    assert estimate(spec, 224).flops <= lo * 1.02


def test_budget_outside_the_space_states_the_range(space):
    with pytest.raises(ValueError, match=r"outside what space 'unified' reaches at 224px: 142.5M to 590.9G"):
        sample_within_budget(space, 50e6, random.Random(0))
    with pytest.raises(ValueError, match="outside what space"):
        sample_within_budget(space, 1e15, random.Random(0))


def test_space_size_counts_valid_architectures(space):
    assert 0 < space.valid_size() < space.raw_size()


# -- NNI 3.0 ----------------------------------------------------------------------------

def test_nni_model_space_labels_are_the_spec_keys():
    from metanet.search_spaces.nni_space import CONSTRAINT_LABEL, UnifiedSpace
    space = UnifiedSpace(num_classes=10, img_size=32)
    labels = list(space.simplify())
    assert labels[:-1] == list(spec_keys())
    assert labels[-1] == CONSTRAINT_LABEL


def test_nni_samples_freeze_into_plain_models():
    import torch
    from nni.mutable import ConstraintViolation

    from metanet.search_spaces.metanet import MetaNet
    from metanet.search_spaces.nni_space import UnifiedSpace
    space = UnifiedSpace(num_classes=10, img_size=32)
    for sample in (PRESETS["uninet_b1"].spec.to_sample(), space.config.random_spec(random.Random(0)).to_sample()):
        model = space.freeze(sample).eval()
        assert type(model) is MetaNet and model.spec.to_sample() == sample
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    bad = {**PRESETS["uninet_b1"].spec.to_sample(), "s2_dsm": "local_global"}
    with pytest.raises(ConstraintViolation, match="s2_dsm"):
        space.freeze(bad)


@pytest.mark.slow
def test_an_nni_strategy_explores_the_space():
    import nni
    import nni.nas.strategy as strategy
    import torch
    from nni.nas.evaluator import FunctionalEvaluator
    from nni.nas.experiment import NasExperiment, NasExperimentConfig

    from metanet.search_spaces.metanet import MetaNet
    from metanet.search_spaces.nni_space import UnifiedSpace

    seen = []

    def evaluate(model):
        assert isinstance(model, MetaNet)
        seen.append(model.spec)
        with torch.no_grad():
            nni.report_final_result(float(model.eval()(torch.randn(1, 3, 32, 32)).std()))

    config = NasExperimentConfig("sequential", "simplified", "local")
    config.max_trial_number = 3
    exp = NasExperiment(UnifiedSpace(num_classes=10, img_size=32), FunctionalEvaluator(evaluate),
                        strategy.Random(), config=config)
    exp.run()
    assert len(seen) == 3
    top = exp.export_top_models(top_k=1, formatter="dict")[0]
    assert ArchSpec.from_sample(top) in seen
