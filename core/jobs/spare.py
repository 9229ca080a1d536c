"""A spare worker: the next job's worker process, started ahead of need with torch and the
jobs' code already imported, waiting on its standard input for the run it is to execute.

A worker started for a job pays its imports first (2 s on an idle 2-core machine, 4-6 s beside
other work); a process that launches jobs (the dashboard's server, a reproduction) keeps one
spare so that a launched job starts computing at once. A spare is bound to the environment and
folder it was started with: a launch under another environment starts a worker of its own.
A spare whose launcher exits sees its input close and exits without doing anything; a job
handed to it survives the launcher, like any worker.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

from core.paths import PROJECT_ROOT

_lock = threading.Lock()
_spare: tuple[subprocess.Popen, dict] | None = None  # (process, environment it was started in)


def environment(db_path: Path) -> dict[str, str]:
    """The environment a worker of the run store at ``db_path`` runs in."""
    env = dict(os.environ, ROBUSTLAB_DB=str(db_path), PYTHONUNBUFFERED="1")
    # Workers often run beside each other and the dashboard: OpenMP threads that spin while
    # they wait take the cores the others need (three trainings at once on 2 cores: 16.3 s
    # spinning, 10.3 s passive; one alone: about 6% slower). Same thread count, same numbers.
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


def enabled() -> bool:
    """Whether this process keeps a spare (``ROBUSTLAB_SPARE_WORKER=0`` turns it off)."""
    return os.environ.get("ROBUSTLAB_SPARE_WORKER", "1") != "0"


def spawn(env: dict[str, str], stdin=subprocess.DEVNULL, stdout=None,
          argv: list[str] | None = None) -> subprocess.Popen:
    """A detached, lower-priority worker process (it survives the caller, whose
    responsiveness it must not take)."""
    return subprocess.Popen([sys.executable, "-m", "core.jobs.worker", *(argv or ["--spare"])],
                            cwd=str(PROJECT_ROOT), stdin=stdin, stdout=stdout,
                            stderr=subprocess.STDOUT, env=env, start_new_session=True,
                            preexec_fn=lambda: os.nice(5))


def prepare(env: dict[str, str]) -> None:
    """Start a spare for ``env`` unless a live one for it is waiting."""
    global _spare
    if not enabled():
        return
    with _lock:
        if _spare is not None and _spare[0].poll() is None and _spare[1] == env:
            return
        _retire()
        _spare = (spawn(env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL), dict(env))


def waiting() -> int | None:
    """The pid of the spare waiting in this process, if one is alive."""
    with _lock:
        return _spare[0].pid if _spare is not None and _spare[0].poll() is None else None


def hand(env: dict[str, str], argv: list[str], log_path: Path) -> int | None:
    """Give the job ``argv`` (the worker's arguments) to the waiting spare if it was started
    in ``env``; its pid, or None when there is no such spare (the caller starts a worker)."""
    global _spare
    with _lock:
        if _spare is None or _spare[1] != env or _spare[0].poll() is not None:
            _retire()
            return None
        proc, _ = _spare
        _spare = None
    try:
        proc.stdin.write(json.dumps({"argv": argv, "log": str(log_path)}).encode() + b"\n")
        proc.stdin.close()
    except (BrokenPipeError, OSError):  # it died between the check and the hand-over
        return None
    return proc.pid


def _retire() -> None:
    """Close the current spare's input: it exits without running anything."""
    global _spare
    if _spare is not None:
        try:
            _spare[0].stdin.close()
        except OSError:
            pass  # already gone: nothing to retire
        _spare = None


def wait_for_job() -> tuple[list[str], str] | None:
    """In the spare: import what every job needs, then wait for the job; its worker arguments
    and log file, or None when the launcher went away first."""
    from core.jobs import kinds, reproduce, study  # noqa: F401  (the imports are the point)

    line = sys.stdin.readline()
    if not line.strip():
        return None
    order = json.loads(line)
    return order["argv"], order["log"]


def redirect_output(log_path: str) -> None:
    """Send this process's standard output and error to the job's log, as a worker started
    for the job writes them."""
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
