"""Weights of the released MetaNet (gv-benchmark) and UniNet code load into metanet's models.

The fixtures under tests/data/official/ were made once from the official code (commits in their JSON;
see the README): a reduced-width model of each family with random weights (batch-norm statistics and
LayerScale included), its state dict, an input and its eval-mode output. full_size_keys.json holds the
keys and shapes of the full-size official MN-B4 (with its mmcls head) and UniNet-B1 state dicts.
"""
import json
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from metanet.cli import cli
from metanet.export.convert import convert_state_dict
from metanet.search_spaces.metanet import MetaNet
from metanet.search_spaces.spec import ArchSpec

DATA = Path(__file__).parent / "data" / "official"
FIXTURES = ["metanet_tiny", "metanet15_tiny", "uninet_tiny"]


def _fixture(name):
    meta = json.loads((DATA / f"{name}.json").read_text())
    tensors = load_file(str(DATA / f"{name}.safetensors"))
    official = {k[len("official."):]: v for k, v in tensors.items() if k.startswith("official.")}
    return meta, official, tensors["input"], tensors["output"]


@pytest.mark.parametrize("name", FIXTURES)
def test_converted_weights_reproduce_the_official_outputs(name):
    meta, official, x, want = _fixture(name)
    spec = ArchSpec.from_dict(meta["spec"])
    model = MetaNet(spec, num_classes=meta["num_classes"], img_size=meta["img_size"]).eval()
    model.load_state_dict(convert_state_dict(official, spec), strict=True)
    with torch.no_grad():
        got = model(x)
    assert (got - want).abs().max().item() < 1e-4
    assert want.abs().max().item() > 1  # outputs far from trivial: a wrong mapping would show


def test_a_wrong_mapping_would_be_caught():
    meta, official, x, want = _fixture("uninet_tiny")
    spec = ArchSpec.from_dict(meta["spec"])
    converted = convert_state_dict(official, spec)
    key = next(k for k in converted if k.endswith("attn.qkv.weight"))
    q_rows = converted[key].shape[0] // 3
    converted[key] = torch.cat([converted[key][:q_rows].flip(0), converted[key][q_rows:]])  # queries reordered
    model = MetaNet(spec, num_classes=meta["num_classes"], img_size=meta["img_size"]).eval()
    model.load_state_dict(converted, strict=True)
    with torch.no_grad():
        assert (model(x) - want).abs().max().item() > 1e-2


@pytest.mark.parametrize("preset", ["metanet_b4", "uninet_b1"])
def test_full_size_official_state_dicts_load_strictly_into_the_presets(preset, tmp_path):
    shapes = json.loads((DATA / "full_size_keys.json").read_text())["state_dicts"][preset]
    gen = torch.Generator().manual_seed(0)
    official = {k: (torch.zeros(s, dtype=torch.int64) if k.endswith("num_batches_tracked")
                    else torch.randn(s, generator=gen) * 0.02) for k, s in shapes.items()}
    if preset == "metanet_b4":  # as mmcls saves it (backbone.*, head.fc.*), inside a checkpoint dict
        checkpoint = {"state_dict": official, "meta": {"epoch": 300}}
        path = tmp_path / "c-mnb4.pth"
        torch.save(checkpoint, path)
    else:
        path = tmp_path / "official-uninet-b1.safetensors"
        save_file(official, str(path))
    out = tmp_path / f"{preset}.safetensors"
    result = CliRunner().invoke(cli, ["convert", str(path), "--preset", preset, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["num_classes"] == 1000 and report["tensors"] == len(shapes)
    model = timm.create_model(preset, pretrained=True, pretrained_cfg_overlay=dict(file=str(out)))  # strict
    head = "classifier.weight"
    key = "head.fc.weight" if preset == "metanet_b4" else "classifier.weight"
    torch.testing.assert_close(model.state_dict()[head], official[key])
    assert report["params"] == sum(p.numel() for p in model.parameters())


def test_convert_errors_are_one_line(tmp_path):
    meta, official, _, _ = _fixture("metanet_tiny")
    path = tmp_path / "tiny.safetensors"
    save_file(official, str(path))
    run = CliRunner().invoke
    wrong = run(cli, ["convert", str(path), "--preset", "uninet_b1", "--out", str(tmp_path / "o.safetensors")])
    assert wrong.exit_code == 1 and "blocks: the checkpoint has" in wrong.output and "Traceback" not in wrong.output
    missing = run(cli, ["convert", str(tmp_path / "nope.pth"), "--preset", "uninet_b1", "--out",
                        str(tmp_path / "o.safetensors")])
    assert missing.exit_code == 1 and "no such checkpoint file" in missing.output
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    bad = run(cli, ["convert", str(garbage), "--preset", "uninet_b1", "--out", str(tmp_path / "o.safetensors")])
    assert bad.exit_code == 1 and "cannot read the checkpoint" in bad.output
    both = run(cli, ["convert", str(path), "--out", str(tmp_path / "o.safetensors")])
    assert both.exit_code == 2 and "exactly one of --preset and --arch" in both.output
    spec_file = tmp_path / "arch.json"
    ArchSpec.from_dict(meta["spec"]).save(spec_file)
    out = tmp_path / "o.safetensors"
    ok = run(cli, ["convert", str(path), "--arch", str(spec_file), "--out", str(out)])
    assert ok.exit_code == 0, ok.output
    again = run(cli, ["convert", str(path), "--arch", str(spec_file), "--out", str(out)])
    assert again.exit_code == 1 and "exists; use --force" in again.output
    assert run(cli, ["convert", str(path), "--arch", str(spec_file), "--out", str(out), "--force"]).exit_code == 0
