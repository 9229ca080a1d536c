"""A broken environment is one line and exit status 2, naming the file and what to do: an
unwritable artifacts folder, a path through a file, a damaged or locked run database, a full
disk while a job writes; and a run stopped before it wrote anything leaves no empty folder."""
import os
import resource
import signal
import sqlite3
import subprocess
import sys

import pytest

from conftest import ROOT, requires_mnist


def _cli(*args, artifacts, preexec=None, **env):
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, preexec_fn=preexec,
                          env=dict(os.environ, ROBUSTLAB_ARTIFACTS=str(artifacts), **env))


def _one_line(proc, *words):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def _unwritable(tmp_path):
    """A folder this process cannot write in: a read-only one where permissions bind, else
    (as root, whom permissions do not stop) one under sysfs, which refuses new entries."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked-down"
        folder.mkdir()
        folder.chmod(0o555)
        return folder / "artifacts"
    return "/sys/kernel/robustlab-artifacts"


def test_an_unwritable_artifacts_folder_is_one_line(tmp_path):
    line = _one_line(_cli("runs", artifacts=_unwritable(tmp_path)), "cannot write",
                     "runs.db", "ROBUSTLAB_ARTIFACTS")
    assert "read-only or not writable" in line


def test_an_artifacts_path_through_a_file_is_one_line(tmp_path):
    (tmp_path / "a-file").write_text("x")
    _one_line(_cli("runs", artifacts=tmp_path / "a-file" / "artifacts"), "is a file",
              "a-file")


def test_a_damaged_database_is_one_line_that_says_how_to_start_afresh(tmp_path):
    (tmp_path / "runs.db").write_bytes(os.urandom(8192))
    line = _one_line(_cli("runs", artifacts=tmp_path), "damaged", str(tmp_path / "runs.db"))
    assert "mv " in line
    (tmp_path / "runs.db").rename(tmp_path / "runs.db.damaged")  # what the line says to do
    assert _cli("runs", artifacts=tmp_path).returncode == 0


def test_a_locked_database_is_one_line_once_the_wait_is_over(tmp_path):
    assert _cli("runs", artifacts=tmp_path).returncode == 0  # the database exists
    holder = sqlite3.connect(tmp_path / "runs.db", isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        _one_line(_cli("runs", artifacts=tmp_path, ROBUSTLAB_DB_TIMEOUT="0.5"), "locked",
                  str(tmp_path / "runs.db"))
    finally:
        holder.close()


@requires_mnist
def test_a_full_disk_while_training_is_one_line_and_leaves_no_empty_folder(tmp_path):
    def small_files():  # every write past 100 kB fails (EFBIG), as on a full disk (ENOSPC)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = _cli("train", "--dataset", "mnist", "--epochs", "1", "--train-subset", "300",
                "--test-subset", "100", artifacts=tmp_path, preexec=small_files)
    _one_line(proc, "no room to write", "checkpoint.safetensors")
    from core.jobs.store import RunStore

    run = RunStore(tmp_path / "runs.db").list_runs()[0]
    assert run.status == "failed"
    assert not (tmp_path / "runs" / run.id).exists()


@requires_mnist
def test_a_training_stopped_in_its_first_epoch_leaves_no_folder(monkeypatch):
    from core.cancellation import Cancelled
    from core.jobs.runner import create, execute
    from core.jobs.specs import TrainSpec
    from core.jobs.store import RunStore
    from core.paths import runs_root
    from core.training import loop

    def stop(*_args, **_kw):
        raise Cancelled("SIGINT")

    monkeypatch.setattr(loop, "_save_checkpoint", stop)  # the end of epoch 1, before a write
    store = RunStore()
    run_id = create(store, TrainSpec(dataset="mnist", epochs=1, train_subset=200,
                                     test_subset=50))
    with pytest.raises(Cancelled):
        execute(store, run_id, echo=False)
    assert store.get(run_id).status == "cancelled"
    assert not (runs_root() / run_id).exists()


INNER_TEST = '''
from core.jobs.runner import create, execute
from core.jobs.specs import TrainSpec
from core.jobs.store import RunStore


def test_a_long_training_in_process():
    store = RunStore()
    run_id = create(store, TrainSpec(dataset="mnist", epochs=50, train_subset=2000,
                                     test_subset=100))
    execute(store, run_id, echo=False)
'''


@pytest.mark.slow
@requires_mnist
def test_ctrl_c_stops_pytest_itself_and_leaves_the_in_process_job_cancelled(tmp_path):
    from conftest import wait_for
    from core.jobs.store import RunStore

    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = dict(os.environ, ROBUSTLAB_ARTIFACTS=str(tmp_path / "artifacts"),
               PYTHONPATH=str(ROOT))
    env.pop("PYTEST_XDIST_WORKER", None)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             "test_inner.py"], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def training():
            if not (tmp_path / "artifacts" / "runs.db").exists():
                return False
            store = RunStore(tmp_path / "artifacts" / "runs.db")
            runs = store.list_runs()
            return bool(runs) and runs[0].status == "running" and bool(store.metrics(runs[0].id))

        assert wait_for(training, 120)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    # pytest's own "interrupted" status and banner (a plain exception would be a failed test,
    # status 1, and the session would go on)
    assert proc.returncode == 2, out[-2000:]
    assert "!!!" in out and "Interrupted: SIGINT" in out
    run = RunStore(tmp_path / "artifacts" / "runs.db").list_runs()[0]
    assert run.status == "cancelled" and "SIGINT" in run.error


@requires_mnist
@pytest.mark.slow
def test_a_full_disk_under_the_heartbeat_prints_no_traceback_and_reading_still_works(
        mnist_model, tmp_path, monkeypatch, capfd):
    """The heartbeat thread meets a full disk (SQLite's "database or disk is full"): no
    traceback comes from it, the job still ends with its own result; a stale run's stored
    reason names a full disk; and `runs`/`show` read the store when nothing can be written."""
    import sqlite3
    import time

    from core.app.cli import main
    from core.jobs import runner, store as store_
    from core.jobs.runner import create, execute
    from core.jobs.specs import AttackSpec
    from core.jobs.store import RunStore

    _, _, model_run = mnist_model
    full = sqlite3.OperationalError("database or disk is full")

    def no_room(self, run_id, owner=None):
        raise full

    monkeypatch.setattr(store_.RunStore, "heartbeat", no_room)
    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.05)
    store = RunStore()
    run = create(store, AttackSpec(model_run=model_run, attack="pgd", params={"eps": 0.1,
                                                                               "steps": 20}, n=200))
    execute(store, run, echo=False)
    err = capfd.readouterr().err
    assert "Traceback" not in err and "disk is full" not in err
    assert store.get(run).status == "completed"
    monkeypatch.undo()

    # a worker that died on a full disk: the stale reason says the disk is the likely cause
    stale = store.create_run("attack", {"model_run": model_run})
    store.set_status(stale, "running")
    store._conn.execute("UPDATE runs SET heartbeat=? WHERE id=?", (time.time() - 60, stale))
    monkeypatch.setattr(store_, "_disk_hint", lambda low=1 << 20: ", probably because the "
                        "disk holding X is full (12 kB free)")
    store.mark_stale()
    assert "probably because the disk holding X is full" in store.get(stale).error

    def full_write(self, sql, params=()):
        raise full

    monkeypatch.setattr(store_.RunStore, "_write", full_write)
    assert main(["runs"]) == 0 and main(["show", run]) == 0
    out = capfd.readouterr().out
    assert run in out and "completed" in out
