"""How close each command's stated estimate comes to the time it then takes.

Every job prints ``estimated time: about …`` before its work starts. This runs each command
as a user types it (``python -m core …``, a fresh process, stderr kept) in a scratch artifacts
folder, reads the estimate, and compares it with the seconds from that line to the end of the
process (what the estimate promises: loading the data and the model came before it). The target (issue 24): within 1.5x either way on an idle machine.

    python benchmarks/estimates.py [--dataset mnist] [--quick]
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402  (sets ROBUSTLAB_DATA like the others)

FIRST = re.compile(r"estimated time: about ([^(]+) \(")


def seconds(text: str) -> float:
    """'1 h 02 min', '3 min 05 s' or '42 s' in seconds."""
    total = 0.0
    for value, unit in re.findall(r"(\d+) (h|min|s)\b", text):
        total += int(value) * {"h": 3600, "min": 60, "s": 1}[unit]
    return total


def commands(dataset: str, quick: bool) -> list[tuple[str, list[str]]]:
    """(label, arguments) of the commands measured; MODEL stands for the trained model."""
    scale = 0.4 if quick else 1.0
    n = lambda k: str(max(20, int(k * scale)))  # noqa: E731
    eps = "0.1" if dataset == "mnist" else "0.0314"
    return [
        ("train", ["train", "--dataset", dataset, "--epochs", "2", "--train-subset", n(6000),
                   "--test-subset", n(1000)]),
        ("train fgsm-at", ["train", "--dataset", dataset, "--epochs", "1", "--train-subset",
                           n(3000), "--test-subset", n(500), "--defense", "fgsm-at"]),
        ("evaluate", ["evaluate", "MODEL", "-n", n(5000)]),
        ("attack pgd", ["attack", "MODEL", "--attack", "pgd", "--eps", eps, "-n", n(500)]),
        ("attack cw", ["attack", "MODEL", "--attack", "cw", "-n", n(100)]),
        ("sweep", ["sweep", "MODEL", "--attacks", "fgsm,pgd", "--eps", f"0.02,{eps}", "-n",
                   n(300)]),
        ("audit fast", ["audit", "MODEL", "--eps", eps, "--version", "fast", "-n", n(200)]),
        ("audit standard", ["audit", "MODEL", "--eps", eps, "--version", "standard", "-n",
                            n(60)]),
        ("curve linf", ["curve", "MODEL", "--norm", "linf", "-n", n(200)]),
        ("curve l2", ["curve", "MODEL", "--norm", "l2", "-n", n(200)]),
    ]


def run(args: list[str]) -> tuple[str, str, float | None, float]:
    """Run ``python -m core ARGS``; return its run id, stderr, the seconds from the estimate
    line to the end of the process (what the estimate promises) and the whole wall time."""
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(os.environ, ROBUSTLAB_PROGRESS_EVERY="3600"))
    lines, said = [], None
    for line in proc.stderr:
        lines.append(line)
        if said is None and FIRST.search(line):
            said = time.perf_counter()
    out = proc.stdout.read()
    if proc.wait():
        raise SystemExit(f"{' '.join(args)} failed: {''.join(lines)[-1500:]}")
    end = time.perf_counter()
    run_id = re.search(r"run (\S+?):", out + "".join(lines)).group(1)
    return run_id, "".join(lines), (end - said) if said else None, end - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    parser.add_argument("--quick", action="store_true", help="smaller jobs (a smoke run)")
    parser.add_argument("--only", help="comma-separated labels to run (the model is trained "
                        "first in any case), e.g. 'audit fast'")
    parser.add_argument("--show", action="store_true", help="print each estimate line")
    opts = parser.parse_args()
    os.environ["ROBUSTLAB_ARTIFACTS"] = tempfile.mkdtemp(prefix="robustlab-estimates-")
    from core.jobs.store import RunStore

    print(f"estimates against actual times, {opts.dataset}, {machine()}")
    print(f"{'command':16} {'estimate':>9} {'actual':>8} {'ratio':>6}")
    model, rows = None, []
    wanted = {w.strip() for w in opts.only.split(",")} | {"train"} if opts.only else None
    for label, args in commands(opts.dataset, opts.quick):
        if wanted and label not in wanted:
            continue
        args = [model if a == "MODEL" else a for a in args]
        run_id, err, after, wall = run(args)
        if label == "train":
            model = run_id
        actual = after if after is not None else RunStore().get(run_id).duration
        first = FIRST.search(err)
        est = seconds(first.group(1)) if first else None
        ratio = f"{est / actual:.2f}" if first else "no estimate"
        print(f"{label:16} {est or 0:9.0f} {actual:8.1f} {ratio:>6}   (whole command "
              f"{wall:.1f} s)", flush=True)
        rows.append((label, est, actual))
        if opts.show and first:
            print("    " + next(ln for ln in err.splitlines() if FIRST.search(ln)))
    if any(e is None for _, e, _ in rows):
        print("commands without an estimate: "
              + ", ".join(label for label, e, _ in rows if e is None))
    worst = max(max(e / a, a / max(e, 0.5)) for _, e, a in rows if e is not None)
    print(f"worst first estimate: {worst:.2f}x off (target: within 1.5x)")


if __name__ == "__main__":
    main()
