"""The one runner: every job, whoever starts it (CLI, dashboard, ``reproduce``, torchrun,
tests), goes through :func:`submit` or :func:`create` and then :func:`execute`.

``create`` validates the spec (already done on construction), checks what the job refers to
(the model run, the data) and only then writes the run row, so bad input leaves nothing behind.
``execute`` takes the run's lease (one writer per run), marks it running, beats a heartbeat,
turns SIGINT and SIGTERM into a ``cancelled`` run, reports progress, and records the outcome.
``submit`` does the same in a detached worker process (``python -m core.jobs.worker RUN``).
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from core import distributed
from core.cancellation import STATE as CANCEL
from core.checks import clean_name
from core.cancellation import Cancelled
from core.paths import InputError, environment_problem, run_dir, runs_root
from core.progress import Progress, Quiet
from core.jobs import spare
from core.jobs.preflight import preflight
from core.jobs.specs import Spec, spec_from_config
from core.jobs.store import Run, RunStore, restart_hint, resume_refusal

HEARTBEAT_S = 2.0


@dataclass
class JobContext:
    """What a job function gets: its spec, where to write, how to report and nest."""

    spec: Spec
    store: RunStore | None
    run_id: str | None
    progress: Progress
    resume: bool = False
    rank: distributed.Context = field(default_factory=distributed.Context)
    # child jobs that did work in this process (a resume's reused ones do not count), so a
    # parent can leave instant reuses out of its rate and time left
    children_run: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process) writes files and the store."""
        return self.rank.is_main and self.store is not None

    @property
    def folder(self) -> Path:
        """The run's folder."""
        return run_dir(self.run_id)

    def warn(self, message: str) -> None:
        """Attach a warning to the run."""
        if self.is_main:
            self.store.add_warning(self.run_id, message)

    def say(self, text: str) -> None:
        """A line for the person watching (stderr)."""
        self.progress.say(text)

    def child(self, spec: Spec, name: str) -> tuple[str, dict]:
        """Run ``spec`` as a child run of this one, in this process, through the same runner
        (its own row, lease, heartbeat and status); return its id and summary. When this job
        resumes, a child with the same spec that completed is reused, and a stopped training
        child continues from its checkpoint."""
        earlier = self._earlier_child(spec) if self.resume else None
        if earlier is not None and earlier.status == "completed":
            self.say(f"run {earlier.id}: {spec.describe()} (done before the resume)")
            return earlier.id, earlier.summary
        if earlier is not None and resume_refusal(earlier) is None:
            reopen(self.store, earlier.id)
            self.say(f"run {earlier.id}: {spec.describe()} (resumed from its checkpoint)")
            self.children_run += 1
            return earlier.id, execute(self.store, earlier.id, resume=True,
                                       echo=self.progress.enabled)
        run_id = create(self.store, spec, parent=self.run_id, name=name)
        self.say(f"run {run_id}: {spec.describe()}")
        self.children_run += 1
        return run_id, execute(self.store, run_id, echo=self.progress.enabled)

    def in_turn(self, pieces: list, unit: str, run_one: Callable[[Any], Any]) -> list:
        """``run_one`` on each piece in order (a piece runs child jobs), progress counted in
        ``unit``; return the results. A piece that a resume reused whole ran no child job: the
        rate restarts after it, so the time left comes from real work, not instant reuses."""
        self.progress.start(len(pieces), unit)
        results = []
        for done, piece in enumerate(pieces, 1):
            ran = self.children_run
            results.append(run_one(piece))
            if self.children_run == ran:
                self.progress.start(len(pieces), unit, done=done)
            self.progress.update(done)
        return results

    def _earlier_child(self, spec: Spec) -> Run | None:
        """The newest child of this run with exactly ``spec`` (its stored JSON form)."""
        config = json.loads(json.dumps(spec.to_dict()))
        same = [r for r in self.store.list_runs(kind=spec.kind, parent=self.run_id)
                if r.config == config]
        return same[0] if same else None


class _Heartbeat:
    """A thread that stamps the run's heartbeat, delivers a cancel found in the store, and
    prints the plain progress line when it is due."""

    def __init__(self, db_path: Path, run_id: str, owner: str, progress: Progress) -> None:
        self.db_path, self.run_id, self.owner, self.progress = db_path, run_id, owner, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        store = RunStore(self.db_path)
        try:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    store.heartbeat(self.run_id, self.owner)
                    if store.cancel_requested(self.run_id):
                        CANCEL.request("cancel requested")
                except (sqlite3.Error, OSError) as err:
                    # a full disk: the job meets it too and fails with one line; a traceback
                    # from this thread would only come before that line. Beat again later.
                    self.problem = environment_problem(err, self.db_path) or str(err)
                self.progress.tick()
        finally:
            store.close()

    problem: str | None = None  # why the last heartbeat could not be written

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def create(store: RunStore, spec: Spec, parent: str | None = None,
           name: str | None = None) -> str:
    """Check ``spec``'s references and data, then create its queued run; return the id."""
    clean_name(name)  # before the data loads: a bad name is refused at once
    spec.validate()
    preflight(store, spec)
    # a job on a model belongs to that model unless a parent job started it: the dashboard
    # then finds the evaluations and audits started from the CLI too
    parent = parent if parent is not None else getattr(spec, "model_run", None)
    return store.create_run(spec.kind, spec.to_dict(), parent=parent, name=name)


def _jobs() -> dict[str, Callable[[JobContext], dict]]:
    from core.jobs import kinds as jobs
    from core.jobs import reproduce
    from core.jobs import study

    return {"train": jobs.train, "evaluate": jobs.evaluate, "attack": jobs.attack,
            "sweep": jobs.sweep, "grid": jobs.grid, "reproduce": reproduce.reproduce,
            "audit": jobs.audit, "study": study.study, "curve": jobs.curve,
            "import": jobs.import_model}


def execute(store: RunStore, run_id: str, resume: bool = False, echo: bool = True) -> dict:
    """Run a stored job in this process under its lease; return its summary. A stop request
    (SIGINT, SIGTERM, ``cancel``) raises Cancelled after marking the run ``cancelled``."""
    run = store.get(run_id)
    spec = spec_from_config(run.kind, run.config)
    owner = f"{os.getpid()}-{secrets.token_hex(4)}"
    store.acquire(run_id, owner)
    outermost = CANCEL.install(immediate=distributed.current().world == 1)
    immediate = CANCEL.immediate
    progress = Progress(run.kind, store, run_id, enabled=echo)
    try:
        store.set_status(run_id, "running")
        ctx = JobContext(spec, store, run_id, progress, resume, distributed.current())
        with _Heartbeat(store.path, run_id, owner, progress):
            summary = _jobs()[run.kind](ctx)
        CANCEL.immediate = False  # from here on a late signal must not interrupt bookkeeping
        store.set_status(run_id, "completed")
        return summary
    except Cancelled as err:
        store.set_status(run_id, "cancelled", error=_cancel_message(store.get(run_id), err))
        _drop_empty_folder(run_id)
        raise
    except BaseException as err:  # record every failure on the run, then let it propagate
        store.set_status(run_id, "failed", error=f"{type(err).__name__}: {err}")
        _drop_empty_folder(run_id)
        raise
    finally:
        progress.close()
        store.release(run_id, owner)
        CANCEL.immediate = immediate
        if outermost:
            CANCEL.uninstall()


def _drop_empty_folder(run_id: str) -> None:
    """A run stopped before it wrote anything leaves no empty folder behind."""
    folder = runs_root() / run_id
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _cancel_message(run: Run, err: Cancelled) -> str:
    why = str(err) or "cancel requested"
    return f"cancelled ({why}); " + restart_hint(run)


def follow(spec: Spec) -> dict:
    """A torchrun rank other than 0: compute this rank's share of a job; rank 0 writes."""
    ctx = JobContext(spec, None, None, Quiet(), rank=distributed.current())
    return _jobs()[spec.kind](ctx)


def submit(store: RunStore, spec: Spec, parent: str | None = None,
           name: str | None = None, evaluate_after: bool = False) -> str:
    """Create the run and start a detached worker process for it; return the run id. With
    ``evaluate_after`` a training run's worker starts the clean evaluation of the finished
    model at once (the dashboard's Evaluate page then has it ready)."""
    run_id = create(store, spec, parent=parent, name=name)
    start_worker(store, run_id, evaluate_after=evaluate_after)
    return run_id


def start_worker(store: RunStore, run_id: str, resume: bool = False,
                 evaluate_after: bool = False) -> int:
    """Start a detached, lower-priority worker for ``run_id`` (it survives the caller, e.g.
    the dashboard server, whose responsiveness it must not take): the waiting spare when one
    was started in this environment, else a new process; then prepare the next spare."""
    log_path = run_dir(run_id) / "worker.log"
    argv = [run_id] + (["--resume"] if resume else []) + (
        ["--evaluate-after"] if evaluate_after else [])
    env = spare.environment(store.path)
    pid = spare.hand(env, argv, log_path)
    if pid is None:
        with open(log_path, "ab") as out:
            pid = spare.spawn(env, stdout=out, argv=argv).pid
    spare.prepare(env)
    return pid


def reopen(store: RunStore, run_id: str) -> Run:
    """Queue a failed or cancelled training run again for resuming (the one rule of
    :func:`core.jobs.store.resume_refusal`); clears the cancel request that stopped it."""
    store.mark_stale()
    run = store.get(run_id)
    refusal = resume_refusal(run)
    if refusal:
        raise InputError(refusal)
    store.set_status(run_id, "queued")
    return run


def resume_in_worker(store: RunStore, run_id: str, evaluate_after: bool = False) -> None:
    """Continue a failed or cancelled training run from its last checkpoint in a new worker."""
    reopen(store, run_id)
    start_worker(store, run_id, resume=True, evaluate_after=evaluate_after)


def _evaluate_finished_model(store: RunStore, run_id: str) -> None:
    """Start the clean evaluation of a completed training run's final weights on its whole
    test split, in a worker of its own."""
    from core.jobs.specs import EvaluateSpec

    run = store.get(run_id)
    if run.kind == "train" and run.status == "completed":
        submit(store, EvaluateSpec(model_run=run_id, data_dir=run.config.get("data_dir"),
                                   device=run.config.get("device", "auto")), parent=run_id)


def worker_main(argv: list[str]) -> int:
    """Entry point of ``python -m core.jobs.worker RUN [--resume]`` (or ``--spare``: wait
    for the run on standard input, :mod:`core.jobs.spare`)."""
    if argv[:1] == ["--spare"]:
        order = spare.wait_for_job()
        if order is None:
            return 0
        argv, log_path = order
        spare.redirect_output(log_path)
    # a worker launches at most the evaluation of its model: a spare would wait in vain
    os.environ["ROBUSTLAB_SPARE_WORKER"] = "0"
    run_id, resume = argv[0], "--resume" in argv[1:]
    store = RunStore(os.environ.get("ROBUSTLAB_DB") or None)
    try:
        execute(store, run_id, resume=resume)
        if "--evaluate-after" in argv[1:]:
            _evaluate_finished_model(store, run_id)
    except Cancelled:
        return 0
    except BaseException:  # the error is already in the run store; keep the trace in the log
        traceback.print_exc()
        return 1
    finally:
        store.close()
    return 0


def delete_run(store: RunStore, run_id: str) -> list[str]:
    """Delete a finished run, the runs that belong to it (evaluations, attacks, audits), and
    all their files; returns the ids removed."""
    import shutil

    ids = store.delete(run_id)
    for rid in ids:
        shutil.rmtree(run_dir(rid))  # run_dir makes the folder if a run never had one
    return ids
