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
if "ROBUSTLAB_ARTIFACTS" not in os.environ:
    # Tests never touch the user's artifacts/: each session writes to its own folder.
    import tempfile

    os.environ["ROBUSTLAB_ARTIFACTS"] = tempfile.mkdtemp(prefix="robustlab-test-")

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
