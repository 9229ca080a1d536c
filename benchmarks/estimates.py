"""How close each command's stated estimate comes to the time it then takes.

Every job prints ``estimated time: about …`` before its work starts. This runs each command
as a user types it (``python -m core …``, a fresh process, stderr kept) in a scratch artifacts
folder, reads the estimate, and compares it with the seconds from that line to the end of the
process (what the estimate promises: loading the data and the model came before it). The target (issue 24): within 1.5x either way on an idle machine.

With ``--resumed`` it measures the estimates of resumed jobs instead (issue 39): each of the
sweep, the two audits and the curve is started, stopped with Ctrl-C (SIGINT) once its
progress passes ``--stop-at`` of the work, and continued with ``python -m core resume RUN``;
the resume's estimate (of what is left) is compared with the resume's time.

    python benchmarks/estimates.py [--dataset mnist] [--quick] [--resumed [--stop-at 0.4]]
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
    named = re.search(r"run (\S+?):", out + "".join(lines))  # a resume names no new run
    run_id = named.group(1) if named else None
    return run_id, "".join(lines), (end - said) if said else None, end - began


RESUMED = ("sweep", "audit fast", "audit standard", "curve linf")


def stopped(args: list[str], stop_at: float) -> str:
    """Start ``python -m core ARGS``, send it SIGINT (a user's Ctrl-C) once its stored
    progress passes ``stop_at``, and return the cancelled run's id."""
    import signal

    from core.jobs.store import RunStore

    proc = subprocess.Popen([sys.executable, "-m", "core", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, ROBUSTLAB_PROGRESS_EVERY="3600"))
    store, run_id = RunStore(), None
    while proc.poll() is None:
        time.sleep(0.5)
        if run_id is None:
            fresh = [r for r in store.list_runs() if r.status == "running"]
            run_id = fresh[0].id if fresh else None
            continue
        rows = store.metrics(run_id, ["progress"])
        if rows and rows[-1]["value"] >= stop_at:
            proc.send_signal(signal.SIGINT)
            break
    proc.communicate()
    if run_id is None or store.get(run_id).status != "cancelled":
        raise SystemExit(f"{' '.join(args)} ended before {stop_at:.0%} of it was done")
    return run_id


def resumed_main(opts, model: str) -> None:
    """The resumed jobs' estimates against the resumes' times."""
    print(f"{'command':16} {'stopped at':>10} {'estimate':>9} {'actual':>8} {'ratio':>6}")
    rows = []
    for label, args in commands(opts.dataset, opts.quick):
        if label not in RESUMED:
            continue
        args = [model if a == "MODEL" else a for a in args]
        args = [str(int(a) * 2) if prev == "-n" else a for prev, a in zip([""] + args, args)]
        run_id = stopped(args, opts.stop_at)
        _, err, after, _ = run(["resume", run_id])
        first = FIRST.search(err)
        if first is None or after is None:
            print(f"{label:16} resume printed no estimate")
            continue
        est = seconds(first.group(1))
        print(f"{label:16} {opts.stop_at:10.0%} {est:9.0f} {after:8.1f} {est / after:6.2f}",
              flush=True)
        rows.append((est, after))
        if opts.show:
            print("    " + next(ln for ln in err.splitlines() if FIRST.search(ln)))
    worst = max(max(e / a, a / max(e, 0.5)) for e, a in rows)
    print(f"worst resumed estimate: {worst:.2f}x off (target: within 1.5x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "cifar10"])
    parser.add_argument("--quick", action="store_true", help="smaller jobs (a smoke run)")
    parser.add_argument("--only", help="comma-separated labels to run (the model is trained "
                        "first in any case), e.g. 'audit fast'")
    parser.add_argument("--show", action="store_true", help="print each estimate line")
    parser.add_argument("--resumed", action="store_true", help="stop each evaluation job "
                        "part-way and compare its resume's estimate with the resume's time")
    parser.add_argument("--stop-at", type=float, default=0.4,
                        help="the share of the work done when the job is stopped")
    opts = parser.parse_args()
    os.environ["ROBUSTLAB_ARTIFACTS"] = tempfile.mkdtemp(prefix="robustlab-estimates-")
    from core.jobs.store import RunStore

    print(f"estimates against actual times, {opts.dataset}, {machine()}")
    model, rows = None, []
    if opts.resumed:
        model, *_ = run(commands(opts.dataset, opts.quick)[0][1])
        resumed_main(opts, model)
        return
    print(f"{'command':16} {'estimate':>9} {'actual':>8} {'ratio':>6}")
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
