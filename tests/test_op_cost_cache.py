"""The counted costs of a plugin operator without a formula are kept between commands (METANET_CACHE_DIR), keyed
by the plugin's version; without the variable nothing is written."""
import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import tiny_spec_dict

import example_plugin
import pytest

METANET = str(Path(sys.executable).with_name("metanet"))


def _flops(tmp_path, env_extra):
    env = {k: v for k, v in os.environ.items() if k != "METANET_CACHE_DIR"}
    env.update(PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **env_extra)
    done = subprocess.run([METANET, "-p", "ghostish", "flops", str(tmp_path / "arch.json"), "--json"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["flops"]


@pytest.mark.slow
def test_plugin_operator_costs_are_cached_by_plugin_version(tmp_path):
    plugin = tmp_path / "ghostish.py"
    plugin.write_text(example_plugin.PLUGIN_SOURCE)
    (tmp_path / "arch.json").write_text(json.dumps(tiny_spec_dict(s2_op="dwconv5", s2_dsm="block")))
    cache = tmp_path / "cache"

    before = sorted(p.name for p in tmp_path.rglob("*"))
    counted = _flops(tmp_path, {})
    assert sorted(p.name for p in tmp_path.rglob("*") if "__pycache__" not in str(p)) == \
        sorted(n for n in before if n != "__pycache__")  # no variable: nothing written

    assert _flops(tmp_path, {"METANET_CACHE_DIR": str(cache)}) == counted
    file = cache / "op-costs" / "ghostish.json"
    data = json.loads(file.read_text())
    assert data["version"].startswith("sha256:") and data["costs"]
    assert all(key.startswith("dwconv5|") for key in data["costs"])

    # the next command reads the file: numbers put there show in its answer
    data["costs"] = {key: [flops + 1000, params] for key, (flops, params) in data["costs"].items()}
    file.write_text(json.dumps(data))
    blocks = len(data["costs"])
    assert _flops(tmp_path, {"METANET_CACHE_DIR": str(cache)}) == counted + 1000 * blocks

    # a changed plugin is another version: its blocks are counted again and the file rewritten
    plugin.write_text(example_plugin.PLUGIN_SOURCE + "\n# a new release\n")
    assert _flops(tmp_path, {"METANET_CACHE_DIR": str(cache)}) == counted
    assert json.loads(file.read_text())["version"] != data["version"]
