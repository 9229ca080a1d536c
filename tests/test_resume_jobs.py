"""Evaluation jobs that resume where they stopped: an audit, a sweep and a grid keep their
finished batches (or points) in the run's folder, and a resume ends with the result an unbroken
run gives."""
import json
import os
import subprocess
import sys

import pytest

from core.cancellation import Cancelled
from core.jobs import ledger as ledger_
from core.jobs.runner import create, execute, reopen
from core.jobs.store import RunStore
from core.paths import run_dir, runs_root

from conftest import ROOT, requires_mnist, wait_for


def _stop_when(monkeypatch, should_stop):
    """Raise Cancelled (as a cancel or Ctrl-C would) right after the ledger records a state
    for which ``should_stop(state)`` holds; once."""
    original, fired = ledger_.Ledger.save, []

    def save(self, tensors, state):
        original(self, tensors, state)
        if not fired and should_stop(state):
            fired.append(state)
            raise Cancelled("test stop")

    monkeypatch.setattr(ledger_.Ledger, "save", save)
    return fired


def _unbroken_and_resumed(spec, monkeypatch, should_stop):
    store = RunStore()
    whole = create(store, spec)
    execute(store, whole, echo=False)
    stopped = create(store, spec)
    fired = _stop_when(monkeypatch, should_stop)
    with pytest.raises(Cancelled):
        execute(store, stopped, echo=False)
    assert fired and store.get(stopped).status == "cancelled"
    assert ledger_.Ledger(run_dir(stopped), spec.to_dict()).exists()
    assert "resume it with `python -m core resume" in store.get(stopped).error
    monkeypatch.undo()
    reopen(store, stopped)
    execute(store, stopped, resume=True, echo=False)
    assert store.get(stopped).status == "completed"
    assert not (run_dir(stopped) / ledger_.FOLDER).exists()  # nothing left once the files exist
    return store, whole, stopped


@requires_mnist
def test_an_audit_cancelled_after_its_first_stage_resumes_to_the_same_audit(mnist_model,
                                                                             monkeypatch):
    from core.jobs.specs import AuditSpec

    _, _, model_run = mnist_model
    spec = AuditSpec(model_run=model_run, eps=0.1, version="fast", n=60, steps=10,
                     batch_size=20)
    store, whole, stopped = _unbroken_and_resumed(
        spec, monkeypatch, lambda s: s["stage"] == 1 and s["batch"] == 0)
    a, b = (json.loads((run_dir(r) / "audit.json").read_text()) for r in (whole, stopped))
    assert a["examples"] == b["examples"]  # every per-example record
    assert a["robust_acc"] == b["robust_acc"] and a["verdict"] == b["verdict"]
    assert [s["attack"] for s in b["stages"]] == ["apgd-ce", "apgd-t"]
    waterfall = [m["name"] for m in store.metrics(stopped) if m["name"].startswith("stage:")]
    assert waterfall == ["stage:clean", "stage:apgd-ce", "stage:apgd-t"]  # each stage once


@requires_mnist
def test_a_sweep_stopped_inside_an_attack_run_resumes_to_the_same_table(mnist_model,
                                                                        monkeypatch):
    from core.jobs.specs import SweepSpec

    _, _, model_run = mnist_model
    spec = SweepSpec(model_run=model_run, attacks=["fgsm", "pgd"], budgets=[0.05, 0.1], n=60,
                     batch_size=20)
    store, whole, stopped = _unbroken_and_resumed(
        spec, monkeypatch, lambda s: s["point"] == 2 and s["current"]["next"] == 40)
    a, b = (store.get(r).summary for r in (whole, stopped))
    assert a["rows"] == b["rows"] and a["worst_case"] == b["worst_case"]
    assert (run_dir(stopped) / "sweep.csv").read_text() == (run_dir(whole) / "sweep.csv").read_text()


def test_a_ledger_of_another_spec_is_never_read(tmp_path):
    import torch

    book = ledger_.Ledger(tmp_path / "run", {"eps": 0.1})
    assert book.load() is None and not (tmp_path / "run").exists()
    book.save({"code": torch.arange(3)}, {"stage": 1})
    tensors, state = book.load()
    assert tensors["code"].tolist() == [0, 1, 2] and state == {"stage": 1}
    assert ledger_.Ledger(tmp_path / "run", {"eps": 0.2}).load() is None
    assert not list((tmp_path / "run").glob("*.tmp"))


@pytest.mark.slow
@requires_mnist
def test_a_killed_audit_resumes_from_the_command_line(mnist_model):
    _, _, model_run = mnist_model
    args = [model_run, "--eps", "0.1", "--version", "fast", "-n", "60", "--steps", "10",
            "--batch-size", "20"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    whole = subprocess.run([sys.executable, "-m", "core", "audit", *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-2000:]
    proc = subprocess.Popen([sys.executable, "-m", "core", "audit", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    store = RunStore()
    try:
        assert wait_for(lambda: any(_stage_of(r.id) >= 1 for r in store.list_runs(kind="audit")
                                    if r.status == "running"), 300)
    finally:
        proc.kill()  # SIGKILL: no handler runs, the run row still says running
        proc.wait()
    killed = next(r.id for r in store.list_runs(kind="audit") if _stage_of(r.id) >= 1)
    resumed = subprocess.run([sys.executable, "-m", "core", "resume", killed], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "kept from before the resume" in resumed.stderr
    first = json.loads((run_dir(whole.stdout.split()[1].rstrip(":")) / "audit.json").read_text())
    again = json.loads((run_dir(killed) / "audit.json").read_text())
    assert first["examples"] == again["examples"] and first["robust_acc"] == again["robust_acc"]


def _stage_of(run_id: str) -> int:
    state = ledger_.Ledger(runs_root() / run_id, {}).state()  # None: none yet, or cleared
    return -1 if state is None else state["stage"]


@requires_mnist
def test_a_grid_resumes_after_its_finished_points(mnist_model, monkeypatch):
    from core import checkpoint
    from core.jobs import kinds
    from core.jobs.specs import GridSpec
    from core.paths import grid_point_path

    _, _, model_run = mnist_model
    spec = GridSpec(model_run=model_run, attack="fgsm", budgets=[0.05, 0.1, 0.2], n=40)
    store = RunStore()
    stopped = create(store, spec)
    original, calls = kinds.run_attack, []

    def stop_at_the_third(*args, **kwargs):  # a stop while the third point is computed
        calls.append(len(calls))
        if len(calls) == 3:
            raise Cancelled("test stop")
        return original(*args, **kwargs)

    monkeypatch.setattr(kinds, "run_attack", stop_at_the_third)
    with pytest.raises(Cancelled):
        execute(store, stopped, echo=False)
    first = [checkpoint.read_sidecar(grid_point_path(stopped, k))["summary"] for k in (0, 1)]
    reopen(store, stopped)
    execute(store, stopped, resume=True, echo=False)
    assert len(calls) == 4  # three, the last stopped; then only that one again
    assert not (run_dir(stopped) / "ledger").exists()  # a finished grid keeps only its points
    monkeypatch.undo()
    whole = create(store, spec)
    execute(store, whole, echo=False)
    assert store.get(stopped).summary["adv_acc"] == store.get(whole).summary["adv_acc"]
    assert first == [checkpoint.read_sidecar(grid_point_path(whole, k))["summary"]
                     for k in (0, 1)]


@requires_mnist
def test_a_grid_whose_attack_code_changed_since_its_stop_starts_again(mnist_model, monkeypatch,
                                                                       capsys):
    """A grid's finished points are pinned like any ledger's batches: after a change of the
    attacks' code version, the resume says so and computes every point again."""
    from core.jobs import kinds, ledger
    from core.jobs.specs import GridSpec

    spec = GridSpec(model_run=mnist_model[2], attack="fgsm", budgets=[0.05, 0.1], n=20)
    store = RunStore()
    run = create(store, spec)
    original, calls = kinds.run_attack, []

    def stop_at_the_second(*args, **kwargs):
        calls.append(len(calls))
        if len(calls) == 2:
            raise Cancelled("test stop")
        return original(*args, **kwargs)

    monkeypatch.setattr(kinds, "run_attack", stop_at_the_second)
    with pytest.raises(Cancelled):
        execute(store, run, echo=False)
    monkeypatch.setattr(ledger, "CODE_VERSION", ledger.CODE_VERSION + "-changed")
    reopen(store, run)
    capsys.readouterr()
    execute(store, run, resume=True, echo=True)
    assert len(calls) == 4  # one done, one stopped; then both again after the change
    said = capsys.readouterr()
    assert "attack code version" in said.out + said.err
    assert store.get(run).status == "completed"


# --- progress inside a stage: the count moves within one long batch ---------------------

@requires_mnist
def test_the_audit_count_moves_inside_each_stage_and_through_the_checks(mnist_model, mnist_test):
    from core import audit
    from core.threat import ThreatModel

    model, _, _ = mnist_model
    data = mnist_test.subset(40, seed=5)
    threat = ThreatModel("linf", 0.1)
    plan = audit.stages("fast", threat, steps=20)
    seen = []
    result = audit.cascade(model, data, plan, batch_size=250,  # one batch per stage
                           progress=lambda done, total: seen.append((done, total)))
    assert all(total == 80 for _, total in seen) and seen[-1][0] == 80
    inside_first = {done for done, _ in seen if 0 < done < 40}
    assert len(inside_first) >= 5  # not only at the end of the stage's one batch
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    checks = []
    audit.indicators(model, data, threat, result, plan, 20,
                     progress=lambda done, name: checks.append(done))
    assert checks == sorted(checks) and checks[-1] == audit.CHECKS
    assert any(4 < c < 5 for c in checks)  # inside the long optimisation check


def test_a_cw_attack_reports_progress_before_its_batch_ends():
    import torch

    from core.attacks import build_attack
    from core.data import TensorData
    from core.evaluation import run_attack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    data = TensorData("toy", "test", (torch.rand(12, 1, 4, 4) * 255).to(torch.uint8),
                      torch.randint(0, 3, (12,)), ["a", "b", "c"], "random", (0.5,), (0.5,))
    seen = []
    run_attack(model, data, build_attack("cw", steps=30, search_steps=3), batch_size=12,
               progress=lambda done, total: seen.append(done))
    assert seen[-1] == 12 and len({d for d in seen if 0 < d < 12}) >= 3


# --- estimates: what the audit's arithmetic counts ------------------------------------

def test_the_audit_estimate_counts_survivors_and_the_floor_of_a_small_batch():
    from core import audit, estimate
    from core.threat import ThreatModel

    plan = audit.stages("standard", ThreatModel("linf", 0.1))
    base = dict(plan=plan, n=1000, correct=0.9, per_attack_pass=1e-4, steps=100)
    robust = estimate.audit_seconds(broken=0.1, **base)
    fragile = estimate.audit_seconds(broken=0.9, **base)
    assert robust > 3 * fragile  # the later stages see only the survivors
    # a stage over a few survivors costs at least a one-image pass per iteration
    few = dict(base, n=20, correct=0.5)
    floor = estimate.audit_seconds(broken=0.5, per_call=1e-3, **few)
    assert floor > estimate.audit_seconds(broken=0.5, per_call=0.0, **few) + 1.0


def test_a_resumed_audits_estimate_counts_only_the_stages_left():
    """After a resume, the stages behind it cost nothing, the stage in progress its share
    left, and the indicators and verdict forwards, which always run, their whole time."""
    from core import audit, estimate
    from core.threat import ThreatModel

    plan = audit.stages("standard", ThreatModel("linf", 0.1))
    base = dict(plan=plan, n=1000, correct=0.9, broken=0.3, per_attack_pass=1e-4, steps=100)
    whole = estimate.audit_seconds(**base)
    after = [estimate.audit_seconds(done=d, **base) for d in (1.0, 1.5, 2.0, 4.0)]
    assert whole > after[0] > after[1] > after[2] > after[3] > 0
    # half of the second stage is half of what the second stage adds
    assert after[0] - after[1] == pytest.approx((after[0] - after[2]) / 2)
    # nothing of the cascade left: only what every audit ends with
    assert after[3] == pytest.approx(estimate.audit_seconds(**dict(base, plan=[])))


@requires_mnist
def test_a_curve_stopped_after_a_batch_resumes_to_the_same_norms(mnist_model, monkeypatch):
    from core.jobs.specs import CurveSpec

    _, _, model_run = mnist_model
    spec = CurveSpec(model_run=model_run, n=60, steps=10, batch_size=20)
    store, whole, stopped = _unbroken_and_resumed(spec, monkeypatch, lambda s: s["batch"] == 1)
    a, b = (store.get(r).summary for r in (whole, stopped))
    assert a["norms"] == b["norms"] and a["found_by"] == b["found_by"]
    assert (run_dir(stopped) / "curve.csv").read_text() == \
        (run_dir(whole) / "curve.csv").read_text()


@requires_mnist
@pytest.mark.slow
def test_a_grid_computes_the_sliders_point_first_and_a_stopped_one_resumes_with_its_points(
        mnist_model):
    """The point under the slider is computed first; a grid stopped with points on disk is
    resumed by the page's Compute (launch_grid), not started again, and keeps them."""
    import os

    from conftest import wait_for
    from core.app.attack import launch_grid
    from core.jobs.runner import create, execute
    from core.jobs.specs import GridSpec
    from core.jobs.store import RunStore
    from core.paths import grid_point_path

    _, _, model_run = mnist_model
    store = RunStore()
    spec = GridSpec(model_run=model_run, attack="pgd", params={"steps": 2}, n=20,
                    budgets=[0.05, 0.1, 0.2], first=2)
    from core import checkpoint
    from core.jobs import kinds

    original, calls = kinds.run_attack, []

    def stop_at_the_second(*args, **kwargs):  # stopped after its first point
        calls.append(1)
        if len(calls) == 2:
            raise Cancelled("test stop")
        return original(*args, **kwargs)

    run = create(store, spec, parent=model_run)
    kinds.run_attack = stop_at_the_second
    try:
        with pytest.raises(Cancelled):
            execute(store, run, echo=False)
    finally:
        kinds.run_attack = original
    assert not checkpoint.is_complete(grid_point_path(run, 0))
    kept = os.stat(grid_point_path(run, 2)).st_mtime_ns
    again = launch_grid(store, spec)
    assert again.id == run
    assert wait_for(lambda: store.get(run).status == "completed")
    made = [os.stat(grid_point_path(run, k)).st_mtime_ns for k in range(3)]
    assert made[2] == kept  # kept, not recomputed
    assert made[2] < made[0] < made[1]  # the slider's point first, then the rest in order
    assert sorted(store.get(run).summary["adv_acc"]) == ["0", "1", "2"]
