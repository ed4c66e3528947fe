"""A plugin package installed only through its entry point is seen by every command, in fresh processes.

No ``-p``, no ``METANET_PLUGINS``: the package lies on the path with a dist-info naming it in the
``metanet`` entry-point group, exactly as ``pip install`` leaves it.
"""
import json
import os
import subprocess
import sys

import pytest

import example_plugin
from conftest import tiny_spec_dict


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    example_plugin.install(root)
    return root


@pytest.fixture(scope="module")
def env(site):
    out = {k: v for k, v in os.environ.items() if k not in ("METANET_PLUGINS", "METANET_DISABLE_PLUGIN_AUTOLOAD")}
    out["PYTHONPATH"] = str(site)
    return out


def metanet(env, cwd, *args):
    proc = subprocess.run([sys.executable, "-m", "metanet", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.slow
def test_listed_with_its_registrations(env, tmp_path):
    data = json.loads(metanet(env, tmp_path, "plugins", "--json"))
    info = {p["name"]: p for p in data["plugins"]}["example"]
    assert info["source"] == "entry point of metanet-example-plugin" and info["version"] == "0.1"
    assert data["registered"]["operators"]["dwconv5"] == "example"
    assert data["registered"]["search_spaces"]["tiny-dw"] == "example"


@pytest.mark.slow
def test_its_space_is_shown_and_sampled(env, tmp_path):
    shown = json.loads(metanet(env, tmp_path, "space", "show", "--space", "tiny-dw", "--json"))
    assert shown["space"] == "tiny-dw" and shown["stages"][3]["op"] == ["dwconv5f", "mbconv"]
    assert 0 < shown["flops_min"] < shown["flops_max"]
    spec = json.loads(metanet(env, tmp_path, "space", "sample", "--space", "tiny-dw", "--flops", "300M",
                              "--seed", "1"))
    assert {spec[f"s{i}_op"] for i in range(6)} <= {"dwconv5f", "mbconv"}


@pytest.mark.slow
@pytest.mark.parametrize("op", ["dwconv5", "dwconv5f"])  # counted block vs the plugin's cost formula
def test_its_operator_is_estimated_and_built(env, tmp_path, op):
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(tiny_spec_dict(s1_op=op, s2_op=op, s2_dsm="block")))
    data = json.loads(metanet(env, tmp_path, "flops", str(path), "--count", "--resolution", "64", "--json"))
    assert data["flops"] == pytest.approx(data["flops_counted"], rel=0.01)
    assert data["params"] == data["params_counted"]
    built = json.loads(metanet(env, tmp_path, "build", str(path), "--resolution", "64", "--json"))
    assert built["finite"] and built["output_shape"] == [1, 1000]


@pytest.mark.slow
def test_searched_exported_and_loaded_by_timm(env, tmp_path):
    run = tmp_path / "run"
    summary = json.loads(metanet(env, tmp_path, "search", "--space", "tiny-dw", "--flops", "300M", "--trials", "1",
                                 "--stages", "zero-cost", "--proxy-resolution", "16", "--out", str(run), "--json"))
    assert summary["trials"] == 1 and summary["failed"] == 0
    rows = json.loads(metanet(env, tmp_path, "results", str(run), "--json"))
    assert {rows[0]["spec"][f"s{i}_op"] for i in range(6)} <= {"dwconv5f", "mbconv"}
    exported = json.loads(metanet(env, tmp_path, "export", str(run), "--out", str(tmp_path / "best"),
                                  "--format", "state-dict", "--json"))
    assert str(tmp_path / "best" / "state_dict.pt") in exported["files"]

    arch = tmp_path / "arch.json"
    arch.write_text(json.dumps(tiny_spec_dict(s2_op="dwconv5", s2_dsm="block")))
    code = ("import metanet, timm, torch\n"
            f"m = timm.create_model('metanet', arch={str(arch)!r}, num_classes=3).eval()\n"
            "print(type(m.stages[2][0]).__name__, tuple(m(torch.randn(1, 3, 32, 32)).shape))\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["DWConv5", "(1,", "3)"]
