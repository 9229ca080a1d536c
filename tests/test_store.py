import multiprocessing as mp
import time

import pytest

from core.paths import InputError, check_run_id
from core.jobs.store import RunNotFound, RunStore

WRITERS, BATCHES, ROWS = 2, 200, 5


def _writer(path: str, run_id: str, worker: int) -> None:
    store = RunStore(path)
    for b in range(BATCHES):
        store.log_metrics(run_id, [(b * ROWS + r, worker, "loss", float(r)) for r in range(ROWS)])
        store.heartbeat(run_id)


def test_two_processes_writing_at_once_lose_no_metric(tmp_path):
    path = tmp_path / "runs.db"
    store = RunStore(path)
    run_id = store.create_run("train", {})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(path), run_id, w)) for w in range(WRITERS)]
    for p in procs:
        p.start()
    reads = 0
    while any(p.is_alive() for p in procs):  # a reader polls like the dashboard
        store.metrics(run_id, ["loss"])
        reads += 1
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert store.count_metrics(run_id) == WRITERS * BATCHES * ROWS
    assert reads > 0
    assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_run_lifecycle_and_summary(tmp_path):
    store = RunStore(tmp_path / "r.db")
    rid = store.create_run("train", {"a": 1}, name="x")
    assert store.get(rid).status == "queued"
    store.set_status(rid, "running")
    store.set_summary(rid, {"acc": 0.5})
    store.add_warning(rid, "careful")
    store.set_status(rid, "completed")
    run = store.get(rid)
    assert run.status == "completed" and run.summary == {"acc": 0.5}
    assert run.warnings == ["careful"] and run.finished >= run.started
    assert [r.id for r in store.list_runs(kind="train")] == [rid]


def test_unknown_and_malicious_run_ids(tmp_path):
    store = RunStore(tmp_path / "r.db")
    with pytest.raises(RunNotFound, match="no run with id 'nope'"):
        store.get("nope")
    for bad in ("../etc", "a/b", "..", "", "x" * 200):
        with pytest.raises(InputError, match="invalid run id"):
            check_run_id(bad)


def test_stale_heartbeat_marks_failed(tmp_path):
    store = RunStore(tmp_path / "r.db")
    rid = store.create_run("train", {})
    store.set_status(rid, "running")
    store._conn.execute("UPDATE runs SET heartbeat=?, pid=NULL WHERE id=?", (time.time() - 60, rid))
    assert store.mark_stale() == [rid]
    assert store.get(rid).status == "failed" and "no heartbeat" in store.get(rid).error


def test_a_queued_run_that_no_worker_picks_up_fails(tmp_path):
    store = RunStore(tmp_path / "r.db")
    rid = store.create_run("train", {})
    store._conn.execute("UPDATE runs SET created=? WHERE id=?", (time.time() - 120, rid))
    fresh = store.create_run("train", {})
    assert store.mark_stale() == [rid]
    assert "no worker picked this run up" in store.get(rid).error
    assert store.get(fresh).status == "queued"


def test_a_run_id_drawn_twice_in_one_second_is_redrawn(tmp_path, monkeypatch):
    import core.jobs.store as store_module

    draws = iter(["aaaaaa", "aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(store_module.secrets, "token_hex", lambda _n: next(draws))
    monkeypatch.setattr(store_module.time, "strftime", lambda _fmt: "20260101-000000")
    store = RunStore(tmp_path / "r.db")
    first = store.create_run("evaluate", {})
    second = store.create_run("evaluate", {})
    assert (first, second) == ("evaluate-20260101-000000-aaaaaa", "evaluate-20260101-000000-bbbbbb")
    assert {r.id for r in store.list_runs()} == {first, second}


def test_a_resumed_runs_duration_leaves_out_the_time_it_sat_cancelled(tmp_path, monkeypatch):
    import sqlite3

    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    store = RunStore(tmp_path / "runs.db")
    run_id = store.create_run("train", {})
    store.set_status(run_id, "running")
    clock[0] += 40
    store.set_status(run_id, "cancelled")
    assert store.get(run_id).duration == pytest.approx(40)
    clock[0] += 3600  # an hour before the resume
    store.set_status(run_id, "queued")
    clock[0] += 5  # waiting for a worker is not running either
    store.set_status(run_id, "running")
    clock[0] += 20
    assert store.get(run_id).duration == pytest.approx(60)  # while running: to now
    store.set_status(run_id, "completed")
    clock[0] += 100
    assert store.get(run_id).duration == pytest.approx(60)
    # a database from before: the new columns are added and old runs keep start-to-finish
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as conn:
        conn.executescript(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL,"
            " parent TEXT, name TEXT, config TEXT NOT NULL, summary TEXT, warnings TEXT NOT NULL"
            " DEFAULT '[]', created REAL NOT NULL, started REAL, finished REAL, heartbeat REAL,"
            " pid INTEGER, error TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0);"
            "INSERT INTO runs (id, kind, status, config, created, started, finished) VALUES"
            " ('train-1', 'train', 'completed', '{}', 1, 10, 70);")
    assert RunStore(old).get("train-1").duration == pytest.approx(60)
