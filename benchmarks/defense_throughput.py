"""PGD-AT (5 steps) and TRADES (5 steps) training throughput, before and after the "one path"
redesign, measured side by side in one run.

"Before" is a git worktree of an earlier commit (default edc24d5, the last commit before the
redesign); "after" is this working tree. Each variant trains seed-resnet on the same real MNIST
images in a fresh child process (1 epoch, batch 128, the guard shrunk to 10 held-out images and
1 step so that it does not count), alternating before/after for ``--rounds`` rounds; the best
round of each is reported.

    python benchmarks/defense_throughput.py [--before REF] [--images 3840] [--rounds 2]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "datasets"
if SHARED.is_dir():
    os.environ.setdefault("ROBUSTLAB_DATA", str(SHARED))

CHILD = r"""
import json, os, sys, time
import torch
torch.set_num_threads(int(os.environ.get("THREADS", "2")))
from core import data
try:
    from core.specs import TrainSpec as Spec
except ImportError:
    from core.training import TrainConfig as Spec
from core.training import fit
defense, args, images = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
data.load("mnist", "train"); data.load("mnist", "test")
spec = Spec(dataset="mnist", epochs=1, batch_size=128, train_subset=images + 10,
            test_subset=100, lr=0.05, defense=defense, defense_args=args,
            robust_eval={"n": 10, "steps": 1})
began = time.perf_counter()
fit(spec, None, None)  # no store, no progress output, in both versions
took = time.perf_counter() - began
print(json.dumps({"seconds": took, "images_per_s": images / took}))
"""

DEFENSES = {"pgd-at": {"eps": 0.3, "steps": 5}, "trades": {"eps": 0.3, "steps": 5, "beta": 6.0}}


def measure(tree: Path, defense: str, images: int) -> float:
    """Images per second of one training epoch in a fresh process on ``tree``."""
    out = subprocess.run([sys.executable, "-c", CHILD, defense, json.dumps(DEFENSES[defense]),
                          str(images)], cwd=tree, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(tree)), check=False)
    if out.returncode:
        raise SystemExit(f"{tree}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"]


def main() -> None:
    """Print before/after throughput and their ratio per defense."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", default="edc24d5", help="git ref of the 'before' tree")
    parser.add_argument("--images", type=int, default=3840, help="training images per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="robustlab-before-") as tmp:
        os.environ["ROBUSTLAB_ARTIFACTS"] = str(Path(tmp) / "artifacts")
        before = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), args.before],
                       cwd=ROOT, check=True, capture_output=True)
        try:
            results = {d: {"before": [], "after": []} for d in DEFENSES}
            for r in range(args.rounds):
                for defense in DEFENSES:
                    for label, tree in (("before", before), ("after", ROOT)):
                        rate = measure(tree, defense, args.images)
                        results[defense][label].append(rate)
                        print(f"round {r + 1}: {defense:7s} {label:6s} {rate:7.1f} img/s",
                              flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT,
                           check=False, capture_output=True)
    print(f"\nbest of {args.rounds} rounds, {args.images:,} MNIST images, seed-resnet, batch "
          f"128, torch threads {os.environ.get('THREADS', '2')}:")
    print("| defense | before img/s | after img/s | ratio |")
    print("|---|---|---|---|")
    for defense, r in results.items():
        b, a = max(r["before"]), max(r["after"])
        print(f"| {defense} (5 steps) | {b:,.1f} | {a:,.1f} | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
