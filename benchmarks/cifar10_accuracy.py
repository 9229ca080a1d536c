"""CIFAR-10 accuracy of seed-resnet (10 epochs, the cifar10-subset's 50,000 training images,
its 1,000 test images), against the seed study's 65.18%.

    python benchmarks/cifar10_accuracy.py [--epochs 10]
"""
from __future__ import annotations

import argparse
import time

from common import machine

from core import data
from core.evaluation import clean_report
from core.jobs.runner import create, execute
from core.jobs.specs import TrainSpec
from core.jobs.store import RunStore
from core.prediction import load_model, run_model_path

SEED_ACC = 0.6518
SETTINGS = dict(dataset="cifar10", model="seed-resnet", batch_size=128, optimizer="nesterov",
                lr=0.05, weight_decay=5e-4, schedule="onecycle", label_smoothing=0.0)


def main() -> None:
    """Train through the runner; print per-epoch and final accuracy against the seed's."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=SETTINGS["lr"])
    parser.add_argument("--batch-size", type=int, default=SETTINGS["batch_size"])
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = parser.parse_args()
    print(f"machine: {machine()}")
    cfg = TrainSpec(**dict(SETTINGS, epochs=args.epochs, lr=args.lr,
                           batch_size=args.batch_size, precision=args.precision))
    print(f"config: {cfg.to_dict()}")
    store = RunStore()
    run_id = create(store, cfg, name="benchmark cifar10")
    start = time.perf_counter()
    execute(store, run_id, echo=False)
    wall = time.perf_counter() - start
    per_epoch = [m["value"] for m in store.metrics(run_id, ["test_acc"])]
    for e, acc in enumerate(per_epoch, 1):
        print(f"epoch {e:2d}: test accuracy {acc:.2%}")
    model, meta = load_model(run_model_path(run_id))
    split = data.load(meta["dataset"], "test")
    r = clean_report(model, split)
    first = next((e for e, a in enumerate(per_epoch, 1) if a > SEED_ACC), None)
    print(f"run {run_id}: {len(split)} test images ({split.source})")
    print(f"accuracy {r['accuracy']:.2%}  micro-F1 {r['micro_f1']:.2%}  macro-F1 "
          f"{r['macro_f1']:.2%}  wall {wall:.0f} s")
    print(f"seed 65.18% first passed after epoch {first}; target >= 75%: "
          f"{'met' if r['accuracy'] >= 0.75 else 'NOT met'}")


if __name__ == "__main__":
    main()
