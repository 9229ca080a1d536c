"""Background jobs: each long task runs in its own worker process (``python -m core worker``)
that writes to the run store and beats a heartbeat; anyone can launch, watch or cancel it."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Callable

from .paths import PROJECT_ROOT, InputError, run_dir
from .store import RunStore

log = logging.getLogger(__name__)
HEARTBEAT_S = 2.0
Handler = Callable[[RunStore, str, bool, bool], dict]


class Heartbeat:
    """A thread in the worker process that stamps the run's heartbeat every few seconds."""

    def __init__(self, db_path: Path, run_id: str, every_s: float = HEARTBEAT_S) -> None:
        self.db_path, self.run_id, self.every_s = db_path, run_id, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        store = RunStore(self.db_path)
        try:
            while not self._stop.wait(self.every_s):
                store.heartbeat(self.run_id)
        finally:
            store.close()

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _handlers() -> dict[str, Handler]:
    from . import tasks

    return {"train": tasks.train_task, "sweep": tasks.sweep_task, "attack": tasks.attack_task,
            "evaluate": tasks.evaluate_task, "reproduce": tasks.reproduce_task,
            "grid": tasks.grid_task}


def run_job(store: RunStore, run_id: str, resume: bool = False, progress: bool = True) -> dict:
    """Run a stored job in this process: mark it running, heartbeat, dispatch, record outcome."""
    from .training import Cancelled

    run = store.get(run_id)
    handler = _handlers()[run.kind]
    store.set_status(run_id, "running")
    try:
        with Heartbeat(store.path, run_id):
            result = handler(store, run_id, resume, progress)
    except Cancelled:
        store.set_status(run_id, "cancelled", error="cancelled by request; resume to continue")
        raise
    except BaseException as err:  # record every failure on the run, then let it propagate
        store.set_status(run_id, "failed", error=f"{type(err).__name__}: {err}")
        raise
    store.set_status(run_id, "completed")
    return result


def launch(store: RunStore, kind: str, config: dict, parent: str | None = None,
           name: str | None = None) -> str:
    """Create a queued run and start its worker process; return the run id."""
    run_id = store.create_run(kind, config, parent=parent, name=name)
    start_worker(store, run_id)
    return run_id


def start_worker(store: RunStore, run_id: str, resume: bool = False) -> int:
    """Spawn a detached worker for ``run_id`` (survives the caller, e.g. the dashboard)."""
    log_path = run_dir(run_id) / "worker.log"
    cmd = [sys.executable, "-m", "core", "worker", run_id]
    if resume:
        cmd.append("--resume")
    env = dict(os.environ, ROBUSTLAB_DB=str(store.path), PYTHONUNBUFFERED="1")
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(cmd, cwd=str(PROJECT_ROOT), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return proc.pid


def resume(store: RunStore, run_id: str) -> None:
    """Continue a failed or cancelled training run from its last checkpoint in a new worker."""
    run = store.get(run_id)
    if run.kind != "train":
        raise InputError(f"only training runs can be resumed; {run_id} is a {run.kind} run")
    if run.status in ("running", "queued"):
        raise InputError(f"run {run_id} is {run.status}; only failed or cancelled runs resume")
    if not (run_dir(run_id) / "checkpoint.safetensors").exists():
        raise InputError(f"run {run_id} has no checkpoint yet (it stopped in its first epoch); "
                         "clone it into a new run instead")
    store.set_status(run_id, "queued")
    start_worker(store, run_id, resume=True)


def worker_main(run_id: str, resume_flag: bool = False) -> int:
    """Entry point of ``python -m core worker RUN``."""
    from .training import Cancelled

    store = RunStore(os.environ.get("ROBUSTLAB_DB") or None)
    try:
        run_job(store, run_id, resume=resume_flag, progress=False)
    except Cancelled:
        return 0
    except BaseException:  # the error is already in the run store; keep the trace in the log
        traceback.print_exc()
        return 1
    finally:
        store.close()
    return 0
