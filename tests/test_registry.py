"""The one registry: registered objects with behaviour, load-time errors, config parsed in one place."""
import json
import re
import textwrap

import pytest
from click.testing import CliRunner

from conftest import tiny_spec_dict
from metanet.cli import cli
from metanet.data import load_digits_bundle
from metanet.errors import ConfigError, PluginError
from metanet.plugin.manager import PluginManager, registry
from metanet.runs.config import SearchConfig, load_config_file
from metanet.search_spaces.spec import ArchSpec
from metanet.evaluate.candidate import default_score_weights, evaluate_candidate


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name, source):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        return name
    return write


def test_every_consumer_asks_one_registry(plugin):
    name = plugin("late_op", '''
        import torch.nn as nn
        from metanet import hookimpl

        @hookimpl
        def metanet_register_operators(register):
            register("ident", lambda cin, cout, stride, expand, head_dim, drop_path, grid:
                     nn.Conv2d(cin, cout, 1, stride), cost=lambda *a, **k: (0, 0), attention=True)
    ''')
    spec = tiny_spec_dict(s3_op="ident", s3_dsm="local")
    with pytest.raises(Exception, match="s3_op: unknown operator 'ident'"):
        ArchSpec.from_dict(spec)
    pm = registry([name])
    assert registry() is pm  # named once, kept for the process
    arch = ArchSpec.from_dict(spec)
    assert arch.stages[3].is_attention  # the attention flag comes from the registration
    from metanet.search_spaces.metanet import MetaNet
    assert type(MetaNet(arch, img_size=32).stages[3][1]).__name__ == "Conv2d"


def test_a_name_registered_twice_names_both_plugins(plugin):
    plugin("clash", '''
        def metanet_register_operators(register):
            register("mbconv", object)
    ''')
    with pytest.raises(PluginError, match="plugin 'clash' registers operator 'mbconv', which plugin "
                                          "'metanet.plugins.operators' already registered"):
        PluginManager(plugins=["clash"])


def test_an_unknown_registration_option_is_named(plugin):
    plugin("typo_option", '''
        def metanet_register_stages(register):
            register("s", default={"a": 1})
    ''')
    with pytest.raises(PluginError, match="plugin 'typo_option': stage 's': unknown option 'default'"):
        PluginManager(plugins=["typo_option"])


def test_a_stage_with_a_runner_declares_its_score_and_backbone(plugin):
    name = plugin("runner_stage", '''
        from metanet import hookimpl

        def run(context):
            context.state["width"] = {"weights": context.model.state_dict()}
            return {"millions": sum(p.numel() for p in context.model.parameters()) / 1e6, "acc": 0.0}

        @hookimpl
        def metanet_register_stages(register):
            register("width", run, defaults={"scale": 1.0}, trains_backbone=True, score_metric="millions")
    ''')
    pm = registry([name])
    assert default_score_weights(["zero-cost", "width"], pm) == {"width.millions": 1.0}
    result = evaluate_candidate(ArchSpec.from_dict(tiny_spec_dict()), ["zero-cost", "width"],
                                load_digits_bundle(16), pm=pm)
    assert result.status == "ok" and result.score == result.metrics["width.millions"] > 0
    assert result.backbone_stage == "width"


def test_the_run_stage_hook_still_overrides(plugin, tmp_path):
    name = plugin("override", '''
        def metanet_run_stage(stage, context):
            if stage == "zero-cost":
                return {"score": 42.0}
    ''')
    result = evaluate_candidate(ArchSpec.from_dict(tiny_spec_dict()), ["zero-cost"], load_digits_bundle(16),
                                pm=registry([name]))
    assert result.score == 42.0


def test_settings_keep_the_type_of_their_default():
    stage = registry().stage("amateur")
    assert stage.config({"max_steps": 5.0, "lr": 1})["max_steps"] == 5
    with pytest.raises(ConfigError, match="amateur.max_steps: expected a number, got 'abc'"):
        stage.config({"max_steps": "abc"})
    with pytest.raises(ConfigError, match="stage 'amateur': unknown setting 'epoch'"):
        stage.config({"epoch": 3})


def test_config_files_flags_and_python_share_one_parser(tmp_path):
    (tmp_path / "search.yaml").write_text('band: "0.8,1.0"\nscore: downstream.acc=1\nstages: zero-cost,downstream\n'
                                          'flops: 300M,600M\ntrials: 2\n')
    from_file = SearchConfig.from_dict(load_config_file(tmp_path / "search.yaml"))
    from_python = SearchConfig(band=(0.8, 1.0), score={"downstream.acc": 1.0}, stages=["zero-cost", "downstream"],
                               flops=[300_000_000, 600_000_000], trials=2)
    assert from_file == from_python
    assert SearchConfig.from_dict({"band": [0.8, 1], "flops": ["600M", 300_000_000]}).flops == [300e6, 600e6]
    for bad, words in [({"trials": 1.7}, "trials: expected an integer"), ({"stages": 5}, "stages: expected a"),
                       ({"band": "0.5,inf"}, "band: need 0 < LOW < HIGH <= 1"), ({"seed": "abc"}, "seed: expected"),
                       ({"stages": "amateur,amateur"}, "stage 'amateur' is listed twice"),
                       ({"score": "downstream.acc=high"}, "not a number")]:
        with pytest.raises(ConfigError, match=words):
            SearchConfig.from_dict(bad)


def test_bad_settings_fail_before_the_run_directory_exists(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--stages", "zero-cost", "--set", "zero-cost.batch_size=abc",
                                      "--out", str(out)])
    assert result.exit_code == 1 and "zero-cost.batch_size: expected a number" in result.output
    assert "Traceback" not in result.output and not out.exists()
    help_text = " ".join(CliRunner().invoke(cli, ["search", "--help"]).output.split())
    assert "[default: 6]" in help_text and "[default: 300M]" in help_text and "[default: 0.9,1.0]" in help_text


def test_a_stage_declares_its_settings_as_a_typed_schema(plugin):
    name = plugin("schema_stage", '''
        from metanet import Setting, hookimpl

        @hookimpl
        def metanet_register_stages(register):
            register("probe", lambda context: {"acc": context.config["rate"]}, description="a probe",
                     defaults={"rate": Setting(0.5, "a fraction", gt=0, le=1), "steps": Setting(10, "steps", ge=1),
                               "mode": Setting("fast", "how", choices=("fast", "slow")), "scale": 2})
    ''')
    stage = registry([name]).stage("probe")
    assert stage.defaults == {"rate": 0.5, "steps": 10, "mode": "fast", "scale": 2}
    assert stage.config({"rate": 1, "steps": 3.0, "scale": 2.5}) == {"rate": 1, "steps": 3, "mode": "fast",
                                                                     "scale": 2.5}
    assert stage.config({"scale": "inf"})["scale"] == float("inf")  # a plain default takes any number, as before
    for values, words in [({"rate": 0}, "probe.rate: must be greater than 0, got 0"),
                          ({"rate": 1.5}, "probe.rate: must be at most 1, got 1.5"),
                          ({"rate": float("nan")}, "probe.rate: expected a number, got NaN"),
                          ({"steps": 0}, "probe.steps: must be at least 1, got 0"),
                          ({"steps": 2.5}, "probe.steps: expected a whole number, got 2.5"),
                          ({"steps": True}, "probe.steps: expected a number, got True"),
                          ({"mode": "medium"}, "probe.mode: expected one of fast, slow, got 'medium'"),
                          ({"scale": None}, "probe.scale: expected a number, got null")]:
        with pytest.raises(ConfigError, match=re.escape(words)):
            stage.config(values)

    # what `metanet plugins --stage` shows a user: each setting's default, type and range
    result = CliRunner().invoke(cli, ["-p", name, "plugins", "--stage", "probe", "--json"])
    assert result.exit_code == 0, result.output
    settings = json.loads(result.output)["settings"]
    assert settings["rate"] == {"default": 0.5, "type": "number", "gt": 0, "le": 1, "description": "a fraction"}
    assert settings["mode"]["choices"] == ["fast", "slow"] and settings["scale"]["type"] == "number"
    text = CliRunner().invoke(cli, ["-p", name, "plugins", "--stage", "probe"]).output
    assert re.search(r"rate\s+0.5\s+number in \(0, 1\]\s+a fraction", text), text
    assert re.search(r"steps\s+10\s+integer >= 1", text), text


def test_the_built_in_stages_refuse_what_no_trial_could_use():
    pm = registry()
    for stage, key, value in [("amateur", "batch_size", 0), ("amateur", "lr", 0), ("amateur", "warmup", 1.0),
                              ("expert", "max_steps", -1), ("generalist", "temperature", 0),
                              ("downstream", "fraction", 1.5), ("downstream", "momentum", 1),
                              ("zero-cost", "proxy", "synflow"), ("supernet", "calibration_batches", 0)]:
        with pytest.raises(ConfigError, match=f"{stage}.{key}: "):
            pm.stage(stage).config({key: value})
    assert pm.stage("amateur").config({"epochs": "inf", "max_steps": 50})["epochs"] == float("inf")


def test_settings_that_name_the_datas_sources_and_tasks_are_checked_against_it():
    from metanet.data import load_digits_bundle
    from metanet.plugin.settings import check_data_names
    pm, data = registry(), load_digits_bundle(16)
    amateur = pm.stage("amateur")
    assert amateur.schema["sources"].describe()["names"] == "sources"
    for value in ("digit,parity", ["magnitude"], None):
        check_data_names("amateur", amateur.schema, amateur.config({"sources": value}), data)
    with pytest.raises(ConfigError, match=r"amateur.sources: data 'digits' has no source 'colour' \(it has digit, "
                                          r"parity, magnitude\)"):
        check_data_names("amateur", amateur.schema, amateur.config({"sources": "digit,colour"}), data)
    for bad in (5, [], ["digit", 3], ""):
        with pytest.raises(ConfigError, match="amateur.sources: expected the name of one of the data's sources"):
            amateur.config({"sources": bad})
    downstream = pm.stage("downstream")
    with pytest.raises(ConfigError, match="downstream.tasks: data 'digits' has no task 'cifar'"):
        check_data_names("downstream", downstream.schema, downstream.config({"tasks": ["cifar"]}), data)
