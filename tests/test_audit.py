"""The audit: APGD, APGD-T and Square keep the attack contract, the cascade and its
indicators tell a masked model from an honest one, and the CLI writes the audit's files. The
comparison with a reference implementation is benchmarks/audit_reference.py."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from core.attacks.apgd import checkpoints, dlr_loss
from core.attacks import build_attack
from core.models import build_model
from core.attacks.square import square_fraction
from core.threat import ThreatModel

from conftest import ROOT, requires_mnist


def test_checkpoints_follow_the_paper():
    marks = checkpoints(100)
    assert marks[:4] == [22, 41, 57, 70]  # 0.22 N, then gaps 0.19, 0.16, 0.13 N ...
    gaps = [b - a for a, b in zip(marks, marks[1:])]
    assert min(gaps) >= 5 and gaps == sorted(gaps, reverse=True)


def test_square_schedule_halves_at_the_scaled_queries():
    assert square_fraction(0.8, 5, 10000) == 0.8
    assert square_fraction(0.8, 11, 10000) == 0.4
    assert square_fraction(0.8, 26, 5000) == 0.2  # 26 of 5,000 is 52 of 10,000
    assert square_fraction(0.8, 9000, 10000) == 0.8 / 2 ** 9


def test_dlr_is_invariant_to_logit_scale():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.1, 2.0, 1.0, 0.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(dlr_loss(z, y), dlr_loss(z * 100 + 7, y), atol=1e-5)


@pytest.mark.parametrize("name, params", [
    ("apgd-ce", {"eps": 0.1, "steps": 10}), ("apgd-ce", {"eps": 0.5, "norm": "l2", "steps": 8}),
    ("apgd-ce", {"eps": 0.1, "loss": "dlr", "steps": 6, "restarts": 2}),
    ("apgd-t", {"eps": 0.1, "steps": 5, "targets": 3}),
    ("apgd-t", {"eps": 0.5, "norm": "l2", "steps": 5, "targets": 2}),
    ("fab-t", {"eps": 0.1, "steps": 6, "targets": 3}),
    ("fab-t", {"eps": 0.5, "norm": "l2", "steps": 6, "targets": 2, "restarts": 2}),
    ("square", {"eps": 0.1, "queries": 50}), ("square", {"eps": 0.5, "norm": "l2", "queries": 50}),
])
def test_new_attacks_keep_the_contract(name, params):
    torch.manual_seed(0)
    model = build_model("seed-resnet", (3, 16, 16), 10, width=8, blocks=1).train()
    x = torch.rand(6, 3, 16, 16)
    with torch.no_grad():  # labels the model agrees with, so every attack has work to do
        y = model.eval()(x).argmax(1)
    model.train()
    for p in model.parameters():
        p.grad = None
    attack = build_attack(name, **params)
    adv = attack(model, x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype and not adv.requires_grad
    assert 0 <= adv.min() and adv.max() <= 1 and model.training
    assert all(p.grad is None for p in model.parameters())
    delta = (adv - x).flatten(1)
    size = delta.norm(dim=1).max() if params.get("norm") == "l2" else delta.abs().max()
    assert size <= params["eps"] + 1e-5
    assert attack.threat() == ThreatModel(params.get("norm", "linf"), params["eps"])


class Quantized(nn.Module):
    """A masked model: its input is quantized by a step with zero gradient (shattered
    gradients, Athalye et al. 2018), so gradient attacks see nothing."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.round(x * 4) / 4)


@requires_mnist
@pytest.mark.slow
def test_the_audit_flags_a_masked_model_and_passes_an_honest_one(mnist_model, mnist_test):
    from core import audit

    model, _, _ = mnist_model
    data = mnist_test.subset(60, seed=12)
    threat = ThreatModel("linf", 0.15)
    # gradients are zero on the masked model: more iterations cannot help the gradient stages
    quick = audit.stages("standard", threat, steps=10, queries=300)
    masked = Quantized(model).eval()
    result = audit.cascade(masked, data, quick)
    checks = {c["name"]: c for c in audit.indicators(masked, data, threat, result, quick, 10)}
    assert checks["gradients"]["status"] == "fail"
    assert checks["black-box"]["status"] == "fail"
    square = sum(b == "square" for b in result["broken_by"])
    assert square > 20  # Square breaks what APGD could not touch (46 of 60 when written)
    plan = audit.stages("standard", threat, steps=25, queries=300)
    honest = audit.cascade(model, data, plan)
    checks = audit.indicators(model, data, threat, honest, plan, 25)
    assert all(c["status"] == "pass" for c in checks), checks
    assert honest["robust_acc"] <= honest["stages"][0]["robust_acc"] <= honest["clean_acc"]


@pytest.mark.slow
@requires_mnist
def test_audit_from_the_command_line_writes_its_files(mnist_model, tmp_path):
    _, _, run_id = mnist_model
    proc = subprocess.run([sys.executable, "-m", "core", "audit", run_id, "--eps", "0.1",
                           "--version", "fast", "-n", "60", "--steps", "20"], cwd=ROOT,
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "after apgd-ce: robust accuracy" in proc.stderr
    audit_id = proc.stdout.split()[1].rstrip(":")
    from core.paths import run_dir

    folder = run_dir(audit_id)
    report = json.loads((folder / "audit.json").read_text())
    assert report["threat_model"] == {"norm": "linf", "eps": 0.1}
    assert report["version"] == "fast" and report["n"] == 60
    assert [s["attack"] for s in report["stages"]] == ["apgd-ce", "apgd-t"]
    assert len(report["indicators"]) >= 8
    assert {"index", "label", "clean_pred", "robust", "broken_by"} <= set(report["examples"][0])
    robust = sum(e["robust"] for e in report["examples"]) / report["n"]
    assert robust == pytest.approx(report["robust_acc"])
    assert (folder / "audit.csv").stat().st_size > 0 and "verdict" in (folder / "audit.md").read_text()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_plane_step_is_the_smallest_step_onto_the_plane_inside_the_box(norm):
    from core.attacks.fab import plane_step

    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 20, generator=gen)
    x = torch.rand(64, 20, generator=gen)
    other = torch.rand(64, 20, generator=gen)  # a point of the box, on the plane by definition
    c = (w * (other - x)).sum(1)
    d = plane_step(w, c, -x, 1 - x, norm)
    assert torch.allclose((w * d).sum(1), c, atol=1e-4)
    assert (x + d).min() >= -1e-6 and (x + d).max() <= 1 + 1e-6
    size = (lambda t: t.abs().max(1).values) if norm == "linf" else (lambda t: t.norm(dim=1))
    assert (size(d) <= size(other - x) + 1e-5).all()
    free = c / (w.abs().sum(1) if norm == "linf" else (w * w).sum(1))  # no box: closed form
    unboxed = free[:, None] * (w.sign() if norm == "linf" else w)
    assert (size(d) >= size(unboxed) - 1e-5).all()


def _bisected_plane_step(w, c, low, high, norm, rounds=200):
    """The same minimum by bisection on the clipped ray's length (slow, obviously right)."""
    s = torch.sign(c)[:, None]
    v = s * (torch.sign(w) if norm == "linf" else w)
    lo, hi = torch.zeros_like(c), torch.full_like(c, 1e12)
    for _ in range(rounds):
        mid = torch.where(lo > 0, (lo * hi).sqrt(), hi / 2 ** 40)
        short = (w * (mid[:, None] * v).clamp(low, high)).sum(1) * s.squeeze(1) < c.abs()
        lo, hi = torch.where(short, mid, lo), torch.where(short, hi, mid)
    return (hi[:, None] * v).clamp(low, high) * (c.abs() > 0)[:, None]


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_plane_step_is_exact_against_a_fine_bisection_even_where_no_step_reaches(norm):
    from core.attacks.fab import plane_step

    gen = torch.Generator().manual_seed(1)
    w = torch.randn(200, 300, generator=gen, dtype=torch.float64)
    w = w * (torch.rand(200, 300, generator=gen) < 0.8)  # zero weights: coordinates that never move
    x = torch.rand(200, 300, generator=gen, dtype=torch.float64)
    c = torch.randn(200, generator=gen, dtype=torch.float64) * 10 ** torch.empty(200).uniform_(
        -3, 2.5, generator=gen).double()  # some planes beyond the box: the nearest corner
    d, ref = plane_step(w, c, -x, 1 - x, norm), _bisected_plane_step(w, c, -x, 1 - x, norm)
    assert torch.allclose(d, ref, atol=1e-7), (d - ref).abs().max()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fab_finds_the_boundary_of_a_linear_model(norm):
    """For a linear two-class model the boundary is a plane: FAB-T reaches it exactly, so a
    point is broken when eps is a little above its distance and not when a little below."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.full((1, 1, 4, 4), 0.5)
    with torch.no_grad():
        logits = model(x)
        w = (model[1].weight[1] - model[1].weight[0]) * (1 if logits.argmax() == 0 else -1)
    y = logits.argmax(1)
    gap = float(logits.max() - logits.min())
    distance = gap / float(w.abs().sum() if norm == "linf" else w.norm())
    for eps, broken in ((distance * 1.02, True), (distance * 0.98, False)):
        adv = build_attack("fab-t", eps=eps, norm=norm, steps=20, targets=1)(model, x, y)
        assert (model(adv).argmax(1) != y).item() is broken


@pytest.mark.parametrize("norm, eps", [("linf", 0.1), ("l2", 0.5)])
def test_the_weaker_attacks_stay_in_the_ball_and_fail_the_indicator_when_they_win(norm, eps):
    from core.audit.failure import _noise_in_ball, weaker_indicator

    x = torch.rand(16, 1, 8, 8)
    delta = (_noise_in_ball(x, ThreatModel(norm, eps), 0) - x).flatten(1)
    size = delta.abs().max(1).values if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps + 1e-6).all() and (size > 0).all()
    assert weaker_indicator(0, 0, 16)["status"] == "pass"
    assert weaker_indicator(0, 3, 16)["status"] == "fail"
    assert weaker_indicator(2, 0, 16)["status"] == "fail"


@requires_mnist
def test_a_bfloat16_search_gives_float32_verdicts_within_a_point_of_a_float32_search(
        mnist_model, mnist_test):
    import torch

    from core import audit
    from core.attacks.speed import LowPrecision

    model, _, _ = mnist_model
    data = mnist_test.subset(100, seed=21)
    x = data.floats(slice(0, 50))
    with torch.no_grad():
        exact, low = model.eval()(x), LowPrecision(model)(x)
    assert low.dtype == torch.float32 and (low - exact).abs().max() < 0.25
    assert (low.argmax(1) == exact.argmax(1)).float().mean() >= 0.98
    plan = audit.stages("fast", ThreatModel("linf", 0.1), steps=20)
    full = audit.cascade(model, data, plan)
    half = audit.cascade(model, data, plan, low_precision=True)
    assert abs(half["robust_acc"] - full["robust_acc"]) <= 0.02
    assert half["silent"] == 0  # rounding never passes for a success that was not returned


class _ClaimsSuccess:
    """An attack that says it broke every point but returns them untouched."""

    found_any = None

    def __call__(self, model, x, y):
        self.calls = getattr(self, "calls", 0) + 1
        self.found_any = torch.ones(len(x), dtype=torch.bool)
        return x.clone()


def test_a_low_precision_success_float32_does_not_confirm_is_searched_again_in_float32():
    import torch

    from core.audit.cascade import confirmed
    from core.attacks.speed import LowPrecision

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3)).eval()
    x = torch.rand(5, 1, 2, 2)
    y = model(x).argmax(1)  # every point correctly classified, so nothing was really broken
    attack = _ClaimsSuccess()
    search = LowPrecision(model)
    adv, pred, found = confirmed(attack, model, search, x, y, attack(search, x, y))
    assert attack.calls == 2  # the float32 search again, on the five doubted points
    assert torch.equal(pred, y) and found.all()  # float32 too claims it: a real silent success
    attack = _ClaimsSuccess()
    confirmed(attack, model, model, x, y, attack(model, x, y))
    assert attack.calls == 1  # a float32 search is not repeated


def test_rows_too_close_for_bfloat16_to_order_are_computed_in_float32():
    import torch

    from core.attacks.contract import input_grad
    from core.attacks.speed import LowPrecision, folded

    torch.manual_seed(0)
    model = build_model("seed-resnet", (1, 12, 12), 10, width=4, blocks=1).eval()
    x, y = torch.rand(16, 1, 12, 12), torch.randint(0, 10, (16,))
    exact = folded(model)(x).detach()
    every = LowPrecision(model, near=1e9)  # every row counts as close
    assert torch.allclose(every(x), exact, atol=1e-5)
    grad_every, _ = input_grad(every, x, y, torch.nn.functional.cross_entropy)
    grad_exact, _ = input_grad(model, x, y, torch.nn.functional.cross_entropy)
    assert torch.allclose(grad_every, grad_exact, atol=1e-5)  # gradients take the same path
    none = LowPrecision(model, near=0.0)(x).detach()  # only exact ties: all in bfloat16
    assert not torch.allclose(none, exact, atol=1e-5) and (none - exact).abs().max() < 0.25


def test_the_folded_model_follows_a_training_forward_and_attacks_keep_the_models_mode():
    import torch

    from core.attacks import PGD
    from core.audit.failure import gradient_indicator
    from core.attacks.speed import LowPrecision, folded

    torch.manual_seed(0)
    model = build_model("seed-resnet", (1, 12, 12), 10, width=4, blocks=1).eval()
    x, y = torch.rand(8, 1, 12, 12), torch.randint(0, 10, (8,))
    with torch.no_grad():
        before = folded(model)(x)
        model.train()(torch.rand(8, 1, 12, 12) * 3)  # moves the running statistics in place
        model.eval()
        after, exact = folded(model)(x), model(x)
    assert not torch.allclose(before, after) and torch.allclose(after, exact, atol=1e-4)
    PGD(eps=0.1, steps=2)(LowPrecision(model), x, y)
    assert not model.training  # the wrapper restored the model's own mode, not train mode
    model.train()
    stats = [t.clone() for t in model.buffers()]
    gradient_indicator(model, x, y)
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert model.training


def test_the_standard_budget_is_the_one_the_field_reports_for_each_dataset():
    from core.paths import InputError
    from core.threat import standard_threat

    assert standard_threat("mnist") == ThreatModel("linf", 0.3)
    assert standard_threat("cifar10", "linf").label() == "L∞ ε=0.03137 (8/255)"
    assert standard_threat("cifar10", "l2") == ThreatModel("l2", 0.5)
    assert standard_threat("imagefolder:/x", "linf") == ThreatModel("linf", 8 / 255)
    with pytest.raises(InputError, match="valid: linf, l2"):
        standard_threat("mnist", "none")
