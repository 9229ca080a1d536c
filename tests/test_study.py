"""The standard-settings study: one job of child jobs (train, clean, PGD-40, audit per
defense), its report, bad input refused before any run exists, and a stopped study resumed
reusing what finished."""
import subprocess
import sys

import pytest

from core import confidence
from core.jobs.study import Setting

TINY = Setting(0.3, dict(epochs=2, batch_size=64, optimizer="nesterov", lr=0.05,
                         train_subset=300, test_subset=100), steps=2, step_size=0.15,
               eps_ramp_epochs=2, pgd_n=40, audit_n=16, audit_budget={"steps": 5,
                                                                       "queries": 40},
               clean_n=500)


@pytest.fixture
def tiny_scale(monkeypatch):
    from core.jobs import study

    monkeypatch.setitem(study.SCALES["cpu"], "mnist", TINY)


def test_bad_study_input_is_one_line_before_any_run(tmp_path):
    for args, expected in ((["--datasets", "mnist,svhn"], "unknown study dataset 'svhn'"),
                           (["--defenses", "iat,iat"], "must not repeat"),
                           (["--scale", "tpu"], "valid: cpu, gpu"),
                           (["--model", "vgg"], "valid models")):
        proc = subprocess.run([sys.executable, "-m", "core", "--artifacts-dir", str(tmp_path),
                               "study", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and expected in proc.stderr
        assert not (tmp_path / "runs.db").exists()


@pytest.mark.slow  # a whole study, end to end
@pytest.mark.usefixtures("tiny_scale")
def test_a_study_trains_attacks_and_audits_each_defense_into_one_report():
    from core.jobs.runner import create, execute
    from core.jobs.specs import StudySpec
    from core.jobs.store import RunStore

    store = RunStore()
    run = create(store, StudySpec(datasets=["mnist"], defenses=["pgd-at", "iat"]))
    summary = execute(store, run, echo=False)
    rows = {r["defense"]: r for r in summary["rows"]}
    assert set(rows) == {"pgd-at", "iat"}
    children = store.list_runs(parent=run)
    assert sorted(r.kind for r in children) == ["audit", "audit", "evaluate", "evaluate",
                                                "sweep", "sweep", "train", "train"]
    for row in rows.values():
        audit = store.get(row["audit_run"])
        assert audit.summary["robust_acc"] == row["audit"]
        assert audit.summary["threat_model"] == {"norm": "linf", "eps": 0.3}
        assert audit.summary["n"] == 16 and row["n_pgd"] == 40
        assert store.get(row["run"]).config["defense_args"]["eps"] == 0.3
        assert len(row["held_out_curve"]) == 2  # the guard's held-out figure, once per epoch
    report = open(summary["report"]).read()
    assert "## mnist, L∞ eps 0.3" in report
    for name in ("pgd-at", "iat"):
        line = next(x for x in report.splitlines() if x.startswith(f"| {name} |"))
        assert confidence.text(rows[name]["audit"], 16) in line  # each figure with its interval
        assert confidence.text(rows[name]["clean"], rows[name]["n_clean"]) in line
    assert "IAT's claim on mnist" in report and "seed FGSM-AT" in report


def _raise_for(monkeypatch, defense: str, error: BaseException):
    """Make the study's model ``defense`` raise ``error``; return the real ``row`` method."""
    from core.jobs import study

    real_row = study._Model.row

    def row(self):
        if self.defense == defense:
            raise error
        return real_row(self)

    monkeypatch.setattr(study._Model, "row", row)
    return real_row


@pytest.mark.slow  # a whole study, end to end
@pytest.mark.usefixtures("tiny_scale")
def test_a_stopped_study_resumes_reusing_the_jobs_that_finished(monkeypatch):
    from core.jobs import study
    from core.cancellation import Cancelled
    from core.jobs.runner import create, execute, reopen
    from core.jobs.specs import StudySpec
    from core.jobs.store import RunStore

    real_row = _raise_for(monkeypatch, "iat", Cancelled("stopped for the test"))
    store = RunStore()
    run = create(store, StudySpec(datasets=["mnist"], defenses=["fgsm-at", "iat"]))
    with pytest.raises(Cancelled):
        execute(store, run, echo=False)
    assert store.get(run).status == "cancelled"
    assert "python -m core resume" in store.get(run).error
    first = {r.id for r in store.list_runs(parent=run)}
    assert len(first) == 4  # fgsm-at's train, clean, PGD-40 and audit
    monkeypatch.setattr(study._Model, "row", real_row)
    from core.progress import Progress

    starts = []
    real_start = Progress.start

    def start(self, total, unit="images", images_per_unit=1, done=0):
        if unit == "models":
            starts.append(done)
        return real_start(self, total, unit, images_per_unit, done)

    monkeypatch.setattr(Progress, "start", start)
    reopen(store, run)
    summary = execute(store, run, resume=True, echo=False)
    assert [r["defense"] for r in summary["rows"]] == ["fgsm-at", "iat"]
    children = {r.id for r in store.list_runs(parent=run)}
    assert first < children and len(children) == 8  # nothing of fgsm-at's was redone
    # the reused model restarts the rate's count, so the time left is not taken from it
    assert starts == [0, 1]
    assert store.get(run).status == "completed"


@pytest.mark.slow  # a whole study, end to end
@pytest.mark.usefixtures("tiny_scale")
def test_a_model_that_fails_is_a_row_saying_so_and_the_study_goes_on(monkeypatch):
    from core.jobs.runner import create, execute
    from core.jobs.specs import StudySpec
    from core.jobs.store import RunStore
    from core.training.loop import NonFiniteLoss

    _raise_for(monkeypatch, "trades", NonFiniteLoss("loss became nan at epoch 2, step 10"))
    store = RunStore()
    run = create(store, StudySpec(datasets=["mnist"], defenses=["trades", "fgsm-at"]))
    summary = execute(store, run, echo=False)
    assert store.get(run).status == "completed"
    assert [r["defense"] for r in summary["rows"]] == ["trades", "fgsm-at"]
    assert "nan at epoch 2" in summary["rows"][0]["failed"] and "audit" in summary["rows"][1]
    assert any("trades on mnist" in w for w in store.get(run).warnings)
    report = open(summary["report"]).read()
    assert "| trades | failed: NonFiniteLoss: loss became nan" in report
    assert "| fgsm-at | " in report
