import json

import pytest
from click.testing import CliRunner

from metanet import __version__
from metanet.cli import cli
from metanet.search_spaces.estimate import estimate
from metanet.search_spaces.spec import ArchSpec


@pytest.fixture
def run():
    runner = CliRunner()

    def _run(*args):
        return runner.invoke(cli, list(args), catch_exceptions=False)
    return _run


def one_line_error(result, code):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    return errors[0]


def test_help_and_version(run):
    result = run("--help")
    assert result.exit_code == 0
    for command in ("space", "flops", "presets"):
        assert command in result.output
    assert run("--version").output.strip() == f"metanet, version {__version__}"


def test_space_show(run):
    text = run("space", "show")
    assert text.exit_code == 0 and "s5 (stride 2)" in text.output and "valid architectures" in text.output
    data = json.loads(run("space", "show", "--json").output)
    assert len(data["stages"]) == 6
    assert data["stages"][0]["op"] == ["mbconv", "fused_mbconv"]
    assert data["size"] > 1e12 and data["flops_min"] < data["flops_max"]


def test_space_sample_is_seeded_and_within_budget(run):
    a = run("space", "sample", "--seed", "3", "--flops", "600M")
    b = run("space", "sample", "--seed", "3", "--flops", "600M")
    assert a.exit_code == 0 and a.output == b.output
    spec = ArchSpec.from_json(a.output)
    assert 540e6 <= estimate(spec, 224).flops <= 600e6
    c = run("space", "sample", "--seed", "3", "--flops", "1G", "--band", "0.5,0.7", "--resolution", "160")
    assert 0.5e9 <= estimate(ArchSpec.from_json(c.output), 160).flops <= 0.7e9
    plain = run("space", "sample", "--seed", "1")
    assert ArchSpec.from_json(plain.output).version == 1


def test_flops_of_a_spec_file_with_count(run, tmp_path):
    path = tmp_path / "arch.json"
    path.write_text(run("space", "sample", "--seed", "5", "--flops", "300M").output)
    data = json.loads(run("flops", str(path), "--count", "--json", "--resolution", "96").output)
    assert isinstance(data["flops"], int) and isinstance(data["params"], int)
    assert data["flops_counted"] == pytest.approx(data["flops"], rel=0.01)
    assert data["flops_matmul_only"] <= data["flops_counted"]
    assert set(data["stages"]) == {"stem", "s0", "s1", "s2", "s3", "s4", "s5", "head"}
    assert sum(p["flops"] for p in data["stages"].values()) == data["flops"]
    text = run("flops", str(path))
    assert "FLOPs:" in text.output and "s3" in text.output


def test_flops_of_a_preset_and_a_timm_model(run):
    data = json.loads(run("flops", "metanet_b4", "--json").output)
    assert data["flops"] == pytest.approx(3.217e9, rel=0.01) and data["params"] == pytest.approx(31.71e6, rel=0.01)
    timm_data = json.loads(run("flops", "timm:resnet18", "--json").output)
    assert timm_data["flops"] == pytest.approx(1.82e9, rel=0.01)  # timm's published resnet18 GMACs
    assert timm_data["flops_counted"] == timm_data["flops"]


def test_presets_command(run):
    rows = json.loads(run("presets", "--json").output)
    names = [r["name"] for r in rows]
    assert {"metanet_b4", "metanet_b15", "uninet_b0", "uninet_b6"} <= set(names) and len(names) == 9
    assert all(r["in_space"] for r in rows)


@pytest.mark.parametrize("args, code, words", [
    (("space", "sample", "--flops", "abc"), 2, "invalid FLOP budget 'abc'"),
    (("space", "sample", "--flops", "-1"), 2, "invalid FLOP budget"),
    (("space", "sample", "--flops", "1.5X"), 2, "invalid FLOP budget"),
    (("space", "sample", "--flops", "10M"), 2, "reaches at 224px: 142.5M to 590.9G"),
    (("space", "sample", "--band", "1,0.5"), 2, "LOW < HIGH"),
    (("space", "show", "--space", "nope"), 2, "unknown search space 'nope'"),
    (("flops", "missing.json"), 1, "missing.json: cannot read spec"),
    (("flops", "timm:not_a_model"), 1, "unknown timm model 'not_a_model'"),
    (("flops", "metanet_b4", "--resolution", "0"), 2, "--resolution"),
])
def test_errors_are_one_line(run, args, code, words):
    assert words in one_line_error(run(*args), code)


def test_invalid_spec_file_names_the_field(run, tmp_path):
    spec = json.loads(run("space", "sample", "--seed", "0").output)
    spec["s2_op"] = "conv9x9"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(spec))
    line = one_line_error(run("flops", str(path)), 1)
    assert "s2_op" in line and "conv9x9" in line


def test_space_show_of_a_budget(run):
    data = json.loads(run("space", "show", "--flops", "600M", "--json").output)
    assert data["space"] == "unified@600M" and data["budget"] == 600_000_000
    assert set(data["choices"]) == {f"s{i}_{f}" for i in range(6) for f in ("op_dsm", "width_mult", "depth_delta",
                                                                            "expand")}
    assert "attention/local" not in data["choices"]["s1_op_dsm"]  # 56x56 tokens cannot fit 600M: not offered
    assert data["in_band"] >= 0.2  # a fifth of uniform proposals land in the band as proposed
    text = run("space", "show", "--flops", "600M").output
    assert "uniform proposals in the band" in text and "not offered" in text
