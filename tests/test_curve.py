"""Minimum-norm attacks (FMN, FAB) and the robustness curve made from them."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from core.curve import RobustnessCurve

from conftest import requires_mnist


def test_the_curve_of_a_hand_made_set_of_norms():
    # misclassified (0), broken at 0.05, 0.1 and 0.2, never broken (inf)
    curve = RobustnessCurve.of("linf", [0.0, 0.1, 0.2, math.inf, 0.05])
    assert curve.clean_accuracy() == 4 / 5
    assert [curve.accuracy(e) for e in (0.0, 0.04, 0.05, 0.07, 0.1, 0.2, 5.0)] == \
        [4 / 5, 4 / 5, 3 / 5, 3 / 5, 2 / 5, 1 / 5, 1 / 5]  # robust: norm strictly above eps
    assert curve.median() == pytest.approx(0.15)  # of the four classified correctly
    low, high = curve.interval(0.1)
    assert low < 2 / 5 < high
    assert curve.steps()[:3] == [(0.0, 0.8), (0.05, 0.8), (0.05, 0.6)]
    assert curve.steps()[-1] == (0.2, 0.2)
    with pytest.raises(ValueError, match="smallest norm"):
        RobustnessCurve.of("l2", [-1.0])
    assert math.isinf(RobustnessCurve.of("l2", [0.5, math.inf, math.inf]).median())


@given(st.lists(st.one_of(st.floats(0, 1), st.just(math.inf)), min_size=1, max_size=50),
       st.lists(st.floats(0, 2), min_size=2, max_size=10))
@settings(max_examples=60, deadline=None)
def test_robust_accuracy_never_rises_with_epsilon(norms, budgets):
    curve = RobustnessCurve.of("linf", norms)
    accuracies = [curve.accuracy(e) for e in sorted(budgets)]
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:]))
    assert all(a >= b for (_, a), (_, b) in zip(curve.steps(), curve.steps()[1:]))


@requires_mnist
@pytest.mark.parametrize("name", ["fmn", "fab"])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_a_minimum_norm_attack_returns_adversarial_points_at_the_norms_it_reports(
        mnist_model, mnist_test, name, norm):
    from core.attacks import build_attack
    from core.attacks.contract import perturbation_size

    model, _, _ = mnist_model
    x, y = mnist_test.floats(slice(0, 48)), mnist_test.labels[:48]
    model.train()  # the attack must restore the mode it found
    attack = build_attack(name, norm=norm, **({"steps": 30} if name == "fmn" else {"steps": 10}))
    x_adv, norms = attack.minimal(model, x, y)
    assert model.training and not x_adv.requires_grad
    model.eval()
    assert x_adv.shape == x.shape and x_adv.min() >= 0 and x_adv.max() <= 1
    found = torch.isfinite(norms)
    assert found.float().mean() > 0.8  # an undefended MNIST model breaks almost everywhere
    with torch.no_grad():
        fooled = model(x_adv).argmax(1) != y
    assert bool(fooled[found].all())  # adversarial where a norm is reported...
    assert torch.allclose(norms[found], perturbation_size(x_adv - x, norm)[found], atol=1e-5)
    wrong = model(x).argmax(1) != y
    assert bool((norms[wrong] == 0).all())  # ...and 0 where the image was misclassified
    assert bool((x_adv[~found] == x[~found]).all())  # the input itself where none was found


@requires_mnist
def test_the_curve_job_is_never_weaker_than_pgd_on_its_own_images(mnist_model, tmp_path):
    """The curve at an epsilon is at most PGD's robust accuracy on the same images (1 pp of
    slack, as issue 25 asks at 1,000 images; here 100 images, so 1 image); its files parse."""
    import json

    import pandas as pd

    from core.attacks import PGD
    from core.jobs.runner import create, execute
    from core.jobs.specs import CurveSpec
    from core.jobs.store import RunStore
    from core.paths import run_dir
    from core import data

    model, _, run_id = mnist_model
    store = RunStore()
    curve_id = create(store, CurveSpec(model_run=run_id, n=100, steps=50, check=False))
    execute(store, curve_id, echo=False)
    summary = store.get(curve_id).summary
    curve = RobustnessCurve.of("linf", [math.inf if v is None else v for v in summary["norms"]])
    split = data.load("mnist", "test").subset(100, 0)
    x, y = split.floats(), split.labels
    for eps in (0.05, 0.1):
        with torch.no_grad():
            pgd = (model(PGD(eps=eps, steps=20)(model, x, y)).argmax(1) == y).float().mean()
        assert curve.accuracy(eps) <= float(pgd) + 0.01, eps
    folder = run_dir(curve_id)
    rows = pd.read_csv(folder / "curve.csv")
    # FMN, FAB, misclassified; the check's APGD and examples earlier runs of these weights kept
    assert len(rows) == 100 and set(rows["found_by"].dropna()) <= {
        "fmn", "fab", "clean", "apgd-ce", "apgd-t", "stored"}
    saved = json.loads((folder / "curve.json").read_text())
    assert saved["n"] == 100 and len(saved["examples"]) == 100
    assert (folder / "curve.png").stat().st_size > 0
    # what the Attack page's slider shows: the images broken at or below eps, each at its
    # breaking point and classified wrongly there, the largest norm first
    from core.app.curves import broken_examples

    shown = broken_examples(store, store.get(curve_id), 0.1)
    assert len(shown) == min(8, curve.robust(0.0) - curve.robust(0.1))
    # a point an audit projected onto the 0.1 ball measures 0.1 in float32 (0.10000000149)
    from core.curve import FLOAT32_ROUNDING

    assert shown and all(0 < e["norm"] <= 0.1 * (1 + FLOAT32_ROUNDING) and
                         e["predicted"] != e["label"] for e in shown)
    assert [e["norm"] for e in shown] == sorted((e["norm"] for e in shown), reverse=True)


def test_a_curve_spec_refuses_what_it_cannot_run():
    from core.jobs.specs import CurveSpec
    from core.paths import InputError

    with pytest.raises(InputError, match="unknown curve attack 'pgd'; valid: fmn, fab"):
        CurveSpec(model_run="train-20260101-000000-abcdef", attacks="fmn,pgd")
    with pytest.raises(InputError, match="valid norms: linf, l2"):
        CurveSpec(model_run="train-20260101-000000-abcdef", norm="l1")
    assert CurveSpec(model_run="train-20260101-000000-abcdef", attacks="fab, fab").attacks == \
        ["fab"]


def test_the_band_holds_the_line_at_every_corner_and_matches_scipys_wilson():
    """Each corner's interval is its own accuracy's (the line never leaves its band), in
    closed form, equal to SciPy's Wilson interval; the band is computed once per curve."""
    import random

    from core import confidence
    from core.curve import RobustnessCurve

    rng = random.Random(3)
    curve = RobustnessCurve.of("linf", [0.0 if rng.random() < 0.1 else math.inf
                                        if rng.random() < 0.2 else rng.random() * 0.3
                                        for _ in range(1000)])
    band = curve.band()
    assert len(band) == len(curve.steps())
    for eps, acc, low, high in band:
        assert low <= acc <= high
        k = round(acc * curve.n)
        assert (low, high) == pytest.approx(confidence.interval(k, curve.n), abs=1e-9)
    assert curve.band() is band


@requires_mnist
def test_a_point_the_float32_check_rejects_is_searched_again_and_kept(mnist_model,
                                                                      mnist_test):
    """A search model that sees every image a little closer to the boundary than the float32
    model (as bf16 rounding can, at a margin of ±1e-6) stops short: its points are rejected by
    the float32 check. They are searched again in float32 and kept, and counted; misclassified
    images are attacked by neither FMN nor FAB."""
    from core.attacks import build_attack
    from core.audit.minimal import smallest_norms

    model, _, _ = mnist_model
    x, y = mnist_test.floats(slice(0, 40)), mnist_test.labels[:40]

    class Nearer(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, z):
            out = self.inner(z).clone()
            return out - 3.0 * torch.nn.functional.one_hot(out.argmax(1), out.shape[1])

    attacks = [build_attack("fmn", norm="linf", steps=30)]
    plain = smallest_norms(model, Nearer(), x, y, attacks, low_precision=False)
    found = smallest_norms(model, Nearer(), x, y, attacks, low_precision=True)
    from core.audit.cascade import predict_labels

    correct = predict_labels(model, x) == y
    assert int(found["researched"].sum()) > 0 and not bool(found["researched"][~correct].any())
    assert bool((found["norm"][~correct] == 0).all())
    rejected = found["researched"]
    assert bool(torch.isinf(plain["norm"][rejected]).any())  # without the second search: lost
    kept = rejected & torch.isfinite(found["norm"])
    assert int(kept.sum()) >= int(rejected.sum()) - 1  # kept after the float32 search
    assert bool((predict_labels(model, found["x_adv"][kept]) != y[kept]).all())


@requires_mnist
@pytest.mark.slow
def test_a_curve_after_an_audit_is_never_above_the_audit_on_its_images(mnist_model):
    """The audit keeps every adversarial example it found; a curve of the same weights starts
    from them, so at the audit's budget, on the audit's images, every image the audit broke
    has a smallest norm within that budget (with its example kept, and adversarial), even
    without the APGD check; with the check (the default), the budget is the audit's."""
    import json

    from core.audit.cascade import predict_labels
    from core.jobs.runner import create, execute
    from core.jobs.specs import AuditSpec, CurveSpec
    from core.jobs.store import RunStore
    from core.paths import run_dir
    from safetensors.torch import load_file

    model, _, run_id = mnist_model
    store = RunStore()
    audit = create(store, AuditSpec(model_run=run_id, eps=0.1, version="fast", n=100,
                                    steps=20, seed=5))
    execute(store, audit, echo=False)
    report = json.loads((run_dir(audit) / "audit.json").read_text())
    broken = {e["index"] for e in report["examples"]
              if e["clean_pred"] == e["label"] and not e["robust"]}
    assert broken and (run_dir(audit) / "adversarial.safetensors").exists()
    weak = create(store, CurveSpec(model_run=run_id, n=100, steps=5, attacks=["fmn"], seed=5,
                                   check=False))
    execute(store, weak, echo=False)
    summary = store.get(weak).summary
    assert audit in summary["started_from"] and summary["checked_at"] == []
    rows = {r["index"]: r for r in json.loads((run_dir(weak) / "curve.json").read_text())[
        "examples"]}
    assert all(rows[i]["smallest_norm"] is not None and rows[i]["smallest_norm"] <= 0.1 + 1e-6
               for i in broken)
    assert summary["found_by"].get("stored", 0) > 0  # 5 FMN steps alone fall short
    curve = RobustnessCurve.of("linf", [math.inf if v is None else v for v in summary["norms"]])
    assert curve.robust(0.1) <= round(report["robust_acc"] * report["n"])
    kept = load_file(str(run_dir(weak) / "curve_examples.safetensors"))
    hit = torch.isfinite(kept["norm"]) & (kept["norm"] > 0)
    assert bool((predict_labels(model, kept["x_adv"][hit]) != kept["labels"][hit]).all())
    checked = create(store, CurveSpec(model_run=run_id, n=100, steps=5, attacks=["fmn"],
                                      seed=5))
    execute(store, checked, echo=False)
    assert store.get(checked).summary["checked_at"] == [0.1]


def test_the_drawn_curve_is_the_exact_curve_at_each_point_within_its_band():
    """What the chart draws: at most ``points`` points, each the exact curve's accuracy at its
    epsilon, the line inside its band; a small curve keeps every corner."""
    import random

    from core.curve import RobustnessCurve

    rng = random.Random(5)
    for n, points in ((200, 1500), (10_000, 1500)):
        curve = RobustnessCurve.of("linf", [0.0 if rng.random() < 0.05 else math.inf
                                            if rng.random() < 0.1 else rng.random() * 0.3
                                            for _ in range(n)])
        drawn = curve.drawn()
        assert len(drawn) <= points + 1 and drawn[0][0] == 0.0
        for eps, acc, low, high in drawn:
            assert acc == curve.accuracy(eps) and low <= acc <= high
        if n == 200:  # every distinct norm is a corner
            corners = {v for v in curve.norms if 0 < v < math.inf}
            assert corners <= {d[0] for d in drawn}
    assert curve.drawn() is drawn
