import json

import pytest
import torch

from conftest import tiny_spec_dict
from metanet.search_spaces.metanet import MetaNet, build_model
from metanet.search_spaces.spec import ArchSpec, SpecError, spec_keys


def test_space_sample_json_model_round_trip(space, rng):
    spec = space.random_spec(rng)
    text = spec.to_json()
    again = ArchSpec.from_json(text)
    assert again == spec
    assert json.loads(text)["version"] == 1
    assert set(json.loads(text)) == set(spec_keys()) | {"version"}

    a = MetaNet(spec, num_classes=7, img_size=64).eval()
    b = MetaNet(again, num_classes=7, img_size=64).eval()
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in b.parameters())
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_spec_file_round_trip(tmp_path):
    spec = ArchSpec.from_dict(tiny_spec_dict())
    path = tmp_path / "arch.json"
    spec.save(path)
    assert ArchSpec.load(path) == spec
    model = build_model(str(path), num_classes=3, img_size=32).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.slow
def test_model_needs_no_nni():
    # The exported path must not import NNI: build in a fresh interpreter and check sys.modules.
    import subprocess
    import sys
    code = ("import sys, torch\n"
            "from metanet.search_spaces.metanet import build_model\n"
            "m = build_model('uninet_b0', num_classes=10, img_size=64)\n"
            "m(torch.randn(1, 3, 64, 64))\n"
            "assert not any(k == 'nni' or k.startswith('nni.') for k in sys.modules), 'nni imported'\n")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("overrides, field, words", [
    ({"s2_op": "conv7x7"}, "s2_op", "unknown operator"),
    ({"s1_dsm": "strided"}, "s1_dsm", "unknown downsampling module"),
    ({"s4_width": 50}, "s4_width", "not divisible by head_dim"),
    ({"s2_op": "mbconv", "s2_dsm": "local_global"}, "s2_dsm", "needs an attention stage"),
    ({"s3_depth": "3"}, "s3_depth", "expected a positive integer"),
    ({"s3_depth": 2.5}, "s3_depth", "expected a positive integer"),
    ({"s3_depth": True}, "s3_depth", "expected a positive integer"),
    ({"stem_width": -8}, "stem_width", "must be positive"),
    ({"s0_expand": 0}, "s0_expand", "must be positive"),
    ({"head_dim": 0}, "head_dim", "must be positive"),
    ({"s5_width": None}, "s5_width", "expected a positive integer"),
    ({"version": 2}, "version", "unsupported spec version"),
    ({"colour": "red"}, "colour", "unknown key"),
])
def test_invalid_specs_name_the_field(overrides, field, words):
    with pytest.raises(SpecError) as info:
        ArchSpec.from_dict(tiny_spec_dict(**overrides))
    message = str(info.value)
    assert field in message and words in message
    assert "\n" not in message


def test_missing_key_is_named():
    d = tiny_spec_dict()
    del d["s3_width"]
    with pytest.raises(SpecError, match="missing key 's3_width'"):
        ArchSpec.from_dict(d)


def test_block_attention_needs_divisible_input_width():
    # MetaNet's strided attention block attends over its *input* channels.
    with pytest.raises(SpecError, match="s4_dsm: 'block' downsampling attends over the 48 input channels"):
        ArchSpec.from_dict(tiny_spec_dict(head_dim=32, s3_op="mbconv", s3_dsm="local", s3_width=48,
                                          s4_op="attention", s4_dsm="block", s4_width=64))
    # the same stage with UniNet's downsampling modules is fine
    ArchSpec.from_dict(tiny_spec_dict(head_dim=32, s3_op="mbconv", s3_dsm="local", s3_width=48,
                                      s4_op="attention", s4_dsm="local_global", s4_width=64))


def test_bad_json_and_unreadable_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SpecError, match="bad.json: not valid JSON"):
        ArchSpec.load(bad)
    with pytest.raises(SpecError, match="missing.json: cannot read spec"):
        ArchSpec.load(tmp_path / "missing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(SpecError, match="expected a JSON object"):
        ArchSpec.load(bad)
