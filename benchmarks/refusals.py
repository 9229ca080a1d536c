"""How fast the command line refuses bad input, and whether torch loaded first.

Each refusal runs as a user types it (``python -m core ...``, a fresh process) in a scratch
artifacts folder holding the runs it needs (made directly in the store: no training). Printed
per case: the median wall time of ``--repeats`` runs, the exit status, the one error line,
whether torch was imported before the refusal, and the ratio to a flag error (argparse's own
refusal, the floor). The target (issue 24): every refusal that needs only the store or the
file system under 1 s.

    python benchmarks/refusals.py [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PROBE = ("import sys; from core.app.cli import main; rc = main(sys.argv[1:]); "
         "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', "
         "file=sys.stderr); sys.exit(rc)")


def scratch_store(folder: Path) -> dict[str, str]:
    """Runs the refusals point at: an evaluation, a running training, a training without
    weights."""
    os.environ["ROBUSTLAB_ARTIFACTS"] = str(folder)
    from core.jobs.store import RunStore

    store = RunStore()
    config = {"dataset": "mnist", "epochs": 1}
    ids = {"evaluation": store.create_run("evaluate", {"model_run": "x"}),
           "running": store.create_run("train", config),
           "no weights": store.create_run("train", config)}
    store.set_status(ids["running"], "running")
    store.heartbeat(ids["running"], "benchmark")
    store.set_status(ids["no weights"], "failed", error="stopped before its first checkpoint")
    return ids


def cases(ids: dict[str, str], a_file: str) -> list[tuple[str, list[str]]]:
    return [
        ("flag error (argparse)", ["attack", "x", "--attack", "nope"]),
        ("bad value (spec check)", ["attack", ids["no weights"], "--attack", "fgsm", "--eps",
                                    "-0.1"]),
        ("no such run", ["evaluate", "no-such-run"]),
        ("run of the wrong kind", ["attack", ids["evaluation"], "--attack", "fgsm"]),
        ("model without weights", ["audit", ids["no weights"], "--eps", "0.1"]),
        ("resume a running run", ["resume", ids["running"]]),
        ("data folder is a file", ["train", "--dataset", "mnist", "--data-dir", a_file]),
        ("image folder missing", ["train", "--dataset", "imagefolder:/no/such/folder"]),
    ]


def timed(args: list[str], repeats: int) -> tuple[float, subprocess.CompletedProcess]:
    times, done = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT,
                              capture_output=True, text=True, env=dict(os.environ))
        times.append(time.perf_counter() - start)
    return statistics.median(times), done


def torch_loaded(args: list[str]) -> str:
    done = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ))
    return "yes" if "torch loaded" in done.stderr.splitlines()[-1:] else "no"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        ids = scratch_store(Path(folder))
        a_file = str(Path(folder) / "runs.db")
        print(f"refusals of `python -m core`, median of {args.repeats}, {os.cpu_count()} cores")
        print(f"{'case':<26} {'seconds':>8} {'x flag':>7} {'exit':>5} {'torch':>6}  message")
        floor = None
        for name, argv in cases(ids, a_file):
            seconds, done = timed(argv, args.repeats)
            floor = floor or seconds
            lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
            message = lines[-1] if lines else "(nothing on stderr)"
            print(f"{name:<26} {seconds:>8.2f} {seconds / floor:>7.1f} {done.returncode:>5} "
                  f"{torch_loaded(argv):>6}  {message[:90]}"
                  + ("" if len(lines) == 1 else f"  [{len(lines)} lines]"), flush=True)


if __name__ == "__main__":
    main()
