"""Source of a small external plugin package, written to disk and installed by the plugin tests."""

PLUGIN_SOURCE = '''
import torch
import torch.nn as nn

from metanet import hookimpl
from metanet.search_spaces.unified import SpaceConfig


class DWConv5(nn.Module):
    """A 5x5 depthwise conv + 1x1 block with a strided 1x1 shortcut."""

    def __init__(self, cin, cout, stride, expand, head_dim, drop_path, grid):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 5, stride, 2, groups=cin)
        self.bn = nn.BatchNorm2d(cin)
        self.pw = nn.Conv2d(cin, cout, 1)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride) if (cin != cout or stride != 1) else nn.Identity()

    def forward(self, x):
        return self.shortcut(x) + self.pw(torch.relu(self.bn(self.dw(x))))


def dwconv5_cost(cin, cout, stride, expand, head_dim, hw_in, hw_out, grid):
    """The block's MACs under metanet's convention (biases free, batch norm 2 per element)."""
    flops = cin * 25 * hw_out + 2 * cin * hw_out + cin * cout * hw_out
    params = cin * 25 + cin + 2 * cin + cin * cout + cout
    if cin != cout or stride != 1:
        flops += cin * cout * hw_out
        params += cin * cout + cout
    return flops, params


@hookimpl
def metanet_register_operators(register):
    register("dwconv5", DWConv5)  # no formula: the estimator counts a built block
    register("dwconv5f", DWConv5, cost=dwconv5_cost)


@hookimpl
def metanet_register_search_spaces(register):
    # only operators with a formula: the space's exact FLOP range is a DP over thousands of shapes
    register("tiny-dw", SpaceConfig(name="tiny-dw", op=(("dwconv5f", "mbconv"),) * 6))


@hookimpl
def metanet_register_stages(register):
    register("param-count", defaults={"scale": 1e-6}, description="parameters of the candidate, in millions")


@hookimpl
def metanet_run_stage(stage, context):
    if stage != "param-count":
        return None
    return {"millions": sum(p.numel() for p in context.model.parameters()) * context.config["scale"]}


@hookimpl
def metanet_register_strategies(register):
    import nni.nas.strategy as strategy
    register("example-random", lambda **kw: strategy.Random(**kw), description="NNI random, renamed")


@hookimpl
def metanet_register_datasets(register):
    from metanet.data import load_digits_bundle
    register("digits-16", lambda resolution=16, seed=0: load_digits_bundle(16, seed))


@hookimpl
def metanet_register_exporters(register):
    def export(model, spec, out_dir, **options):
        path = f"{out_dir}/state_dict.pt"
        torch.save(model.state_dict(), path)
        return path
    register("state-dict", export, description="plain torch state dict")
'''


def install(root, name="metanet_example_plugin", version="0.1", source=PLUGIN_SOURCE, entry="example"):
    """Write the package and a dist-info with a ``metanet`` entry point under ``root`` (put on sys.path)."""
    (root / f"{name}.py").write_text(source)
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(f"[metanet]\n{entry} = {name}\n")
    return name
