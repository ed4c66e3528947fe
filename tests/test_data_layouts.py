"""Data as users have it, on real images (a sample of the shared CIFAR-10 subset): plain ImageFolder splits,
.tar splits, trees of links, given and carved validation splits, Hugging Face and WebDataset forms, the
decode-once cache, and every bad input as one line with nothing computed lost."""
import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch
from click.testing import CliRunner

from conftest import CIFAR_CLASSES, tiny_spec_dict
from metanet.cli import cli
from metanet.data import DataError, load_data
from metanet.data import decoded
from metanet.plugin.manager import registry
from metanet.search_spaces.spec import ArchSpec

TRAIN, TEST = 24, 8  # images per class of the sample (conftest.cifar_sample)


@pytest.fixture
def plain(cifar_sample, tmp_path):
    """A copy of the sample the test may change: cifar3/train/<class>/, cifar3/test/<class>/."""
    return shutil.copytree(cifar_sample, tmp_path / "cifar3")


@pytest.fixture(autouse=True)
def _fresh_cache():
    decoded.forget()
    yield
    decoded.forget()


def _load(path, resolution=32, **kwargs):
    return load_data(registry(), str(path), resolution, seed=0, **kwargs)


def _pixels(ds):
    """The images of a measured part as the stages get them (normalised tensors), in order."""
    return torch.stack([x for x, _ in ds.__getitems__(list(range(len(ds))))])


def _tar(folder, out, prefix=""):
    with tarfile.open(out, "w") as tf:
        for path in sorted(folder.rglob("*.jpg")):
            tf.add(path, arcname=prefix + str(path.relative_to(folder)))
    return out


def test_plain_folder_is_one_source_scored_on_a_carved_validation_split(plain):
    data = _load(plain, val_fraction=0.25)
    assert list(data.sources) == ["cifar3"] and data.tasks == {}
    split = data.sources["cifar3"]
    assert split.classes == list(CIFAR_CLASSES) and split.num_classes == 3
    assert len(split.train) + len(split.val) == 3 * TRAIN and len(split.test) == 3 * TEST
    assert split.labels("val").bincount().tolist() == [TRAIN // 4] * 3  # stratified, as --val-fraction says
    train_ids = {p for p, _ in split.train.samples}
    assert not train_ids & {p for p, _ in split.val.samples}  # rewards never see a training image
    assert all("/test/" in p for p, _ in split.test.samples)
    assert split.test.source.pixels is not None and tuple(split.test.source.pixels.shape[1:]) == (3, 32, 32)
    x, y = split.train[(0, 7)]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1, 2)


def test_tar_splits_read_the_same_images_as_folders(plain, tmp_path):
    as_tars = tmp_path / "tars"
    as_tars.mkdir()
    _tar(plain / "train", as_tars / "train.tar", prefix="./")  # as `tar -C train .` names members
    _tar(plain / "test", as_tars / "test.tar")
    folders, tars = _load(plain).sources["cifar3"], _load(as_tars).sources["tars"]
    assert tars.classes == folders.classes and len(tars.test) == len(folders.test) == 3 * TEST
    assert torch.equal(_pixels(tars.test), _pixels(folders.test))
    assert all(p.startswith(str(as_tars / "test.tar") + ":") for p, _ in tars.test.samples)


def test_a_tree_of_links_reads_the_images_it_links_to(plain, tmp_path):
    linked = tmp_path / "linked"
    for path in sorted((plain / "train").rglob("*.jpg")):  # a link per file, out of the data folder
        link = linked / "train" / path.parent.name / path.name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(path)
    os.symlink(plain / "test", linked / "test")  # a link to a folder
    data, real = _load(linked).sources["linked"], _load(plain).sources["cifar3"]
    assert len(data.train) + len(data.val) == 3 * TRAIN and data.classes == list(CIFAR_CLASSES)
    assert torch.equal(_pixels(data.test), _pixels(real.test))


@pytest.mark.parametrize("form", ["val", "validation.tar"])
def test_a_given_validation_split_is_used_as_is(plain, form):
    moved = plain / "moved"
    for cls in CIFAR_CLASSES:
        for path in sorted((plain / "train" / cls).glob("*.jpg"))[:6]:
            (moved / cls).mkdir(parents=True, exist_ok=True)
            path.rename(moved / cls / path.name)
    if form == "val":
        moved.rename(plain / "val")
    else:
        _tar(moved, plain / "validation.tar")
        shutil.rmtree(moved)
    split = _load(plain, val_fraction=0.5).sources["cifar3"]
    assert len(split.val) == 18 and len(split.train) == 3 * (TRAIN - 6)  # not carved, whatever --val-fraction
    assert split.labels("val").bincount().tolist() == [6, 6, 6]


def test_no_test_split_is_carved_from_train_and_said(plain):
    shutil.rmtree(plain / "test")
    data = _load(plain)
    split = data.sources["cifar3"]
    assert len(split.train) + len(split.val) + len(split.test) == 3 * TRAIN
    assert not {p for p, _ in split.test.samples} & {p for p, _ in split.train.samples}
    assert any("no test split" in n for n in data.notes)


def test_hugging_face_datasets_saved_on_disk(plain, tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CIFAR_CLASSES))})

    def part(split):
        files = sorted((plain / split).rglob("*.jpg"))
        return datasets.Dataset.from_dict({"image": [str(f) for f in files],
                                           "label": [CIFAR_CLASSES.index(f.parent.name) for f in files]},
                                          features=features)

    hub = tmp_path / "hub"
    datasets.DatasetDict({"train": part("train"), "test": part("test")}).save_to_disk(str(hub / "cifar3-hf"))
    data = _load("hfds/cifar3-hf", data_dir=str(hub))
    split, real = data.sources["cifar3-hf"], _load(plain).sources["cifar3"]
    assert split.classes == list(CIFAR_CLASSES) and len(split.test) == 3 * TEST
    assert torch.equal(_pixels(split.test), _pixels(real.test))
    missing = CliRunner().invoke(cli, ["evaluate", "uninet_b0", "--data", "hfds/nothing", "--data-dir", str(hub)])
    assert missing.exit_code == 1 and "not found on disk" in missing.output and "Traceback" not in missing.output


def test_webdataset_shards(plain, tmp_path):
    wds = pytest.importorskip("webdataset")
    shards = tmp_path / "shards"
    shards.mkdir()
    info = {"name": "cifar3", "classes": list(CIFAR_CLASSES), "splits": {}}
    for split in ("train", "test"):
        files = sorted((plain / split).rglob("*.jpg"))
        name = f"cifar3-{split}-000000.tar"
        with wds.TarWriter(str(shards / name)) as sink:
            for f in files:
                sink.write({"__key__": f"{f.parent.name}_{f.stem}", "jpg": f.read_bytes(),
                            "cls": CIFAR_CLASSES.index(f.parent.name)})
        info["splits"][split] = {"name": split, "num_samples": len(files), "filenames": [name],
                                 "shard_lengths": [len(files)]}
    (shards / "_info.json").write_text(json.dumps(info))
    split, real = _load("wds/cifar3", data_dir=str(shards)).sources["cifar3"], _load(plain).sources["cifar3"]
    assert split.classes == list(CIFAR_CLASSES) and len(split.train) + len(split.val) == 3 * TRAIN
    assert torch.equal(_pixels(split.test), _pixels(real.test))
    with pytest.raises(DataError, match="--no-cache needs data read by index"):
        _load("wds/cifar3", data_dir=str(shards), cache=False)


def test_images_are_decoded_once_and_no_cache_decodes_per_step(plain):
    before = decoded.decoded_images
    data = _load(plain)
    assert decoded.decoded_images - before == 3 * (TRAIN + TEST)
    assert any("decoded once at 32 px" in n for n in data.notes)
    again = _load(plain, val_fraction=0.3)  # another carve of the same images: nothing decoded again
    assert decoded.decoded_images - before == 3 * (TRAIN + TEST)
    per_step = _load(plain, cache=False)
    split = per_step.sources["cifar3"]
    assert split.test.source.pixels is None and any("--no-cache" in n for n in per_step.notes)
    # the cached evaluation view is the image the per-step path computes
    assert torch.allclose(_pixels(split.test), _pixels(again.sources["cifar3"].test), atol=1e-5)
    # a training view depends on its seed: the same seed, the same augmented image
    train = data.sources["cifar3"].train
    assert torch.equal(train[(3, 11)][0], train[(3, 11)][0]) and not torch.equal(train[(3, 11)][0], train[(3, 12)][0])


def test_skipped_files_are_counted_in_one_note(plain):
    (plain / "train" / "cat" / "notes.txt").write_text("not an image")
    (plain / "train" / "cat" / ".DS_Store").write_bytes(b"\0")
    (plain / "train" / "ship" / "gone.jpg").symlink_to(plain / "nowhere.jpg")
    notes = _load(plain).notes
    line = next(n for n in notes if "skipped" in n)
    assert "skipped 3 files" in line and "1 not images (e.g. notes.txt)" in line and "1 broken links" in line


def test_downstream_folders_add_tasks_to_any_data(plain, tmp_path):
    tasks = tmp_path / "tasks"
    shutil.copytree(plain, tasks / "heldout")
    data = load_data(registry(), "digits", 32, seed=0, downstream=[str(tasks)])
    assert set(data.tasks) == {"heldout_digits", "heldout"} and data.tasks["heldout"].classes == list(CIFAR_CLASSES)
    one = load_data(registry(), str(plain), 32, seed=0, downstream=[str(tasks / "heldout")])
    assert list(one.tasks) == ["heldout"]
    with pytest.raises(DataError, match="'heldout' is already a task"):
        load_data(registry(), "digits", 32, seed=0, downstream=[str(tasks), str(tasks / "heldout")])


# -- bad inputs: one line, exit 1, nothing written -----------------------------------------------------------

def _one_class(root):
    for cls in CIFAR_CLASSES[1:]:
        shutil.rmtree(root / "train" / cls)
        shutil.rmtree(root / "test" / cls)


def _empty_split(root):
    shutil.rmtree(root / "test")
    (root / "test" / "cat").mkdir(parents=True)


def _foreign_val_class(root):
    (root / "val" / "dog").mkdir(parents=True)
    shutil.copy(next((root / "train" / "cat").glob("*.jpg")), root / "val" / "dog" / "x.jpg")


def _corrupt(root):
    (root / "train" / "cat" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")


def _loop(root):
    os.symlink(root / "train", root / "train" / "cat" / "again")


@pytest.mark.parametrize("damage, words", [
    (_one_class, "has one class ('airplane')"),
    (_empty_split, "test: empty folder"),
    (_foreign_val_class, "validation class 'dog' is not a class of"),
    (_corrupt, "broken.jpg: cannot read image"),
    (_loop, "again: link loop"),
])
def test_bad_data_is_one_line_before_anything_is_written(plain, tmp_path, damage, words):
    damage(plain)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--data", str(plain), "--out", str(out), "--trials", "1",
                                      "--stages", "zero-cost", "--proxy-resolution", "16"])
    assert result.exit_code == 1, result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and words in error[0] and "Traceback" not in result.output
    assert not out.exists()  # checked before the run directory is made: nothing half-made, nothing lost


@pytest.mark.slow
def test_an_unreadable_folder_is_named(plain, tmp_path):
    import stat
    shared = tmp_path / "shared"
    shutil.copytree(plain, shared)
    os.chmod(shared / "train" / "cat", 0)
    ArchSpec.from_dict(tiny_spec_dict()).save(tmp_path / "arch.json")
    # root reads anything: without the capabilities that let it (util-linux's setpriv), it reads as a user does
    drop = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
            "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    if drop and shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to read as a user when the tests run as root")
    try:
        proc = subprocess.run([*drop, sys.executable, "-m", "metanet", "evaluate", str(tmp_path / "arch.json"),
                               "--data", str(shared), "--stages", "zero-cost", "--proxy-resolution", "16"],
                              capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(shared / "train" / "cat", stat.S_IRWXU)
    assert proc.returncode == 1, proc.stderr
    assert "cat: folder is not readable" in proc.stderr and "Traceback" not in proc.stderr
    assert [line.startswith("Error:") for line in proc.stderr.splitlines()].count(True) == 1


# -- searches on real images --------------------------------------------------------------------------------

FAST = ["--trials", "2", "--flops", "400M", "--proxy-resolution", "16", "--set", "amateur.max_steps=2",
        "--set", "amateur.batch_size=8", "--json"]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["folders", "tars", "links"])
def test_a_default_search_on_plain_images_scores_validation_accuracy(plain, tmp_path, form):
    data = plain
    if form == "tars":
        data = tmp_path / "tars"
        data.mkdir()
        for split in ("train", "test"):
            _tar(plain / split, data / f"{split}.tar")
    elif form == "links":
        data = tmp_path / "links"
        data.mkdir()
        for split in ("train", "test"):
            os.symlink(plain / split, data / split)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["search", "--data", str(data), "--out", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "stages: zero-cost,amateur (data" in result.stderr and "decoded once" in result.stderr
    rows = json.loads(CliRunner().invoke(cli, ["results", str(out), "--json"]).stdout)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    for r in rows:
        assert r["score"] == r["metrics"]["amateur.acc"]  # validation accuracy, what the search maximises
        assert r["test_score"] == r["metrics"]["amateur.test_acc"]
        assert r["data"]["decoded_here"] == 0 and r["data"]["cache"] == "memory"  # the search decoded them once
    assert json.loads((out / "config.json").read_text())["stages"] == ["zero-cost", "amateur"]


@pytest.mark.slow
def test_trial_processes_map_the_images_the_search_decoded(plain, tmp_path):
    out = tmp_path / "run"
    port = 18600 + os.getpid() % 1000
    result = CliRunner().invoke(cli, ["search", "--data", str(plain), "--out", str(out), "--engine", "ts",
                                      "--concurrency", "2", "--port", str(port), *FAST])
    assert result.exit_code == 0, result.output
    rows = json.loads(CliRunner().invoke(cli, ["results", str(out), "--json"]).stdout)
    assert len(rows) == 2 and all(r["status"] == "ok" for r in rows)
    # trial processes of NNI's training service: every image mapped from RUN/data-cache, none decoded again
    assert all(r["data"]["decoded_here"] == 0 and r["data"]["cache"] == "mapped" for r in rows)
    assert sorted(p.suffix for p in (out / "data-cache").iterdir()) == [".json", ".json", ".u8", ".u8"]
    # a trial of a trial process re-runs here, from its record (its thread count, the same pixels), exactly
    again = CliRunner().invoke(cli, ["evaluate", "--rerun", str(out), str(rows[0]["id"]), "--json"])
    assert again.exit_code == 0 and json.loads(again.stdout)["matches"], again.output
