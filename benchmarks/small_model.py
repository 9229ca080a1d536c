"""The benchmarks' shared subject: seed-resnet trained for one epoch on 6,000 real MNIST images
(about 95% accurate), in a fresh temporary artifacts folder."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets"


def small_mnist_model(prefix: str):
    """Train it through the runner; returns the run store, the run id and the model (eval)."""
    if SHARED.is_dir():
        os.environ.setdefault("ROBUSTLAB_DATA", str(SHARED))
    os.environ["ROBUSTLAB_ARTIFACTS"] = tempfile.mkdtemp(prefix=prefix)
    import torch

    from core.prediction import load_model, run_model_path
    from core.jobs.runner import create, execute
    from core.jobs.specs import TrainSpec
    from core.jobs.store import RunStore

    torch.set_num_threads(2)
    store = RunStore()
    run_id = create(store, TrainSpec(dataset="mnist", epochs=1, train_subset=6000,
                                     test_subset=500, batch_size=64, lr=0.05, seed=0))
    execute(store, run_id, echo=False)
    model, _ = load_model(run_model_path(run_id))
    return store, run_id, model.eval()
