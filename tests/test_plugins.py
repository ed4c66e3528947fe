"""The plugin system: discovery, listing, attribution of failures, and an external plugin end to end."""
import json
import random
import textwrap

import pytest
from click.testing import CliRunner

import example_plugin
from conftest import tiny_spec_dict
from metanet import hookspecs
from metanet.cli import cli
from metanet.data import load_digits_bundle
from metanet.errors import PluginError, UnknownName
from metanet.plugin.manager import DEFAULT_PLUGINS, PluginManager
from metanet.search_spaces import unified
from metanet.search_spaces.spec import ArchSpec
from metanet.evaluate.candidate import evaluate_candidate


@pytest.fixture
def installed(tmp_path, monkeypatch):
    name = example_plugin.install(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture(scope="module")
def digits():
    return load_digits_bundle(16)


def test_builtins_register_like_external_plugins():
    pm = PluginManager()
    names = [p.name for p in pm.plugins()]
    assert names[: len(DEFAULT_PLUGINS)] == list(DEFAULT_PLUGINS)
    assert set(pm.registry["stages"]) >= {"zero-cost", "amateur", "expert", "generalist", "downstream"}
    assert pm.get("stages", "amateur").plugin == "metanet.plugins.stages"
    assert pm.get("operators", "xca").plugin == "metanet.plugins.operators" and pm.operator("xca").attention
    with pytest.raises(UnknownName, match="unknown stage 'nope'"):
        pm.get("stages", "nope")


def test_external_plugin_found_through_its_entry_point(installed, digits):
    pm = PluginManager()
    info = {p.name: p for p in pm.plugins()}["example"]
    assert info.source == "entry point of metanet-example-plugin" and info.version == "0.1"
    assert "metanet_run_stage" in info.hooks and "metanet_register_operators" in info.hooks
    for kind, name in [("operators", "dwconv5"), ("stages", "param-count"), ("strategies", "example-random"),
                       ("datasets", "digits-16"), ("exporters", "state-dict"), ("search_spaces", "tiny-dw")]:
        assert pm.get(kind, name).plugin == "example"

    # its operator is part of the space: validated, built, estimated
    spec = ArchSpec.from_dict(tiny_spec_dict(s2_op="dwconv5", s2_dsm="block"))
    from metanet.search_spaces.counter import count_flops
    from metanet.search_spaces.estimate import estimate
    from metanet.search_spaces.metanet import MetaNet
    model = MetaNet(spec, num_classes=10, img_size=32)
    assert type(model.stages[2][0]).__name__ == "DWConv5"
    assert estimate(spec, 32, num_classes=10).flops == count_flops(model, 32).total
    sampled = unified.get_space("tiny-dw").random_spec(random.Random(0))
    assert set(sampled.ops) <= {"dwconv5f", "mbconv"}

    # its stage runs on a candidate, next to a built-in one
    result = evaluate_candidate(spec, ["zero-cost", "param-count"], digits, pm=pm,
                                score_weights={"param-count.millions": 1.0})
    assert result.status == "ok"
    built = MetaNet(spec, num_classes=0, img_size=digits.resolution)
    assert result.score == pytest.approx(sum(p.numel() for p in built.parameters()) / 1e6)


def test_a_plugin_exporter_writes_its_format(installed, tmp_path):
    from metanet.export.run_export import export_run
    from metanet.search.driver import run_search
    from metanet.runs.config import SearchConfig
    out = tmp_path / "run"
    run_search(SearchConfig.from_dict({"out": str(out), "trials": 1, "flops": [300_000_000], "proxy_resolution": 16,
                                       "stages": ["zero-cost"]}), progress=False, echo=lambda m: None)
    result = export_run(out, tmp_path / "exp", formats=("state-dict",))
    assert (tmp_path / "exp" / "state_dict.pt") in result.files
    import torch
    state = torch.load(tmp_path / "exp" / "state_dict.pt", weights_only=True)
    assert "stem.conv.weight" in state


def test_plugins_command_lists_builtin_and_external(installed):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["metanet.plugins.stages"]["source"] == "built-in"
    assert data["registered"]["operators"]["mbconv"] == "metanet.plugins.operators"
    assert by_name["example"]["version"] == "0.1"
    assert data["registered"]["stages"]["param-count"] == "example"
    text = CliRunner().invoke(cli, ["plugins"]).output
    assert "example (entry point of metanet-example-plugin, 0.1)" in text


def test_autoload_can_be_disabled_and_plugins_named_by_module(installed, monkeypatch):
    monkeypatch.setenv("METANET_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "example" not in [p.name for p in PluginManager().plugins()]
    monkeypatch.setenv("METANET_PLUGINS", installed)
    assert installed in [p.name for p in PluginManager().plugins()]
    monkeypatch.delenv("METANET_PLUGINS")
    result = CliRunner().invoke(cli, ["-p", installed, "plugins", "--json"])
    assert installed in {p["name"] for p in json.loads(result.output)["plugins"]}


def test_a_plugin_that_fails_to_import_is_named(tmp_path, monkeypatch):
    example_plugin.install(tmp_path, name="broken_plugin", source="import does_not_exist\n", entry="broken")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"plugin 'broken' \(entry point of broken-plugin\) failed to import: "
                                          r"ModuleNotFoundError"):
        PluginManager()
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: plugin 'broken'")


def test_a_misspelt_hook_fails_loudly(tmp_path, monkeypatch):
    (tmp_path / "typo_plugin.py").write_text("def metanet_register_stage(register):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="typo_plugin.*metanet_register_stage"):
        PluginManager(plugins=["typo_plugin"])


def test_a_raising_stage_fails_the_trial_not_the_caller(tmp_path, monkeypatch, digits):
    (tmp_path / "raising_plugin.py").write_text(textwrap.dedent('''
        from metanet import hookimpl

        @hookimpl
        def metanet_register_stages(register):
            register("explode", defaults={})

        @hookimpl
        def metanet_run_stage(stage, context):
            if stage == "explode":
                raise RuntimeError("boom in the stage")
    '''))
    (tmp_path / "recorder_plugin.py").write_text(textwrap.dedent('''
        from metanet import hookimpl
        EVENTS = []

        @hookimpl
        def metanet_trial_started(trial):
            EVENTS.append(("started", trial["id"]))

        @hookimpl
        def metanet_trial_finished(trial, metrics):
            EVENTS.append(("finished", metrics["score"]))

        @hookimpl
        def metanet_trial_failed(trial, error):
            EVENTS.append(("failed", error["plugin"], error["stage"]))

        @hookimpl
        def metanet_search_finished(run):
            EVENTS.append(("search", run["trials"]))
            raise ValueError("an observer that raises is reported, never fatal")
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    pm = PluginManager(plugins=["raising_plugin", "recorder_plugin"])
    import recorder_plugin
    spec = ArchSpec.from_dict(tiny_spec_dict())
    failed = evaluate_candidate(spec, ["zero-cost", "explode"], digits, pm=pm, trial={"id": 7})
    assert failed.status == "failed"
    assert failed.error["stage"] == "explode" and failed.error["plugin"] == "raising_plugin"
    assert "RuntimeError: boom in the stage" in failed.error["message"]
    assert "zero-cost.score" in failed.metrics  # what finished before is kept
    ok = evaluate_candidate(spec, ["zero-cost"], digits, pm=pm, trial={"id": 8})
    assert ok.status == "ok"
    problems = pm.notify("metanet_search_finished", run={"trials": 2, "failed": 1, "best": {}, "out_dir": "x"})
    assert recorder_plugin.EVENTS == [("started", 7), ("failed", "raising_plugin", "explode"),
                                      ("started", 8), ("finished", ok.score), ("search", 2)]
    assert problems and "recorder_plugin" in problems[0] and "ValueError" in problems[0]


def test_a_raising_collection_hook_names_the_plugin(tmp_path, monkeypatch):
    (tmp_path / "bad_register.py").write_text(
        "def metanet_register_datasets(register):\n    raise OSError('disk on fire')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin 'bad_register': metanet_register_datasets raised OSError"):
        PluginManager(plugins=["bad_register"])


def test_every_hook_is_tested_and_documented():
    from pathlib import Path
    hooks = [n for n in dir(hookspecs) if n.startswith("metanet_")]
    assert len(hooks) >= 11
    root = Path(__file__).parent
    tests_text = "".join(p.read_text() for p in root.glob("test_*.py") if p.name != "test_plugins.py")
    tests_text += example_plugin.PLUGIN_SOURCE + Path(__file__).read_text().split("def test_every_hook")[0]
    guide = (root.parent / "docs" / "plugins.md").read_text()  # the plugin author's page
    for hook in hooks:
        assert hook in tests_text, f"{hook} has no test"
        assert hook in guide, f"{hook} is not documented in docs/plugins.md"
        assert getattr(hookspecs, hook).__doc__, f"{hook} has no docstring"
