"""MNIST accuracy of seed-resnet, 5 epochs, full 10,000-image test set (seed: 98.28%).

    python benchmarks/mnist_accuracy.py
"""
from __future__ import annotations

import time

from common import machine

from core.jobs.kinds import run_job
from core.jobs.store import RunStore
from core.training.loop import TrainConfig

SETTINGS = dict(dataset="mnist", model="seed-resnet", epochs=5, batch_size=128,
                optimizer="nesterov", lr=0.1, schedule="onecycle")


def main() -> None:
    print(f"machine: {machine()}")
    cfg = TrainConfig(**SETTINGS)
    store = RunStore()
    run_id = store.create_run("train", cfg.to_dict(), name="benchmark mnist")
    start = time.perf_counter()
    summary = run_job(store, run_id, progress=False)
    acc = summary["final"]["test_acc"]
    print(f"run {run_id}: test accuracy {acc:.2%} on {summary['n_test']} images, "
          f"wall {time.perf_counter() - start:.0f} s; target >= 99.0%: "
          f"{'met' if acc >= 0.99 else 'NOT met'} (seed 98.28%)")


if __name__ == "__main__":
    main()
