"""Shared fixtures: an isolated artifacts folder per test session, the real data root, and a
small real-MNIST model trained once for the attack and evaluation tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
if "ROBUSTLAB_DATA" not in os.environ and SHARED.is_dir():
    os.environ["ROBUSTLAB_DATA"] = str(SHARED)
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if "ROBUSTLAB_ARTIFACTS" not in os.environ:
    # Tests never touch the user's artifacts/: each session writes to its own folder.
    import tempfile

    os.environ["ROBUSTLAB_ARTIFACTS"] = tempfile.mkdtemp(prefix="robustlab-test-")
if WORKER and not os.environ["ROBUSTLAB_ARTIFACTS"].endswith(WORKER):
    # pytest-xdist workers inherit the controller's folder: each needs a store of its own,
    # since tests count the runs they made
    os.environ["ROBUSTLAB_ARTIFACTS"] = str(Path(os.environ["ROBUSTLAB_ARTIFACTS"]) / WORKER)
# The cores are shared among the pytest workers, and every process a test starts inherits its
# share: threads beyond a core each only spin against each other.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT",
                                                                       1))))
# set, not defaulted: the controller's value reaches the workers, and a test that compares a
# run in a subprocess with one in here needs both on the same thread count
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: a worker per core, at most four (each may start a server, a browser and
    training processes)."""
    return max(1, min(4, os.cpu_count() or 1))


def wait_for(predicate, timeout: float = 240.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass."""
    import time

    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def has_mnist() -> bool:
    from core import catalog

    return "mnist" in catalog.available()


requires_mnist = pytest.mark.skipif(not has_mnist(), reason="real MNIST not found; set "
                                    "ROBUSTLAB_DATA to the folder holding MNIST/raw")


@pytest.fixture(scope="session")
def mnist_model():
    """seed-resnet trained for one epoch on 6,000 real MNIST images (about 95% accurate)."""
    from core.jobs.runner import execute
    from core.jobs.store import RunStore
    from core.prediction import load_model, run_model_path
    from core.jobs.specs import TrainSpec

    store = RunStore()
    cfg = TrainSpec(dataset="mnist", epochs=1, train_subset=6000, test_subset=500,
                      batch_size=64, lr=0.05, seed=0)
    run_id = store.create_run("train", cfg.to_dict())
    execute(store, run_id, echo=False)
    model, meta = load_model(run_model_path(run_id))
    return model, meta, run_id


@pytest.fixture(scope="session")
def mnist_test():
    """600 real MNIST test images as a TensorData."""
    from core import data

    return data.load("mnist", "test").subset(600, seed=3)
