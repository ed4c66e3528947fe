import logging
import os
import random
import sys

# pytest-xdist runs one worker per core (make test: -n 2): each with one torch thread, and so the processes a
# test starts (a search under SIGKILL, NNI's trial processes, a second CLI run), or two workers' thread pools
# and their children's would fight over the two cores
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

# Without a GPU the Triton kernels run through Triton's interpreter; the variable is read when the
# kernels are decorated, so it must be set before metanet.kernels (and Triton) are imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from metanet.search_spaces.unified import DEFAULT_SPACE


@pytest.fixture(autouse=True)
def _nni_log_to_real_stderr():
    # NNI binds a StreamHandler to the sys.stdout of import time, which pytest closes after the test
    # that imported it: afterwards send NNI's log to the real stderr, errors only.
    yield
    for handler in logging.getLogger("nni").handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is not sys.__stderr__:
            handler.setStream(sys.__stderr__)
            logging.getLogger("nni").setLevel(logging.ERROR)


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    # The registry is built once per process; a test that installs or names a plugin must not
    # leak it into the next one, so every test starts from a fresh build.
    from metanet.plugin.manager import reset_registry
    monkeypatch.delenv("METANET_PLUGINS", raising=False)
    monkeypatch.delenv("METANET_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def rng():
    return random.Random(1234)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def tiny_spec_dict(**overrides):
    """A small valid architecture with conv and attention stages, cheap to build at 32-64 px."""
    d = {"version": 1, "stem_width": 16, "head_dim": 16}
    layout = [("mbconv", 1, 16, 1, "block"), ("fused_mbconv", 1, 24, 2, "block"), ("mbconv", 1, 32, 2, "local"),
              ("attention", 1, 32, 2, "local_global"), ("attention_rpb", 1, 48, 2, "block"), ("xca", 1, 64, 2, "local")]
    for i, (op, depth, width, expand, dsm) in enumerate(layout):
        d.update({f"s{i}_op": op, f"s{i}_depth": depth, f"s{i}_width": width, f"s{i}_expand": expand, f"s{i}_dsm": dsm})
    d.update(overrides)
    return d


@pytest.fixture
def tiny_spec_dict_fixture():
    return tiny_spec_dict()


@pytest.fixture
def space():
    return DEFAULT_SPACE


# -- real images: a sample of the shared CIFAR-10 subset -----------------------------------------------------

CIFAR_CLASSES = ("airplane", "cat", "ship")


def cifar_tarball():
    """The shared CIFAR-10 subset (CIFAR-10 as JPEG ImageFolder): $METANET_CIFAR_SUBSET, else ../shared/data/
    beside the project, else None."""
    from pathlib import Path
    candidates = [os.environ.get("METANET_CIFAR_SUBSET"),
                  Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset.tar.gz",
                  "/work/shared/data/cifar10-subset.tar.gz"]
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    return None


def extract_cifar(dest, per_class: dict, classes=CIFAR_CLASSES):
    """``dest/<split>/<class>/*.jpg`` with the first ``per_class[split]`` images of each class, or skip the test."""
    import tarfile
    from pathlib import Path
    tarball = cifar_tarball()
    if tarball is None:
        pytest.skip("the shared CIFAR-10 subset (../shared/data/cifar10-subset.tar.gz) is not on this machine")
    dest = Path(dest)
    taken: dict = {}
    with tarfile.open(tarball, "r:gz") as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and m.name.endswith(".jpg")), key=lambda m: m.name)
        for m in members:
            parts = m.name.split("/")  # cifar10-subset/<split>/<class>/<file>
            split, cls = parts[-3], parts[-2]
            if cls not in classes or split not in per_class or taken.get((split, cls), 0) >= per_class[split]:
                continue
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            out = dest / split / cls / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tf.extractfile(m).read())
    return dest


@pytest.fixture(scope="session")
def cifar_sample(tmp_path_factory):
    """A plain ImageFolder of real images, read-only for the tests: ``train/<class>/`` 24 JPEGs of 3 CIFAR-10
    classes, ``test/<class>/`` 8 (copy it before changing it)."""
    return extract_cifar(tmp_path_factory.mktemp("cifar") / "cifar3", {"train": 24, "test": 8})
