"""Reliability: jobs outlive their launcher, concurrent jobs lose nothing, a failing disk leaves
the previous checkpoint intact, bad uploads and paths are refused, attacks keep their contract
for any parameters (hypothesis)."""
import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core import checkpoint
from core.attacks import build_attack
from core.models import build_model
from core.paths import InputError, run_dir
from core.app.images import read_upload
from core.app.runs import progress
from core.app.train import launch_training
from core.jobs.store import RunStore
from core.jobs.runner import submit
from core.jobs.specs import SweepSpec, TrainSpec

from conftest import wait_for, ROOT, requires_mnist

SMALL = dict(dataset="mnist", train_subset=1280, test_subset=200, batch_size=64, lr=0.05)




@pytest.mark.slow  # a real launcher process killed with SIGKILL
@requires_mnist
def test_jobs_survive_the_process_that_launched_them():
    """A launcher (like the dashboard server) killed with SIGKILL does not take its job along;
    a fresh process (a restarted dashboard) finds the job in the store."""
    code = ("import sys; from core.jobs.runner import submit; from core.jobs.store import RunStore; "
            "from core.jobs.specs import TrainSpec; "
            f"rid = submit(RunStore(), TrainSpec(epochs=2, **{SMALL!r})); "
            "print(rid, flush=True); import time; time.sleep(600)")
    launcher = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                text=True, env=dict(os.environ))
    run_id = launcher.stdout.readline().strip()
    store = RunStore()
    assert wait_for(lambda: store.get(run_id).status == "running")
    launcher.send_signal(signal.SIGKILL)
    launcher.wait()
    assert wait_for(lambda: store.get(run_id).status == "completed"), store.get(run_id).error
    assert run_id in [r.id for r in RunStore().list_runs(kind="train")]


@pytest.mark.slow  # real worker processes
@requires_mnist
def test_a_spare_worker_runs_the_next_job_and_another_environment_gets_its_own(
        mnist_model, monkeypatch):
    """The spare waiting in the launcher (torch imported) takes the next job, writes its log
    in the run's folder and is replaced; a launch under another environment does not use a
    spare started in this one, which exits without running anything."""
    from core.jobs import runner, spare
    from core.jobs.specs import EvaluateSpec

    store = RunStore()
    spare.prepare(spare.environment(store.path))
    first = spare.waiting()
    assert first is not None
    run_id = runner.create(store, EvaluateSpec(model_run=mnist_model[2], n=100))
    assert runner.start_worker(store, run_id) == first
    assert wait_for(lambda: store.get(run_id).status == "completed"), store.get(run_id).error
    log = (run_dir(run_id) / "worker.log").read_text()
    assert "one forward pass of each of 100 images" in log, log  # the job's own output
    second = spare.waiting()
    assert second is not None and second != first  # the next job's spare is waiting

    monkeypatch.setenv("ROBUSTLAB_TEST_OTHER", "1")  # another environment
    other = runner.create(store, EvaluateSpec(model_run=mnist_model[2], n=100))
    assert runner.start_worker(store, other) != second
    assert wait_for(lambda: store.get(other).status == "completed"), store.get(other).error
    third = spare.waiting()
    assert third not in (None, second)  # the old spare was retired, a new one prepared
    assert wait_for(lambda: not Path(f"/proc/{second}").exists() or
                    Path(f"/proc/{second}/stat").read_text().split()[2] == "Z", 60)
    monkeypatch.delenv("ROBUSTLAB_TEST_OTHER")
    spare.prepare(spare.environment(store.path))  # leave none bound to the test's variable


@pytest.mark.parametrize("user_policy, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_workers_wait_passively_unless_the_user_says_otherwise(tmp_path, monkeypatch,
                                                               user_policy, expected):
    """Workers beside each other must not spin on the cores the others need; a user's own
    OMP_WAIT_POLICY wins."""
    from core.jobs import runner, spare

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    if user_policy is None:
        monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    else:
        monkeypatch.setenv("OMP_WAIT_POLICY", user_policy)
    monkeypatch.setenv("ROBUSTLAB_SPARE_WORKER", "0")
    launched = []

    class Recorder:
        def __init__(self, cmd, **kwargs):
            launched.append(kwargs["env"])
            self.pid = 1

    monkeypatch.setattr(spare.subprocess, "Popen", Recorder)
    store = RunStore()
    run_id = store.create_run("train", TrainSpec(epochs=1, **SMALL).to_dict())
    runner.start_worker(store, run_id)
    assert launched[0]["OMP_WAIT_POLICY"] == expected


@pytest.mark.slow
@requires_mnist
def test_two_trainings_and_a_sweep_at_once_with_a_polling_reader(mnist_model):
    _, _, model_run = mnist_model
    store = RunStore()
    cfg = TrainSpec(epochs=2, **SMALL)
    trains = [submit(store, cfg) for _ in range(2)]
    sweep = submit(store, SweepSpec(model_run=model_run, budgets=[0.05, 0.1, 0.2], n=200,
                                    attacks=[{"name": "fgsm", "params": {}},
                                             {"name": "pgd", "params": {"steps": 5}}]))
    everything = trains + [sweep]
    polls = 0
    while not all(store.get(r).status in ("completed", "failed") for r in everything):
        for r in everything:  # what the dashboard's fragments do every second or two
            progress(store, r)
            store.metrics(r)
        store.mark_stale()
        polls += 1
        time.sleep(0.2)
    assert [store.get(r).status for r in everything] == ["completed"] * 3, [
        store.get(r).error for r in everything]
    steps = 1280 // 64 * 2
    for r in trains:
        rows = store.metrics(r)
        assert sum(m["name"] == "train_loss_step" for m in rows) == steps
        assert sum(m["name"] == "lr" for m in rows) == steps // 10
        assert sum(m["name"] == "test_acc" for m in rows) == 2
    assert len(store.get(sweep).summary["rows"]) == 6
    # progress rows are throttled by time (how many depends on the machine's speed); the
    # last one always says done
    fractions = [m["value"] for m in store.metrics(sweep) if m["name"] == "progress"]
    assert fractions and fractions[-1] == 1.0 and fractions == sorted(fractions)
    assert polls > 5


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = build_model("seed-resnet", (1, 28, 28), 10)
    path = tmp_path / "checkpoint.safetensors"
    good = {f"model.{k}": v for k, v in model.state_dict().items()}
    checkpoint.save(path, good, {"epoch": 1})
    before = path.read_bytes()

    def full_disk(filename, tensors, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_safetensors", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, {k: v + 1 for k, v in good.items()}, {"epoch": 2})
    assert path.read_bytes() == before
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())
    tensors, meta = checkpoint.load(path)
    assert meta["epoch"] == 1 and torch.equal(tensors["model.fc.weight"], good["model.fc.weight"])


def test_uploads_that_are_not_images_or_too_big_are_refused():
    with pytest.raises(InputError, match="not an image"):
        read_upload(b"%PDF-1.4 definitely not a picture", [1, 28, 28])
    with pytest.raises(InputError, match="limit is 5 MB"):
        read_upload(b"\0" * (6 * 1024 * 1024), [1, 28, 28])


def test_uploaded_image_is_resized_to_the_model_input(tmp_path):
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(buf, format="PNG")
    x = read_upload(buf.getvalue(), [3, 32, 32])
    assert x.shape == (1, 3, 32, 32) and torch.allclose(x[0, 0], torch.ones(32, 32))
    assert read_upload(buf.getvalue(), [1, 28, 28]).shape == (1, 1, 28, 28)


def test_imagefolder_paths_from_the_ui_are_confined(tmp_path):
    store = RunStore(tmp_path / "r.db")
    values = dict(TrainSpec().to_dict(), dataset="imagefolder:/etc")
    with pytest.raises(InputError, match="outside the allowed folders"):
        launch_training(store, values)
    assert store.list_runs() == []


def test_sigterm_under_torchrun_is_recorded_for_a_cooperative_stop():
    from core.cancellation import Cancellation, Cancelled

    state = Cancellation()
    assert state.install(immediate=False)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert state.requested and state.reason == "SIGTERM"
        with pytest.raises(Cancelled):
            state.check()
    finally:
        state.uninstall()


ATTACK_PARAMS = {
    "noise": st.fixed_dictionaries({"sigma": st.floats(-0.5, 1.5),
                                    "distribution": st.sampled_from(["gaussian", "uniform", "x"])}),
    "fgsm": st.fixed_dictionaries({"eps": st.floats(-0.5, 1.5), "targeted": st.booleans()}),
    "pgd": st.fixed_dictionaries({"eps": st.floats(-0.5, 1.5), "steps": st.integers(-1, 3),
                                  "norm": st.sampled_from(["linf", "l2", "l1"]),
                                  "restarts": st.integers(0, 2)}),
    "semantic": st.fixed_dictionaries({"mode": st.sampled_from(["negative", "hsv", "blur"]),
                                       "trials": st.integers(-1, 3)}),
    "cw": st.fixed_dictionaries({"steps": st.integers(-1, 3), "search_steps": st.integers(0, 2),
                                 "confidence": st.floats(-1, 5), "lr": st.floats(0, 0.5)}),
    "apgd-ce": st.fixed_dictionaries({"eps": st.floats(-0.5, 3), "steps": st.integers(-1, 6),
                                      "norm": st.sampled_from(["linf", "l2", "l1"]),
                                      "loss": st.sampled_from(["ce", "dlr", "x"]),
                                      "restarts": st.integers(0, 2)}),
    "apgd-t": st.fixed_dictionaries({"eps": st.floats(-0.5, 3), "steps": st.integers(-1, 4),
                                     "norm": st.sampled_from(["linf", "l2"]),
                                     "targets": st.integers(-1, 12)}),
    "fab-t": st.fixed_dictionaries({"eps": st.floats(-0.5, 3), "steps": st.integers(-1, 4),
                                    "norm": st.sampled_from(["linf", "l2", "l1"]),
                                    "targets": st.integers(-1, 12), "restarts": st.integers(0, 2),
                                    "alpha_max": st.floats(-0.5, 1.5)}),
    "square": st.fixed_dictionaries({"eps": st.floats(-0.5, 3), "queries": st.integers(-1, 30),
                                     "norm": st.sampled_from(["linf", "l2", "l1"]),
                                     "p_init": st.floats(-0.5, 1.5)}),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), name=st.sampled_from(sorted(ATTACK_PARAMS)), batch=st.integers(1, 3),
       channels=st.sampled_from([1, 3]), size=st.sampled_from([8, 16]))
def test_every_attack_keeps_its_contract_or_raises_a_clear_error(data, name, batch, channels,
                                                                 size):
    params = data.draw(ATTACK_PARAMS[name])
    torch.manual_seed(0)
    model = build_model("seed-resnet", (channels, size, size), 10, width=4, blocks=1)
    x = torch.rand(batch, channels, size, size)
    # half the draws use labels the model agrees with, so the attacks iterate rather than stop
    y = model.eval()(x).argmax(1).detach() if data.draw(st.booleans()) else \
        torch.randint(0, 10, (batch,))
    try:
        attack = build_attack(name, **params)
        adv = attack(model, x, y)
    except InputError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert adv.min() >= 0 and adv.max() <= 1
    threat = attack.threat()
    if threat is not None and threat.norm != "none":
        delta = (adv - x).flatten(1)
        size_ = delta.norm(dim=1).max() if getattr(attack, "norm", "linf") == "l2" else delta.abs().max()
        assert size_ <= attack.eps + 1e-5


def test_an_upload_smaller_than_8x8_is_refused_not_blown_up():
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(buf, format="PNG")
    with pytest.raises(InputError, match="4x4 pixels; RobustLab needs at least 8x8"):
        read_upload(buf.getvalue(), [3, 32, 32])
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    assert read_upload(buf.getvalue(), [3, 32, 32]).shape == (1, 3, 32, 32)


def test_a_stop_is_not_swallowed_by_a_library_that_catches_every_error():
    """A library's ``except Exception`` (an optional import's probe, a fallback) must not eat
    a Ctrl-C or a cancel and let the job go on."""
    from core.cancellation import Cancelled, Interrupted

    for stop in (Cancelled("SIGTERM"), Interrupted("SIGINT")):
        with pytest.raises(Cancelled):
            try:
                raise stop
            except Exception:  # noqa: BLE001  (the library's catch-all under test)
                pass


def test_a_stop_inside_a_store_write_leaves_no_write_lock_behind(tmp_path, monkeypatch):
    """A stop raised between BEGIN and the block (or before COMMIT) rolls back, so another
    process's write does not wait for a lock nobody will release."""
    import sqlite3

    from core.cancellation import Interrupted

    store = RunStore(tmp_path / "r.db")
    run_id = store.create_run("train", {})
    real = store._conn

    class StopAfterBegin:  # the signal handler raising right after BEGIN IMMEDIATE returned
        in_transaction = property(lambda self: real.in_transaction)

        def execute(self, sql, *args):
            out = real.execute(sql, *args)
            if sql == "BEGIN IMMEDIATE":
                raise Interrupted("SIGINT")
            return out

    store._conn = StopAfterBegin()
    with pytest.raises(Interrupted):
        store.set_status(run_id, "running")
    store._conn = real
    assert not real.in_transaction
    other = sqlite3.connect(str(tmp_path / "r.db"), timeout=0.1)  # fails at once if locked
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")
    other.close()
    store.set_status(run_id, "cancelled")
    assert store.get(run_id).status == "cancelled"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop itself
def test_a_stop_python_dropped_in_a_finalizer_is_raised_at_the_next_attack_iteration():
    """A signal handler's exception raised while a ``__del__`` runs is printed and dropped by
    Python; the stop is still recorded, and the attack's next iteration raises it."""
    import gc

    from core.attacks.contract import tick
    from core.cancellation import Interrupted, STATE

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here: its raise is dropped
            sum(range(1000))

    assert STATE.install()
    try:
        Finalized()
        gc.collect()
        assert STATE.requested and STATE.reason == "SIGINT"
        with pytest.raises(Interrupted):
            tick()
    finally:
        STATE.uninstall()
    tick()  # with no job running, nothing is pending
    STATE.requested, STATE.reason = False, ""
