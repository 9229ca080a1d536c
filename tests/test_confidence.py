"""Verdicts with error bars: the interval of a count, indicators that decide with a stated test,
the lab's own figures checked against the audit, one definition of robust, any label set, and
a guard as strong as APGD-CE."""
import pytest
import torch
import torch.nn as nn

from core import confidence
from core.audit import cascade, indicators, report, stages, verdict
from core.audit.failure import (NOTHING_LEFT, OWN_NUMBERS, blackbox_indicator,
                                own_numbers_indicator, weaker_indicator)
from core.data import TensorData
from core.threat import ThreatModel


def test_the_interval_of_a_known_count():
    low, high = confidence.interval(69, 200)  # 34.5%: the example
    assert low == pytest.approx(0.2826, abs=5e-4) and high == pytest.approx(0.4132, abs=5e-4)
    assert confidence.text(0.345, 200) == "34.5% (28.3-41.3)"
    assert confidence.interval(0, 200)[0] == 0.0 and 0.01 < confidence.interval(0, 200)[1] < 0.02
    assert confidence.interval(200, 200)[1] == 1.0
    assert confidence.interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        confidence.interval(5, 4)


def test_an_indicator_passes_one_example_in_200_as_chance_and_fails_many():
    one = weaker_indicator(1, 0, 200)
    assert one["status"] == "pass" and "within chance" in one["detail"]
    assert "P(at least 1 by chance" in one["detail"]
    many = weaker_indicator(8, 0, 200)
    assert many["status"] == "fail"
    assert "8 of 200" in many["detail"] and "P(at least 8 by chance" in many["detail"]
    assert blackbox_indicator(1, 200, ran=True)["status"] == "pass"
    failing = blackbox_indicator(6, 200, ran=True)
    assert failing["status"] == "fail" and "6 of 200" in failing["detail"]


def test_the_tenth_indicator_fires_on_an_overstated_figure_and_stays_quiet_otherwise():
    pgd = {"what": "sweep s-1: pgd, 40 steps", "run": "s-1", "attack": "pgd", "acc": 0.698,
           "n": 1000}
    fired = own_numbers_indicator([pgd], {"acc": 0.0, "n": 200})
    assert fired["name"] == OWN_NUMBERS and fired["status"] == "fail"
    assert "sweep s-1: pgd, 40 steps" in fired["detail"]
    assert "above the audit by 69.8 pp beyond both 95% intervals" in fired["detail"]
    assert "believe the audit" in fired["detail"]
    close = dict(pgd, acc=0.37, n=200)  # inside the audit's 34.5% (28.3-41.3)
    quiet = own_numbers_indicator([close], {"acc": 0.345, "n": 200})
    assert quiet["status"] == "pass" and "none of the 1 stored" in quiet["detail"]
    assert "the same within chance" in quiet["detail"]
    assert own_numbers_indicator([], {"acc": 0.345, "n": 200})["status"] == "pass"
    # it judges the lab's other figures, so the verdict on the audit's own number ignores it
    assert verdict([fired, {"name": "gradients", "status": "pass"}], 0.3) == "trusted"


def _paired(robust_audit: int, extra: int, n: int = 1000) -> tuple[dict, dict]:
    """An audit and a PGD figure on the same ``n`` images: the figure calls robust every
    image the audit kept, and ``extra`` more."""
    positions = list(range(0, 3 * n, 3))
    audit = [k < robust_audit for k in range(n)]
    figure = [k < robust_audit + extra for k in range(n)]
    return ({"what": "attack run a-1: pgd, 40 steps", "run": "a-1", "attack": "pgd",
             "acc": sum(figure) / n, "n": n, "images": "test", "positions": positions,
             "robust": figure},
            {"acc": sum(audit) / n, "n": n, "positions": positions, "robust": audit})


def test_the_tenth_indicator_pairs_figures_on_shared_images():
    """Red for a PGD figure 4 pp above the audit on the same 1,000 images (paired: their
    intervals overlap, so the interval rule missed it); green for an FGSM row and for the
    guard's held-out figure at the audit's epsilon, far above it as they are."""
    pgd, audit = _paired(400, 40)
    assert not confidence.overstates(pgd["acc"], 1000, audit["acc"], 1000)  # intervals overlap
    fired = own_numbers_indicator([pgd], audit)
    assert fired["status"] == "fail"
    assert "above the audit on the same 1,000 images: it calls 40 of them robust that the " \
        "audit broke (0 the other way; paired" in fired["detail"]
    fgsm = dict(pgd, what="sweep s-2: fgsm", attack="fgsm", acc=0.9, positions=None,
                robust=None)
    guard = {"what": "the overfitting guard's held-out figure (10 steps, final weights)",
             "run": "t-1", "attack": "apgd-ce", "acc": 0.9, "n": 500,
             "images": "held-out training"}
    quiet = own_numbers_indicator([fgsm, guard], audit)
    assert quiet["status"] == "pass"
    assert "expected weaker: a single gradient step is no robustness figure" in quiet["detail"]
    assert "other images: 500 held-out training images against the audit's 1,000 test " \
        "images" in quiet["detail"]
    assert "weak" not in quiet["detail"].split("other images")[1].split(";")[0].replace(
        "weaker attack's", "")


def test_each_answer_says_what_was_checked():
    from core.comparison import compare

    pgd, audit = _paired(400, 40)
    assert compare(pgd, audit)["sentence"].startswith("above the audit on the same 1,000")
    below = dict(pgd, robust=[k < 360 for k in range(1000)], acc=0.36)
    assert compare(below, audit)["sentence"].startswith("below the audit on the same 1,000")
    near = dict(pgd, robust=[k < 401 for k in range(1000)], acc=0.401)
    judged = compare(near, audit)
    assert judged["status"] == "same" and judged["paired"]
    assert judged["sentence"].startswith("the same within chance on the same 1,000 images: "
                                         "1 robust only by it, 0 only by the audit")
    other = dict(pgd, positions=None, robust=None, n=200, acc=0.41)
    judged = compare(other, dict(audit, seed=0))
    assert not judged["paired"] and "other test images (200 against the audit's 1,000)" in \
        judged["sentence"] and judged["sentence"].startswith("the same within chance")
    far = dict(other, acc=0.7)
    assert compare(far, audit)["sentence"].startswith("above the audit by 30.0 pp beyond")
    low = dict(other, acc=0.1)
    assert compare(low, audit)["sentence"].startswith("below the audit by 30.0 pp beyond")


def test_at_zero_robust_accuracy_the_verdict_says_nothing_was_left_to_check():
    passing = [{"name": "gradients", "status": "pass"}]
    assert verdict(passing, 0.0) == NOTHING_LEFT
    assert verdict(passing, 0.2) == "trusted"
    assert verdict([{"name": "gradients", "status": "fail"}], 0.0) == "failed"


def test_stored_figures_of_the_model_at_the_threat_model_are_gathered_from_the_store(tmp_path):
    from core.jobs.claims import stored_figures
    from core.jobs.store import RunStore

    store = RunStore(tmp_path / "runs.db")
    model = store.create_run("train", {"robust_eval": {"steps": 10}})
    store.set_summary(model, {"final": {"robust_acc": 0.68, "robust_eps": 0.3},
                              "best": None, "n_held_out": 500})
    store.set_status(model, "completed")

    def done(kind: str, config: dict, summary: dict) -> str:
        run = store.create_run(kind, dict(config, model_run=model))
        store.set_summary(run, summary)
        store.set_status(run, "completed")
        return run

    row = {"attack": "pgd", "norm": "linf", "eps": 0.3, "adv_acc": 0.698, "n": 1000,
           "params": {"steps": 40}}
    sweep = done("sweep", {}, {"rows": [row, dict(row, eps=0.1, adv_acc=0.9)]})
    attack = done("attack", {}, dict(row, adv_acc=0.71, n=200))
    grid = done("grid", {"attack": "pgd", "params": {"norm": "linf", "steps": 40}},
                {"adv_acc": {"0": 0.95, "1": 0.70}, "budgets": [0.1, 0.3], "n": 200,
                 "kind": "adversarial"})
    done("sweep", {"which": "best"}, {"rows": [row]})  # other weights: not this model's figure
    found = stored_figures(store, model, "final", ThreatModel("linf", 0.3))
    assert sorted(f["run"] for f in found) == sorted([model, sweep, attack, grid])
    assert {f["acc"] for f in found} == {0.68, 0.698, 0.71, 0.70}
    assert stored_figures(store, model, "final", ThreatModel("l2", 0.3)) == []
    assert {f["images"] for f in found if f["run"] == model} == {"held-out training"}
    checked = own_numbers_indicator(found, {"acc": 0.0, "n": 200})
    # the three test-image figures overstate it; the guard's training images are other images
    assert checked["status"] == "fail" and "3 of 4" in checked["detail"]


def test_a_sweep_counts_an_originally_wrong_example_as_not_robust():
    from core.evaluation import AttackOutcome

    labels = torch.tensor([0, 1, 1, 0])
    clean = torch.tensor([0, 0, 1, 0])  # example 1 is wrong before the attack
    adv = torch.tensor([0, 1, 0, 1])  # ... and right after it
    z = torch.zeros(4)
    outcome = AttackOutcome("pgd", {"steps": 5}, 0.1, {"norm": "linf", "eps": 0.1}, clean, z,
                            adv, z, z, z, labels, torch.arange(4), ["a", "b"])
    s = outcome.summary()
    assert s["adv_acc"] == 0.25  # only example 0 is correct before and after
    assert s["after_attack_acc"] == 0.5  # the old figure, renamed
    assert s["adv_acc_ci"] == list(confidence.interval(1, 4)) or \
        tuple(s["adv_acc_ci"]) == confidence.interval(1, 4)
    assert s["per_class_adv_acc"] == {"a": 0.5, "b": 0.0}


class _Tiny(nn.Module):
    def __init__(self, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("classes", [2, 3])
def test_an_audit_of_two_or_three_classes_ends_with_a_verdict(classes):
    torch.manual_seed(0)
    model = _Tiny(classes).eval()
    n = 24
    data = TensorData("tiny", "test", torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8),
                      torch.randint(0, classes, (n,)), [f"c{k}" for k in range(classes)],
                      "random", (0.5,), (0.5,))
    threat = ThreatModel("linf", 0.1)
    plan = stages("standard", threat, steps=5, queries=30)
    result = cascade(model, data, plan)
    assert result["losses"]["apgd-t"] == "ce-targeted"  # DLR-T needs 4 classes
    assert result["losses"]["apgd-ce"] == "ce"
    checks = indicators(model, data, threat, result, plan, steps=5)

    class _Spec:
        version, steps, queries = "standard", 5, 30

    audited = report(_Spec(), threat, result, checks, data)
    assert audited["verdict"] in ("trusted", "doubtful", "failed", NOTHING_LEFT)
    low, high = audited["robust_acc_ci"]
    assert low <= audited["robust_acc"] <= high
    from core.reports import audit_markdown

    assert "apgd-t used the ce-targeted loss" in audit_markdown(audited)


def test_the_guard_selects_with_apgd_ce():
    from core.attacks import APGD
    from core.jobs.specs import TrainSpec
    from core.training.defenses import RobustGuard

    held = TensorData("tiny", "train", torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
                      torch.zeros(4, dtype=torch.long), ["a", "b"], "zeros", (0.5,), (0.5,))
    cfg = TrainSpec(dataset="mnist", defense="pgd-at", defense_args={"eps": 0.2})
    guard = RobustGuard.for_config(cfg, held)
    assert isinstance(guard.attack, APGD) and guard.attack.loss == "ce"
    assert guard.attack.eps == 0.2 and guard.attack.steps == 10


def test_the_study_decides_iat_s_claim_with_intervals_not_a_point_difference():
    from core.jobs.study import iat_claim

    def rows(iat_audit: float, iat_clean: float) -> list[dict]:
        base = {"dataset": "mnist", "n_audit": 200, "n_clean": 10000}
        return [dict(base, defense="pgd-at", audit=0.40, clean=0.980),
                dict(base, defense="iat", audit=iat_audit, clean=iat_clean)]

    # 5 pp below PGD-AT on 200 images is inside the noise (an old 3 pp rule said no)
    within = iat_claim(rows(0.35, 0.990), "mnist")
    assert "holds here" in within and "not below it beyond chance" in within
    assert "95% intervals: per-image outcomes not on disk, so not paired" in within
    assert "35.0% (" in within  # every figure carries its interval
    assert "does not hold" in iat_claim(rows(0.20, 0.990), "mnist")  # robust: clearly below
    assert "does not hold" in iat_claim(rows(0.40, 0.981), "mnist")  # clean: not clearly above


def test_the_study_pairs_iat_and_pgd_at_on_the_same_images(tmp_path, monkeypatch):
    """With both audits' and evaluations' per-image outcomes on disk the claim is decided
    paired: 4 pp below PGD-AT on the same 1,000 images, every one of them an image PGD-AT
    kept, is below beyond chance although the intervals overlap."""
    import json

    from core.jobs.study import iat_claim
    from core.paths import run_dir

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    n = 1000

    def files(run: str, robust: int, correct: int) -> None:
        (run_dir(f"audit-{run}") / "audit.json").write_text(json.dumps({"examples": [
            {"index": k, "robust": k < robust} for k in range(n)]}))
        (run_dir(f"evaluate-{run}") / "evaluation.json").write_text(json.dumps({"records": [
            {"index": k, "true": 1, "pred": 1 if k < correct else 0} for k in range(n)]}))

    files("p", 440, 980)
    files("i", 400, 990)
    base = {"dataset": "mnist", "n_audit": n, "n_clean": n}
    rows = [dict(base, defense="pgd-at", audit=0.44, clean=0.98, audit_run="audit-p",
                 clean_run="evaluate-p"),
            dict(base, defense="iat", audit=0.40, clean=0.99, audit_run="audit-i",
                 clean_run="evaluate-i")]
    claim = iat_claim(rows, "mnist")
    assert "does not hold" in claim and "below it beyond chance" in claim
    assert "paired: robust lower beyond chance on the same 1,000 images (0 only the first, " \
        "40 only the second" in claim
    assert "clean higher beyond chance" in claim


def test_the_waterfall_draws_the_intervals_of_clean_and_robust_accuracy():
    from core.figures import waterfall_figure

    stages = [{"attack": "clean", "robust_acc": 0.59}, {"attack": "apgd-ce", "robust_acc": 0.31},
              {"attack": "apgd-t", "robust_acc": 0.238}]
    fig = waterfall_figure(stages, n=1000)
    whiskers = fig.data[1]
    assert list(whiskers.x) == ["clean", "robust"]
    low, high = confidence.interval(238, 1000)
    assert whiskers.error_y.array[1] == pytest.approx((high - 0.238) * 100)
    assert whiskers.error_y.arrayminus[1] == pytest.approx((0.238 - low) * 100)
    assert len(waterfall_figure(stages, pending=["fab-t"], n=1000).data) == 1  # still running


def test_every_accuracy_in_the_runs_listing_and_the_sweep_table_carries_its_interval():
    import pandas as pd

    from core.app.console import headline
    from core.app.robustness import sweep_display
    from core.jobs.store import Run

    train = Run(id="r", kind="train", status="completed", parent=None, name=None, config={},
                summary={"final": {"test_acc": 0.981, "robust_acc": 0.5}, "n_test": 1000,
                         "n_held_out": 200},
                warnings=[], created=0.0, started=None, finished=None, heartbeat=None, pid=None,
                error=None, cancel_requested=False)
    line = headline(train)
    assert confidence.text(0.981, 1000) in line and confidence.text(0.5, 200) in line
    curve = Run(**{**train.__dict__, "kind": "curve", "summary": {
        "norm": "linf", "clean_acc": 0.96, "n": 100, "median_norm": 0.12, "norms": []}})
    assert confidence.text(0.96, 100) in headline(curve)
    row = {"model": "m", "attack": "pgd", "kind": "attack", "norm": "linf", "budget": 0.1,
           "n": 200, "clean_acc": 0.9, "adv_acc": 0.345, "adv_acc_low": 0.283,
           "adv_acc_high": 0.412, "success_rate": 0.6, "l2_median": None, "linf_median": None,
           "params": {}, "steps": 10}
    shown = sweep_display(pd.DataFrame([row])).iloc[0]
    assert shown["clean accuracy (95% interval)"] == confidence.text(0.9, 200)
    assert shown["robust accuracy (95% interval)"] == "34.5% (28.3-41.2)"


def test_compare_flags_only_the_figure_that_overstates(tmp_path, monkeypatch):
    """A sweep with an FGSM row and PGD rows at two budgets: only PGD at the audit's budget,
    above the audit beyond chance, carries the ⚠; its other rows and the FGSM row do not."""
    import json

    from core.app.compare import compare_display
    from core.jobs.store import RunStore
    from core.paths import run_dir

    monkeypatch.setenv("ROBUSTLAB_ARTIFACTS", str(tmp_path))
    store = RunStore()
    model = store.create_run("train", {"dataset": "mnist", "defense": "pgd-at"})
    store.set_summary(model, {"final": {"test_acc": 0.98}, "n_test": 10000})
    store.set_status(model, "completed")
    audit = store.create_run("audit", {"model_run": model, "norm": "linf", "eps": 0.3,
                                       "version": "standard", "seed": 0})
    store.set_summary(audit, {"robust_acc": 0.1, "n": 200, "version": "standard",
                              "threat_label": "L∞ ε=0.3", "verdict": "trusted"})
    (run_dir(audit) / "audit.json").write_text(json.dumps({"robust_acc": 0.1, "n": 200,
        "examples": [{"index": k, "robust": k < 20} for k in range(200)]}))
    store.set_status(audit, "completed")
    rows = [{"attack": a, "norm": "linf", "eps": e, "budget": e, "adv_acc": acc, "n": 200,
             "params": {"steps": 40} if a == "pgd" else {}}
            for a, e, acc in (("fgsm", 0.3, 0.9), ("pgd", 0.3, 0.7), ("pgd", 0.1, 0.95))]
    sweep = store.create_run("sweep", {"model_run": model, "seed": 0})
    store.set_summary(sweep, {"rows": rows, "n": 200})
    store.set_status(sweep, "completed")
    column = compare_display(store, [store.get(model)]).iloc[:, 0]
    flagged = [k for k, v in column.items() if "⚠" in str(v)]
    assert flagged == ["PGD-40 at L∞ ε 0.3 (sweep)"]
    assert "on 200 images" in column["PGD-40 at L∞ ε 0.1 (sweep)"]
