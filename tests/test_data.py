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
    (lambda root: root.mkdir(), "expected train/ (a folder of class folders or train.tar; optional val/ and test/) "
                                "or INTERN's upstream/ and downstream/ folders"),
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


def _paths(ds):
    """The image files behind a (possibly nested) Subset of an ImageFolder."""
    from torch.utils.data import Subset
    if isinstance(ds, Subset):
        inner = _paths(ds.dataset)
        return [inner[i] for i in ds.indices]
    return [p for p, _ in ds.samples]


def test_validation_is_carved_from_train_stratified_and_disjoint_from_test(tmp_path):
    from metanet.data import load_data
    from metanet.plugin.manager import registry
    for c in ("cat", "dog", "owl"):
        _images(tmp_path / "downstream" / "pets" / c, n=20)
    data = load_data(registry(), f"folder:{tmp_path}", 8, seed=3, val_fraction=0.25)
    split = data.tasks["pets"]
    train, val, test = (set(_paths(getattr(split, part))) for part in ("train", "val", "test"))
    # every image in exactly one part: the score (val) and the test score never share an image
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train | val | test) == 60
    # stratified: a quarter of each class's training images
    labels = split.labels("val")
    full = torch.cat([split.labels("train"), labels])
    for c in range(3):
        assert int((labels == c).sum()) == round(0.25 * int((full == c).sum()))
    again = load_data(registry(), f"folder:{tmp_path}", 8, seed=3, val_fraction=0.25).tasks["pets"]
    assert _paths(again.val) == _paths(split.val)


def test_a_given_val_folder_is_used_as_is(tmp_path):
    from metanet.data import load_data
    from metanet.plugin.manager import registry
    for c in ("cat", "dog"):
        _images(tmp_path / "downstream" / "pets" / "train" / c)
        _images(tmp_path / "downstream" / "pets" / "val" / c, n=3)
        _images(tmp_path / "downstream" / "pets" / "test" / c, n=2)
    split = load_data(registry(), f"folder:{tmp_path}", 8, seed=0).tasks["pets"]
    assert len(split.train) == 8 and len(split.val) == 6 and len(split.test) == 4
    assert all("/val/" in p for p in _paths(split.val))


def test_a_fixed_subset_list_is_used_verbatim_by_downstream(tmp_path):
    from conftest import tiny_spec_dict
    from metanet.data import load_data
    from metanet.plugin.manager import registry
    from metanet.search_spaces.spec import ArchSpec
    from metanet.evaluate.candidate import evaluate_candidate
    task = tmp_path / "downstream" / "pets"
    for c in ("cat", "dog"):
        _images(task / c, n=15)
    listed = ["cat/0.png", "cat/1.png", "dog/0.png", "dog/5.png", "dog/7.png"]
    (task / "train_10pct.txt").write_text("# GV-B style list\n" + "\n".join(f"{p} 0" for p in listed) + "\n")
    split = load_data(registry(), f"folder:{tmp_path}", 8, seed=0).tasks["pets"]
    picked = {_paths(split.train)[i] for i in split.subsets[0.1]}
    # the listed images stay in train (neither the test nor the validation carve takes them)
    assert picked == {str(task / p) for p in listed}
    data = load_data(registry(), f"folder:{tmp_path}", 8, seed=0)
    result = evaluate_candidate(ArchSpec.from_dict(tiny_spec_dict()), ["downstream"], data,
                                config={"downstream": {"epochs": 2}})
    assert result.status == "ok", result.error
    assert result.metrics["downstream.pets.labels_used"] == 5
    assert result.metrics["downstream.pets.fixed_subset"] == 1


@pytest.mark.parametrize("content, words", [
    ("cat/0.png\ncat/nope.png\n", "train_10pct.txt:2: 'cat/nope.png' is not an image"),
    ("# nothing\n", "train_10pct.txt: lists no image"),
])
def test_bad_subset_lists_are_named(tmp_path, content, words):
    task = tmp_path / "downstream" / "pets"
    for c in ("cat", "dog"):
        _images(task / c, n=6)
    (task / "train_10pct.txt").write_text(content)
    with pytest.raises(DataError, match=words):
        load_folder_bundle(tmp_path, resolution=8)


def test_folder_images_train_augmented_measure_centre_cropped_with_workers(tmp_path, monkeypatch):
    # A generated ImageFolder at 64 px through the whole pipeline: timm's train transform (random resized
    # crop + flip) for what stages learn from, resize + centre crop for val/test, loaders with workers.
    from conftest import tiny_spec_dict
    from metanet.data import load_data
    from metanet.plugin.manager import registry
    from metanet.search_spaces.spec import ArchSpec
    from metanet.evaluate.candidate import evaluate_candidate
    from metanet.train.loop import loader_options
    monkeypatch.setattr("metanet.data.images.FOLDER_WORKERS", 1)  # the default is 0 on 2 cores (no spare core)
    g = torch.Generator().manual_seed(0)
    for part, classes in (("upstream/shapes", ("a", "b")), ("downstream/pets", ("cat", "dog"))):
        for c in classes:
            folder = tmp_path / part / c
            folder.mkdir(parents=True)
            for i in range(12):
                pixels = (torch.rand(40, 56, 3, generator=g) * 255).byte().numpy()  # not square: aspect kept
                Image.fromarray(pixels).save(folder / f"{i}.png")
    data = load_data(registry(), f"folder:{tmp_path}", 64, seed=0, cache=False)  # decoded per step, by workers
    split = data.sources["shapes"]
    x1, _ = split.train[0]
    x2, _ = split.train[0]
    assert x1.shape == (3, 64, 64) and not torch.equal(x1, x2)  # augmented afresh each time
    assert torch.equal(split.train[(0, 5)][0], split.train[(0, 5)][0])  # unless the stream gives the same seed
    v1, v2 = split.val[0][0], split.val[0][0]
    assert v1.shape == (3, 64, 64) and torch.equal(v1, v2)  # measured deterministically
    assert loader_options(split.train)["num_workers"] >= 1
    result = evaluate_candidate(ArchSpec.from_dict(tiny_spec_dict()), ["amateur", "downstream"], data,
                                config={"amateur": {"max_steps": 3, "batch_size": 8}, "downstream": {"epochs": 2}})
    assert result.status == "ok", result.error
    assert result.metrics["amateur.train_steps"] == 3


def test_image_modes_keep_their_range():
    import numpy as np

    from metanet.data import to_rgb
    grey16 = Image.fromarray(np.array([[0, 16384, 32768, 65535]], dtype=np.uint16))
    assert grey16.mode.startswith("I;16")
    out = np.asarray(to_rgb(grey16))
    assert out[0, :, 0].tolist() == [0, 64, 128, 255]  # scaled, not clipped to white
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 0), 1)
    assert np.asarray(to_rgb(palette)).tolist() == [[[0, 0, 0], [255, 0, 0]]]
    rgba = Image.new("RGBA", (1, 1), (255, 255, 255, 0))  # transparent: on black
    assert np.asarray(to_rgb(rgba)).tolist() == [[[0, 0, 0]]]


def test_links_are_followed_and_a_loop_is_named(tmp_path):
    import os

    from metanet.data import load_folder_bundle
    root = tmp_path / "task"
    _task(root)
    outside = tmp_path / "elsewhere"
    _images(outside, n=3)
    os.symlink(outside / "0.png", root / "dog" / "stray.png")  # a file link out of the data folder: an image
    os.symlink(root / "dog" / "1.png", root / "dog" / "inside.png")  # a link inside the folder is an image
    os.symlink(outside, root / "bird")  # a folder link: a class
    split = load_folder_bundle(tmp_path / "task", resolution=8).sources["task"]
    names = sorted(os.path.relpath(p, root) for p, _ in split.train.samples + split.test.samples)
    assert len(names) == 4 + 4 + 2 + 3 and "dog/stray.png" in names and "bird/0.png" in names
    assert split.classes == ["bird", "cat", "dog"]
    os.symlink(root / "cat", root / "cat" / "loop")  # a loop inside a class folder
    with pytest.raises(DataError, match="cat/loop: link loop"):
        load_folder_bundle(tmp_path / "task", resolution=8)
