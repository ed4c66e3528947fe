"""Sizes that cannot fit are refused from the spec before anything is allocated; the bound is a true lower bound."""
import random

import pytest
import torch

from metanet.errors import ConfigError
from metanet.search_spaces.memory import activation_elements, machine_memory
from metanet.search_spaces.size_report import check_fits, memory_need
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.presets import PRESETS
from metanet.search_spaces.unified import get_space


def _measured(spec, resolution):
    """Elements a forward pass really holds: the largest (input + output) of any leaf module, and the sum of
    every leaf module's output (what a training step keeps for its backward pass, at least)."""
    model = MetaNet(spec, num_classes=0, img_size=resolution).eval()
    widest, kept = [0], [0]

    def hook(module, inputs, output):
        size_in = sum(t.numel() for t in inputs if isinstance(t, torch.Tensor))
        widest[0] = max(widest[0], size_in + output.numel())
        kept[0] += output.numel()
    for m in model.modules():
        if not list(m.children()):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 3, resolution, resolution))
    return widest[0], kept[0]


@pytest.mark.parametrize("seed", range(4))
def test_the_activation_bound_never_exceeds_what_a_forward_pass_holds(seed):
    space = get_space("unified")
    spec = space.random_spec(random.Random(seed)) if seed else PRESETS["metanet_b4"].spec
    resolution = 64
    widest, kept = _measured(spec, resolution)
    image = 3 * resolution * resolution
    assert activation_elements(spec, resolution) <= image + widest
    assert activation_elements(spec, resolution, training=True) <= image + kept
    # and it scales: batch and area
    assert activation_elements(spec, 128, batch=4) >= 4 * 3 * activation_elements(spec, 64)


def test_weights_are_the_estimators_parameters():
    spec = PRESETS["uninet_b1"].spec
    model = MetaNet(spec, num_classes=10, img_size=224)
    need = memory_need(spec, 224, num_classes=10)
    assert need.weights == 4 * sum(p.numel() for p in model.parameters())
    assert memory_need(spec, 224, num_classes=10, training=True).weights == 4 * need.weights
    assert need.classifier == 4 * (1280 * 10 + 10)


def test_what_cannot_fit_is_refused_naming_the_option():
    spec = PRESETS["metanet_b4"].spec
    assert check_fits(spec, 224, 1000).total < machine_memory()
    with pytest.raises(ConfigError, match=r"^resolution: the model at 100,000 px needs at least .* of activations"):
        check_fits(spec, 100_000)
    with pytest.raises(ConfigError, match=r"^num_classes: a classifier of 100,000,000,000 classes"):
        check_fits(spec, 224, 10 ** 11)
    with pytest.raises(ConfigError, match=r"^proxy_resolution: .* for a training step of batch 32"):
        check_fits(spec, 20_000, batch=32, training=True, resolution_option="proxy_resolution")


def test_an_operator_counted_by_running_it_is_refused_at_a_size_it_cannot_run(tmp_path, monkeypatch):
    import example_plugin
    from click.testing import CliRunner

    from conftest import tiny_spec_dict
    from metanet.cli import cli
    example_plugin.install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import json
    (tmp_path / "arch.json").write_text(json.dumps(tiny_spec_dict(s2_op="dwconv5", s2_dsm="block")))
    result = CliRunner().invoke(cli, ["flops", str(tmp_path / "arch.json"), "--resolution", "1000000"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == [next(e for e in errors if e.startswith("Error: resolution: operator 'dwconv5' has no cost "
                                                              "formula"))], result.output
