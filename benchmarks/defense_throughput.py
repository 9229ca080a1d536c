"""PGD-AT (5 steps) and TRADES (5 steps) training throughput, before and after the "one path"
redesign, measured side by side in one process.

"Before" is the ``core`` package of an earlier commit (default edc24d5, the last commit before
the redesign), extracted with ``git archive`` and imported as ``core_before``; "after" is this
working tree's ``core``. Both train seed-resnet on the same real MNIST images (batch 128, the
overfitting guard shrunk to 10 held-out images and 1 step so that it does not count), in
alternation, ``--repeats`` times each; the machine's speed drifts between runs, so alternating
short runs in one process and comparing medians is the fair comparison.

    python benchmarks/defense_throughput.py [--before REF] [--images 1280] [--repeats 7]
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
DEFENSES = {"pgd-at": {"eps": 0.3, "steps": 5}, "trades": {"eps": 0.3, "steps": 5, "beta": 6.0}}


def extract(ref: str, into: Path) -> None:
    """``core/`` of git ``ref`` as the package ``core_before`` under ``into``."""
    blob = subprocess.run(["git", "archive", ref, "core"], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    (into / "core").rename(into / "core_before")


def trainer(package: str):
    """A function training one epoch with ``package``'s fit; returns images per second."""
    data = importlib.import_module(f"{package}.data")
    training = importlib.import_module(f"{package}.training")
    try:
        spec_cls = importlib.import_module(f"{package}.specs").TrainSpec
    except ModuleNotFoundError:
        spec_cls = training.TrainConfig
    data.load("mnist", "train")
    data.load("mnist", "test")

    def run(defense: str, images: int) -> float:
        spec = spec_cls(dataset="mnist", epochs=1, batch_size=128, train_subset=images + 10,
                        test_subset=100, lr=0.05, defense=defense,
                        defense_args=DEFENSES[defense], robust_eval={"n": 10, "steps": 1})
        began = time.perf_counter()
        training.fit(spec, None, None)  # no store, no progress output, in both versions
        return images / (time.perf_counter() - began)

    return run


def main() -> None:
    """Print before/after throughput (median of alternating runs) and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="edc24d5", help="git ref of the 'before' code")
    parser.add_argument("--images", type=int, default=1280, help="training images per run")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if SHARED.is_dir():
        os.environ.setdefault("ROBUSTLAB_DATA", str(SHARED))
    import torch

    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    with tempfile.TemporaryDirectory(prefix="robustlab-before-") as tmp:
        os.environ["ROBUSTLAB_ARTIFACTS"] = str(Path(tmp) / "artifacts")
        extract(args.before, Path(tmp))
        sys.path[:0] = [tmp, str(ROOT)]
        runs = {"before": trainer("core_before"), "after": trainer("core")}
        rates: dict = {d: {"before": [], "after": []} for d in DEFENSES}
        for defense in DEFENSES:
            for label in ("before", "after"):
                runs[label](defense, 256)  # warm-up: first-call costs of both versions
            for r in range(args.repeats):
                for label in ("before", "after") if r % 2 == 0 else ("after", "before"):
                    rates[defense][label].append(runs[label](defense, args.images))
                print(f"{defense} repeat {r + 1}: before {rates[defense]['before'][-1]:.0f}, "
                      f"after {rates[defense]['after'][-1]:.0f} img/s", flush=True)
    print(f"\nmedian of {args.repeats} alternating runs, {args.images:,} MNIST images each, "
          f"seed-resnet, batch 128, {torch.get_num_threads()} threads:")
    print("| defense | before img/s | after img/s | ratio of medians | per-pair ratios |")
    print("|---|---|---|---|---|")
    for defense, r in rates.items():
        b, a = statistics.median(r["before"]), statistics.median(r["after"])
        pairs = sorted(x / y for x, y in zip(r["after"], r["before"]))
        print(f"| {defense} (5 steps) | {b:,.1f} | {a:,.1f} | {a / b:.2f}x | "
              f"{pairs[0]:.2f}–{pairs[-1]:.2f}x (median {statistics.median(pairs):.2f}x) |")


if __name__ == "__main__":
    main()
