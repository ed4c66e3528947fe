"""timm's model contract, as timm's own models meet it, for the presets and for any spec of the space."""
import copy
import random

import pytest
import timm
import torch
from timm.data import resolve_data_config

import metanet  # noqa: F401  (registers the models with timm)
from conftest import tiny_spec_dict
from metanet.search_spaces.unified import DEFAULT_SPACE, sample_within_budget

SIZE = 64


def _random_spec():
    return sample_within_budget(DEFAULT_SPACE, 300e6, random.Random(7)).to_dict()


CASES = {  # name -> timm.create_model arguments
    "metanet_b4": ("metanet_b4", {}),
    "uninet_b1": ("uninet_b1", {}),
    "every operator": ("metanet", {"arch": tiny_spec_dict()}),
    "random spec": ("metanet", {"arch": _random_spec()}),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request):
    name, kwargs = CASES[request.param]
    torch.manual_seed(0)
    model = timm.create_model(name, img_size=SIZE, num_classes=10, **kwargs).eval()
    return name, kwargs, model


def test_forward_features_head_and_backward(case):
    _, _, model = case
    x = torch.randn(2, 3, SIZE, SIZE)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_features, SIZE // 32, SIZE // 32)  # unpooled NCHW, as timm's models
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
    logits = model.forward_head(feats)
    torch.testing.assert_close(logits, model(x))
    trained = copy.deepcopy(model).train()  # the module's model keeps its batch-norm statistics
    trained(x).sum().backward()
    assert all(p.grad is not None for p in trained.parameters() if p.requires_grad)


@pytest.mark.slow
def test_torchscript_and_fx_give_the_same_outputs(case):
    _, _, model = case
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        want = model(x)
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(x), want)
        traced = torch.fx.symbolic_trace(model)
        torch.testing.assert_close(traced(x), want)
        # FX at another resolution: the relative-position bias is resized inside the recorded call
        bigger = torch.randn(1, 3, 2 * SIZE, 2 * SIZE)
        torch.testing.assert_close(traced(bigger), model(bigger))


@pytest.mark.slow
@pytest.mark.parametrize("feature_cls", ["hook", "fx", None])
def test_features_only_match_forward_intermediates(case, feature_cls):
    name, kwargs, model = case
    extra = {"feature_cls": feature_cls} if feature_cls else {}
    torch.manual_seed(0)  # the same initial weights as the case's model
    feats = timm.create_model(name, img_size=SIZE, num_classes=10, features_only=True, out_indices=(1, 3, 6), **kwargs,
                              **extra)
    feats.eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        outs = feats(x)
        expected = model.forward_intermediates(x, indices=[1, 3, 6], intermediates_only=True)
    assert feats.feature_info.reduction() == [2, 8, 32]
    assert feats.feature_info.channels() == [o.shape[1] for o in expected]
    for a, b in zip(outs, expected):
        torch.testing.assert_close(a, b)


def test_forward_intermediates_and_pruning(case):
    name, kwargs, model = case
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, indices=2)  # the last two levels
        assert [t.shape[-1] for t in inter] == [SIZE // 16, SIZE // 32]
        torch.testing.assert_close(final, model.forward_features(x))
        early, _ = model.forward_intermediates(x, indices=[2], stop_early=True)
        assert early.shape[-1] == SIZE // 4
    pruned = copy.deepcopy(model)
    kept = pruned.prune_intermediate_layers(indices=[3])
    assert kept == [3] and len(pruned.stages) == 3 and pruned.num_classes == 0
    with torch.no_grad():
        assert pruned(x).shape == (1, pruned.feature_info[-1]["num_chs"], SIZE // 8, SIZE // 8)  # unpooled


@pytest.mark.slow
def test_classifier_groups_checkpointing_and_default_cfg(case):
    name, kwargs, model = case
    assert model.get_classifier().out_features == 10
    fresh = timm.create_model(name, img_size=SIZE, **kwargs)
    fresh.reset_classifier(3)
    assert fresh(torch.randn(1, 3, SIZE, SIZE)).shape == (1, 3)
    fresh.reset_classifier(0)
    assert fresh(torch.randn(1, 3, SIZE, SIZE)).shape == (1, fresh.num_features)

    groups = model.group_matcher()
    assert set(groups) == {"stem", "blocks"}
    from timm.models import group_parameters
    grouped = group_parameters(model, groups)
    assert sum(len(v) for v in grouped.values()) == len(list(model.named_parameters()))

    x = torch.randn(2, 3, SIZE, SIZE)
    model = copy.deepcopy(model).train()
    torch.manual_seed(1)
    plain = model(x).square().mean()
    plain.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    torch.manual_seed(1)
    model(x).square().mean().backward()
    for a, p in zip(grads, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-4, atol=1e-5)

    cfg = model.pretrained_cfg
    assert model.default_cfg is cfg
    assert dict(model.named_modules())[cfg["first_conv"]].in_channels == 3
    assert dict(model.named_modules())[cfg["classifier"]] is model.get_classifier()
    size = cfg["input_size"][-1]
    assert cfg["pool_size"] == (-(-size // 32),) * 2
    data = resolve_data_config(model=model)
    if name == "metanet":  # a searched backbone: metanet's own normalisation
        assert data["mean"] == (0.5, 0.5, 0.5) and data["std"] == (0.5, 0.5, 0.5)
    else:  # the released presets' ImageNet weights
        assert data["mean"] == timm.data.IMAGENET_DEFAULT_MEAN


def test_registration_is_timms_public_api():
    import inspect

    import metanet.search_spaces.metanet as family
    for name in ("metanet", "metanet_b4", "metanet_b15", *(f"uninet_b{i}" for i in range(7))):
        assert timm.is_model(name) and callable(getattr(family, name))
        assert name in family.default_cfgs
        assert timm.models.get_pretrained_cfg(name).input_size[0] == 3
    assert "@register_model\ndef uninet_b1(" in inspect.getsource(family)
    assert timm.models.get_pretrained_cfg("uninet_b0").input_size == (3, 160, 160)


# The next two hold metanet's models to the checks of timm's own tests/test_models.py (huggingface/
# pytorch-image-models: test_model_default_cfgs and test_model_forward_fx_torchscript), written here for these
# models: the installed timm ships no tests, and the file is not copied.
def test_pooling_removed_keeps_the_map_as_timms_models_do(case):
    name, kwargs, model = case
    x = torch.randn(1, 3, SIZE, SIZE)
    grid = (SIZE // 32, SIZE // 32)
    pre = model.forward_head(model.forward_features(x), pre_logits=True)
    headless = copy.deepcopy(model)
    headless.reset_classifier(0)
    assert headless.num_classes == 0 and headless(x).shape == pre.shape == (1, model.head_hidden_size)
    headless.reset_classifier(0, "")  # no classifier, no pooling: the NCHW map
    assert headless(x).shape == (1, model.num_features, *grid)
    built = timm.create_model(name, img_size=SIZE, num_classes=0, global_pool="", **kwargs).eval()
    assert built(x).shape == (1, model.num_features, *grid)
    keys = built.state_dict().keys()
    cfg = model.pretrained_cfg
    assert f"{cfg['first_conv']}.weight" in keys and f"{cfg['classifier']}.weight" in model.state_dict()


@pytest.mark.slow
def test_fx_traced_model_scripts(case):
    from timm.layers import set_scriptable
    from timm.models._features_fx import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names
    name, kwargs, _ = case
    with set_scriptable(True):
        model = timm.create_model(name, img_size=SIZE, num_classes=10, **kwargs).eval()
    tracer = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                  param_shapes_constant=True)
    _, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer)
    fx = create_feature_extractor(model, return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer)
    scripted = torch.jit.script(fx)
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.inference_mode():
        out = torch.cat(tuple(scripted(x).values()))
        torch.testing.assert_close(out, model(x))
    assert out.shape == (1, 10) and not out.isnan().any()
