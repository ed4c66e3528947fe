"""ImageFolder data for the stages, and its error paths."""
import pytest
import torch
from PIL import Image

from metanet.data import DataError, load_folder_bundle


def _images(folder, n=4, size=12, colour=(200, 10, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), tuple((c + 20 * i) % 256 for c in colour)).save(folder / f"{i}.png")


def _task(root, classes=("cat", "dog"), split=False):
    for c in classes:
        if split:
            _images(root / "train" / c)
            _images(root / "test" / c, n=2)
        else:
            _images(root / c)


def test_folder_bundle_reads_sources_and_tasks(tmp_path):
    _task(tmp_path / "upstream" / "animals")
    _task(tmp_path / "upstream" / "shapes", classes=("round", "square", "star"))
    _task(tmp_path / "downstream" / "pets", split=True)
    data = load_folder_bundle(tmp_path, resolution=16)
    assert set(data.sources) == {"animals", "shapes"} and set(data.tasks) == {"pets"}
    assert data.sources["shapes"].num_classes == 3
    x, y = data.tasks["pets"].train[0]
    assert x.shape == (3, 16, 16) and y in (0, 1)
    assert len(data.tasks["pets"].test) == 4
    assert torch.equal(data.tasks["pets"].labels("test").sort().values, torch.tensor([0, 0, 1, 1]))


@pytest.mark.parametrize("setup, words", [
    (lambda root: None, "no such folder"),
    (lambda root: root.mkdir(), "expected an upstream/ and/or a downstream/ folder"),
    (lambda root: (root / "upstream").mkdir(parents=True), "upstream: empty folder"),
    (lambda root: (root / "upstream" / "animals").mkdir(parents=True), "animals: empty folder"),
    (lambda root: _task(root / "downstream" / "pets", classes=("cat",)), "has one class ('cat')"),
])
def test_bad_folders_are_clear_errors(tmp_path, setup, words):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=r".*" + words.replace("(", r"\(").replace(")", r"\)")):
        load_folder_bundle(root)


def test_unreadable_image_is_named(tmp_path):
    _task(tmp_path / "downstream" / "pets")
    (tmp_path / "downstream" / "pets" / "cat" / "broken.png").write_bytes(b"not a png")
    data = load_folder_bundle(tmp_path, resolution=8)
    split = data.tasks["pets"]
    with pytest.raises(DataError, match="broken.png: cannot read image"):
        for i in range(len(split.train)):
            split.train[i]
        for i in range(len(split.test)):
            split.test[i]


def test_folder_data_through_the_cli(tmp_path):
    from click.testing import CliRunner

    from conftest import tiny_spec_dict
    from metanet.cli import cli
    from metanet.search_spaces.spec import ArchSpec
    _task(tmp_path / "data" / "upstream" / "animals")
    ArchSpec.from_dict(tiny_spec_dict()).save(tmp_path / "arch.json")
    ok = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "arch.json"), "--data", str(tmp_path / "data"),
                                  "--stages", "zero-cost", "--json", "--proxy-resolution", "16"])
    assert ok.exit_code == 0, ok.output
    missing = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "arch.json"), "--data", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "nope: no such folder" in missing.output and "Traceback" not in missing.output
    no_tasks = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "arch.json"), "--data", str(tmp_path / "data"),
                                        "--stages", "downstream"])
    assert no_tasks.exit_code == 1 and "has no downstream tasks" in no_tasks.output
