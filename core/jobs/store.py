"""The run store: an embedded SQLite database in WAL mode under ``artifacts/``.

Workers, the dashboard and the CLI each open their own connection; WAL lets readers proceed
while one writer commits, and a generous busy timeout absorbs writer contention.
"""
from __future__ import annotations

import dataclasses
import json
import os
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from core.checks import a_kind, clean_name, clean_tag
from core.paths import (EnvironmentProblem, artifacts_root, InputError, check_run_id,
                        environment_problem, runs_root)

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
KINDS = ("train", "evaluate", "attack", "sweep", "grid", "reproduce", "audit", "study",
         "curve", "import")
MODEL_KINDS = ("train", "import")  # runs that hold a model the other jobs take
STALE_AFTER_S = 15.0
QUEUED_TIMEOUT_S = 60.0

_ID_TRIES = 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, parent TEXT,
    name TEXT, config TEXT NOT NULL, summary TEXT, warnings TEXT NOT NULL DEFAULT '[]',
    created REAL NOT NULL, started REAL, finished REAL, heartbeat REAL, pid INTEGER,
    error TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0, owner TEXT,
    tags TEXT NOT NULL DEFAULT '[]', resumed REAL, earlier REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS metrics (
    run TEXT NOT NULL, step INTEGER, epoch INTEGER, name TEXT NOT NULL, value REAL,
    time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run, name);
CREATE INDEX IF NOT EXISTS runs_parent ON runs(parent);
"""


# Leaving a finished state (a resume) adds the session that ended to ``earlier``; SQLite
# evaluates every right-hand side on the old row, so ``finished`` can be cleared alongside.
_FOLD = ("earlier = earlier + CASE WHEN finished IS NULL THEN 0 "
         "ELSE finished - COALESCE(resumed, started, finished) END")


def database_path() -> Path:
    """The run database, ``runs.db`` in the artifacts folder (not made here: a broken folder
    is reported by whoever opens the database)."""
    return artifacts_root() / "runs.db"


def busy_timeout_s() -> float:
    """Seconds a write waits for another writer (``ROBUSTLAB_DB_TIMEOUT``, default 60)."""
    return float(os.environ.get("ROBUSTLAB_DB_TIMEOUT", "60"))


class RunNotFound(InputError):
    """No run with that id."""


class RunBusy(InputError):
    """Another process holds the run's lease (it is its one writer)."""


@dataclass
class Run:
    """One row of the runs table, with JSON columns decoded."""

    id: str
    kind: str
    status: str
    parent: str | None
    name: str | None
    config: dict
    summary: dict | None
    warnings: list
    created: float
    started: float | None
    finished: float | None
    heartbeat: float | None
    pid: int | None
    error: str | None
    cancel_requested: bool
    owner: str | None = None
    tags: list = field(default_factory=list)
    resumed: float | None = None
    earlier: float = 0.0

    @property
    def duration(self) -> float | None:
        """Seconds spent running: the sessions before a resume plus the latest one (to now
        while running), not the time a cancelled run sat waiting to be resumed."""
        if self.started is None:
            return None
        return self.earlier + (self.finished or time.time()) - (self.resumed or self.started)


class RunStore:
    """Access to the runs and metrics tables; safe to use from several processes at once."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path else database_path()
        try:
            self._open()
        except (OSError, sqlite3.Error) as err:
            line = environment_problem(err, self.path)
            if line is None:
                raise
            raise EnvironmentProblem(line) from err

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        timeout = busy_timeout_s()
        self._conn = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None,
                                     check_same_thread=False)
        self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_SCHEMA)
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(runs)")}
        if "owner" not in columns:  # a database written before leases existed
            self._conn.execute("ALTER TABLE runs ADD COLUMN owner TEXT")
        if "tags" not in columns:  # ... or before tags
            self._conn.execute("ALTER TABLE runs ADD COLUMN tags TEXT NOT NULL DEFAULT '[]'")
        if "resumed" not in columns:  # ... or before resumed runs' durations were kept
            self._conn.execute("ALTER TABLE runs ADD COLUMN resumed REAL")
            self._conn.execute("ALTER TABLE runs ADD COLUMN earlier REAL NOT NULL DEFAULT 0")

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    def _write(self, sql: str, params: Iterable[Any] = ()) -> None:
        # BEGIN IMMEDIATE takes the write lock up front, so the busy timeout applies instead of
        # a deadlock-style SQLITE_BUSY on lock upgrade.
        with self._lock():
            self._conn.execute(sql, tuple(params))

    def _end_transaction(self, how: str) -> None:
        if self._conn.in_transaction:
            self._conn.execute(how)

    def _lock(self):
        store = self

        class _Tx:
            # A stop (SIGINT, SIGTERM) raises wherever the main thread is: were it raised here
            # between BEGIN and the block, or before COMMIT, the write lock would stay held and
            # every other process's write (the heartbeat's, the cancelled status) would wait.
            def __enter__(self):
                try:
                    store._conn.execute("BEGIN IMMEDIATE")
                except BaseException:
                    store._end_transaction("ROLLBACK")
                    raise

            def __exit__(self, exc_type, *_):
                try:
                    store._conn.execute("ROLLBACK" if exc_type else "COMMIT")
                finally:
                    store._end_transaction("ROLLBACK")

        return _Tx()

    def create_run(self, kind: str, config: dict, parent: str | None = None,
                   name: str | None = None, status: str = "queued") -> str:
        """Insert a run and return its new id."""
        name = clean_name(name)
        if kind not in KINDS:
            raise InputError(f"unknown run kind {kind!r}; valid kinds: {', '.join(KINDS)}")
        # Six hex digits keep ids readable; hundreds of runs in one second (scripts, tests)
        # can still draw the same suffix, so a taken id is redrawn rather than failing.
        for _ in range(_ID_TRIES):
            run_id = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
            try:
                self._write(
                    "INSERT INTO runs (id, kind, status, parent, name, config, created) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (run_id, kind, status, parent, name, json.dumps(config), time.time()),
                )
            except sqlite3.IntegrityError as err:
                if "runs.id" not in str(err):
                    raise
                continue
            return run_id
        raise RuntimeError(f"no free run id after {_ID_TRIES} tries; is the clock stuck?")

    def get(self, run_id: str) -> Run:
        """Fetch one run, raising RunNotFound with a clear message when absent."""
        check_run_id(run_id)
        rows = self._runs("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            raise RunNotFound(self._not_found(run_id))
        return rows[0]

    def _not_found(self, run_id: str) -> str:
        """'no run with id X', naming the runs X is the start or the end of, if any."""
        like = run_id.replace("%", "").replace("_", "")
        found = [r[0] for r in self._conn.execute(
            "SELECT id FROM runs WHERE id LIKE ? OR id LIKE ? ORDER BY created DESC LIMIT 6",
            (f"{like}%", f"%{like}"))]
        if len(found) == 1:
            return f"no run with id {run_id!r}; did you mean {found[0]}?"
        if found:
            return (f"no run with id {run_id!r}; it matches {', '.join(found[:5])}"
                    + (" and more" if len(found) > 5 else "") + "; give the whole id")
        return f"no run with id {run_id!r}; list runs with `python -m core runs`"

    def list_runs(self, kind: str | None = None, parent: str | None = None,
                  status: str | None = None, model_run: str | None = None) -> list[Run]:
        """Runs, newest first, optionally filtered. ``model_run``: the jobs on that model,
        whoever started them (a study's audit has the study as its parent)."""
        sql, params = "SELECT * FROM runs WHERE 1=1", []
        for col, val in (("kind", kind), ("parent", parent), ("status", status),
                         ("json_extract(config, '$.model_run')", model_run)):
            if val is not None:
                sql += f" AND {col} = ?"
                params.append(val)
        return self._runs(sql + " ORDER BY created DESC", params)

    def _runs(self, sql: str, params) -> list[Run]:
        cursor = self._conn.execute(sql, tuple(params))
        cols = [d[0] for d in cursor.description]
        return [self._to_run(dict(zip(cols, row))) for row in cursor.fetchall()]

    @staticmethod
    def _to_run(rec: dict) -> Run:
        for key in ("config", "summary", "warnings", "tags"):
            rec[key] = json.loads(rec[key]) if rec.get(key) else None
        rec["warnings"] = rec["warnings"] or []
        rec["tags"] = rec["tags"] or []
        rec["cancel_requested"] = bool(rec["cancel_requested"])
        return Run(**rec)

    def set_status(self, run_id: str, status: str, error: str | None = None) -> None:
        """Move a run to ``status``, stamping start/finish times."""
        if status not in STATUSES:
            raise InputError(f"unknown status {status!r}; valid: {', '.join(STATUSES)}")
        now = time.time()
        if status == "running":
            self._write(f"UPDATE runs SET status=?, {_FOLD}, resumed=?, "
                        "started=COALESCE(started, ?), heartbeat=?, pid=?, error=NULL, "
                        "finished=NULL WHERE id=?",
                        (status, now, now, now, os.getpid(), run_id))
        elif status == "queued":
            self._write(f"UPDATE runs SET status=?, {_FOLD}, error=NULL, finished=NULL, "
                        "cancel_requested=0 WHERE id=?", (status, run_id))
        else:
            self._write("UPDATE runs SET status=?, finished=?, error=? WHERE id=?",
                        (status, now, error, run_id))

    def heartbeat(self, run_id: str, owner: str | None = None) -> None:
        """Record that the run's worker (the lease holder, when ``owner`` is given) is alive."""
        if owner is None:
            self._write("UPDATE runs SET heartbeat=? WHERE id=?", (time.time(), run_id))
        else:
            self._write("UPDATE runs SET heartbeat=? WHERE id=? AND owner=?",
                        (time.time(), run_id, owner))

    def acquire(self, run_id: str, owner: str, stale_after_s: float = STALE_AFTER_S) -> None:
        """Take the run's lease: this process becomes its one writer. Refused with RunBusy
        while another live process holds it (a lease whose holder stopped beating for
        ``stale_after_s`` or died is taken over)."""
        now = time.time()
        with self._lock():
            row = self._conn.execute("SELECT owner, heartbeat, pid FROM runs WHERE id=?",
                                     (run_id,)).fetchone()
            if row is None:
                raise RunNotFound(f"no run with id {run_id!r}")
            holder, beat, pid = row
            alive = pid is not None and _pid_alive(pid)
            if holder and holder != owner and alive and beat and now - beat < stale_after_s:
                raise RunBusy(f"run {run_id} is already being run by process {pid} (last "
                              f"heartbeat {now - beat:.0f} s ago); a run has one writer: wait "
                              f"for it, or stop it with `python -m core cancel {run_id}`")
            self._conn.execute("UPDATE runs SET owner=?, pid=?, heartbeat=? WHERE id=?",
                               (owner, os.getpid(), now, run_id))

    def release(self, run_id: str, owner: str) -> None:
        """Give the lease back (only its holder can)."""
        self._write("UPDATE runs SET owner=NULL WHERE id=? AND owner=?", (run_id, owner))

    def set_summary(self, run_id: str, summary: dict) -> None:
        """Store the run's result summary (JSON)."""
        self._write("UPDATE runs SET summary=? WHERE id=?", (json.dumps(summary), run_id))

    def update_config(self, run_id: str, config: dict) -> None:
        """Replace the run's config (used when a worker fills in resolved defaults)."""
        self._write("UPDATE runs SET config=? WHERE id=?", (json.dumps(config), run_id))

    def rename(self, run_id: str, name: str | None) -> None:
        """Give the run a name (None or blank clears it)."""
        name = clean_name(name)
        self.get(run_id)
        self._write("UPDATE runs SET name=? WHERE id=?", (name, run_id))

    def set_tags(self, run_id: str, tags: Iterable[str]) -> list[str]:
        """Replace the run's tags (short words to group runs by, such as "baseline"); returns
        them cleaned: trimmed, lower-case, without blanks or repeats, in the order given."""
        self.get(run_id)
        clean: list[str] = []
        for tag in tags:
            if not str(tag).strip():
                continue
            tag = clean_tag(tag)
            if tag not in clean:
                clean.append(tag)
        self._write("UPDATE runs SET tags=? WHERE id=?", (json.dumps(clean), run_id))
        return clean

    def delete(self, run_id: str) -> list[str]:
        """Remove a finished run and, recursively, the runs it started or that belong to it
        (its evaluations, attacks, audits); returns the ids removed, the run's first. Their
        folders are the caller's to remove. A queued or running run is refused."""
        run = self.get(run_id)
        if run.status in ("queued", "running"):
            raise InputError(f"run {run_id} is {run.status}; cancel it before deleting it")
        ids = [run_id]
        for child in self.list_runs(parent=run_id):
            ids += self.delete(child.id)
        with self._lock():
            self._conn.execute("DELETE FROM metrics WHERE run=?", (run_id,))
            self._conn.execute("DELETE FROM runs WHERE id=?", (run_id,))
        return ids

    def add_warning(self, run_id: str, message: str) -> None:
        """Append a warning to the run (shown beside its results)."""
        warnings = self.get(run_id).warnings
        if message not in warnings:
            warnings.append(message)
            self._write("UPDATE runs SET warnings=? WHERE id=?", (json.dumps(warnings), run_id))

    def request_cancel(self, run_id: str) -> bool:
        """Ask a queued or running run's worker to stop; False (and no change) when the run
        has already finished."""
        self.get(run_id)
        with self._lock():
            changed = self._conn.execute(
                "UPDATE runs SET cancel_requested=1 WHERE id=? AND status IN "
                "('queued', 'running')", (run_id,)).rowcount
        return bool(changed)

    def cancel_requested(self, run_id: str) -> bool:
        """Whether a cancel was requested for the run."""
        row = self._conn.execute("SELECT cancel_requested FROM runs WHERE id=?",
                                 (run_id,)).fetchone()
        return bool(row and row[0])

    def log_metrics(self, run_id: str, rows: Iterable[tuple[int | None, int | None, str, float]]
                    ) -> None:
        """Append metric rows (step, epoch, name, value) in one transaction."""
        now = time.time()
        data = [(run_id, s, e, n, float(v), now) for s, e, n, v in rows]
        if not data:
            return
        with self._lock():
            self._conn.executemany(
                "INSERT INTO metrics (run, step, epoch, name, value, time) VALUES (?,?,?,?,?,?)",
                data)

    def metrics(self, run_id: str, names: Iterable[str] | None = None) -> list[dict]:
        """Metric rows of a run as dicts, in insertion order."""
        sql, params = "SELECT step, epoch, name, value, time FROM metrics WHERE run=?", [run_id]
        if names is not None:
            names = list(names)
            sql += f" AND name IN ({','.join('?' * len(names))})"
            params += names
        rows = self._conn.execute(sql + " ORDER BY rowid", params).fetchall()
        return [dict(zip(("step", "epoch", "name", "value", "time"), r)) for r in rows]

    def count_metrics(self, run_id: str) -> int:
        """Number of metric rows of a run."""
        return self._conn.execute("SELECT COUNT(*) FROM metrics WHERE run=?",
                                  (run_id,)).fetchone()[0]

    def clear_metrics_after(self, run_id: str, epoch: int) -> None:
        """Drop metrics logged after ``epoch`` (a resumed run re-logs them)."""
        self._write("DELETE FROM metrics WHERE run=? AND epoch>?", (run_id, epoch))

    def mark_stale(self, stale_after_s: float = STALE_AFTER_S) -> list[str]:
        """Mark running runs whose worker stopped beating (or died) as failed; return their
        ids. On a full disk nothing can be marked, and reading goes on (``runs``, ``show`` and
        the pages still work)."""
        try:
            return self._mark_stale(stale_after_s)
        except sqlite3.OperationalError as err:
            if "full" in str(err).lower():
                return []
            raise

    def _mark_stale(self, stale_after_s: float) -> list[str]:
        now, stale = time.time(), []
        for run in self.list_runs(status="running"):
            dead = run.pid is not None and not _pid_alive(run.pid)
            silent = run.heartbeat is not None and now - run.heartbeat > stale_after_s
            if dead or silent:
                self.set_status(run.id, "failed", error=(
                    "worker stopped unexpectedly (no heartbeat for "
                    f"{now - (run.heartbeat or now):.0f} s)" + _disk_hint() + "; " +
                    restart_hint(run)))
                self._write("UPDATE runs SET owner=NULL WHERE id=?", (run.id,))
                stale.append(run.id)
        for run in self.list_runs(status="queued"):
            if run.pid is None and now - run.created > QUEUED_TIMEOUT_S:
                self.set_status(run.id, "failed", error=(
                    f"no worker picked this run up within {QUEUED_TIMEOUT_S:.0f} s; launch it "
                    "again"))
                stale.append(run.id)
        return stale


def _disk_hint(low: int = 1 << 20) -> str:
    """', probably because the disk holding the artifacts is full (N kB free)' when it is
    nearly so: a worker that cannot write its heartbeat or its failure stops silently."""
    import shutil

    try:
        free = shutil.disk_usage(artifacts_root()).free
    except OSError:
        return ""
    return (f", probably because the disk holding {artifacts_root()} is full ({free // 1024:,} kB "
            "free)") if free < low else ""


def has_checkpoint(run: Run) -> bool:
    """Whether a training run saved a checkpoint it can resume from."""
    return run.kind == "train" and (runs_root() / run.id / "checkpoint.safetensors").exists()


PARENT_KINDS = ("reproduce", "study")  # jobs made of child jobs
# jobs that keep their finished batches (core.jobs.ledger) or grid points as they go
LEDGER_KINDS = ("audit", "sweep", "grid", "curve")
RESUMABLE = ("train",) + LEDGER_KINDS + PARENT_KINDS


def resume_refusal(run: Run) -> str | None:
    """Why ``run`` cannot be resumed, or None when it can: a failed or cancelled training run
    with a checkpoint, an audit, sweep or grid (it continues from its finished batches), or a
    study made of child jobs (the one rule, for the CLI and the dashboard)."""
    if run.kind == "import":
        return (f"run {run.id} is an imported model: it cannot be trained or resumed (import "
                "the file again to replace it)")
    if run.kind not in RESUMABLE:
        return (f"run {run.id} is {a_kind(run.kind)}; only {', '.join(RESUMABLE[:-1])} and "
                f"{RESUMABLE[-1]} runs resume (start it again instead)")
    if run.status not in ("failed", "cancelled"):
        return (f"run {run.id} is {run.status}; only failed or cancelled runs can be resumed")
    if run.kind in PARENT_KINDS + LEDGER_KINDS:
        return None  # its finished child jobs, batches or points are kept and reused
    if not has_checkpoint(run):
        return (f"run {run.id} stopped before its first checkpoint (end of epoch 1), so there "
                "is nothing to resume; start it again (Clone into form on the Train page)")
    return None


def restart_hint(run: Run) -> str:
    """What a user can do with a stopped run: resume it, or start it again."""
    if resume_refusal(dataclasses.replace(run, status="failed")) is None:
        return f"resume it with `python -m core resume {run.id}`"
    return "start it again (it cannot be resumed)"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) is dead for our purposes
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
