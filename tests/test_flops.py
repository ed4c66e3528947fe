"""FLOP accounting: the counter (fvcore + attention) and the analytic estimator."""
import random

import pytest
import timm
import torch
from fvcore.nn import FlopCountAnalysis

from metanet.search_spaces.counter import count_flops, count_params
from metanet.search_spaces.estimate import estimate
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.presets import PRESETS


def test_vit_small_attention_is_counted():
    model = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    counted = count_flops(model, 224).total
    assert counted == pytest.approx(4.61e9, rel=0.01)
    with torch.no_grad():
        plain = FlopCountAnalysis(model, torch.zeros(1, 3, 224, 224))
        plain.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        plain_total = plain.total()
    assert plain_total == pytest.approx(4.25e9, rel=0.01)  # what plain fvcore misses: the attention matmuls
    assert counted - plain_total == pytest.approx(12 * 6 * 197 * 197 * 64 * 2, rel=1e-6)


@pytest.mark.parametrize("name, params, flops", [
    ("metanet_b4", 31.71e6, 3.217e9),
    ("uninet_b1", 11.45e6, 1.118e9),
])
def test_released_presets_reproduce_their_sizes(name, params, flops):
    preset = PRESETS[name]
    model = MetaNet(name, num_classes=1000, img_size=224)
    counted = count_flops(model, 224)
    assert count_params(model) == pytest.approx(params, rel=0.01)
    assert counted.total == pytest.approx(flops, rel=0.01)
    est = estimate(preset.spec, 224)
    assert est.params == pytest.approx(params, rel=0.01)
    assert est.flops == pytest.approx(flops, rel=0.01)


def test_metanet_b4_conv_linear_matmul_convention():
    # MetaNet's table (3.17 G) counts only convolutions, linear layers and matmuls.
    counted = count_flops(MetaNet("metanet_b4"), 224)
    assert counted.matmul_only == pytest.approx(3.17e9, rel=0.005)
    assert counted.by_operator["conv"] == pytest.approx(1.588e9, rel=0.005)
    assert counted.by_operator["linear"] == pytest.approx(1.469e9, rel=0.005)


@pytest.mark.parametrize("name", ["uninet_b0", "uninet_b2"])
def test_uninet_sizes_at_their_own_resolution(name):
    # Figures from the released UniNet code: B0 0.555G at 160, B2 16.211M / 2.159G at 256.
    expected = {"uninet_b0": (11.451e6, 0.555e9), "uninet_b2": (16.211e6, 2.159e9)}[name]
    est = estimate(PRESETS[name].spec, PRESETS[name].input_size)
    assert est.params == pytest.approx(expected[0], rel=0.001)
    assert est.flops == pytest.approx(expected[1], rel=0.001)


@pytest.mark.slow
@pytest.mark.parametrize("chunk", range(3))  # three chunks, so that the suite's workers share the 30
def test_estimator_matches_counter_on_a_random_sample(space, chunk):
    # 30 architectures drawn uniformly from the space at 32 px (benchmarks/flops_estimator.py runs 200+ at 224).
    rng = random.Random(1234 + chunk)
    for _ in range(10):
        spec = space.random_spec(rng)
        model = MetaNet(spec, num_classes=1000, img_size=32)
        counted = count_flops(model, 32)
        est = estimate(spec, 32)
        assert est.flops == pytest.approx(counted.total, rel=0.01), spec.describe()
        assert est.params == pytest.approx(count_params(model), rel=0.01), spec.describe()


def test_flops_follow_the_deployment_resolution():
    spec = PRESETS["uninet_b1"].spec
    small, big = estimate(spec, 160).flops, estimate(spec, 224).flops
    assert small == pytest.approx(0.555e9, rel=0.001)  # UniNet-B0 is B1 at 160 px
    assert big > 2 * small * 0.9


def test_counter_restores_training_mode():
    model = MetaNet("uninet_b0", num_classes=10, img_size=64).train()
    count_flops(model, 64)
    assert model.training
