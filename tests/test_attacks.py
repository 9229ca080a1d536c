import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.attacks import PGD, build_attack
from core.attacks.semantic import hsv_to_rgb, rgb_to_hsv
from core.evaluation import run_attack, sanity_warnings, sweep
from core.models import build_model
from core.paths import InputError

from conftest import requires_mnist

FAST = {
    "noise": {"sigma": 0.1},
    "fgsm": {"eps": 0.05},
    "pgd": {"eps": 0.05, "steps": 3},
    "pgd-l2": {"eps": 0.5, "steps": 3, "norm": "l2"},
    "pgd-targeted": {"eps": 0.05, "steps": 3, "targeted": True, "restarts": 2},
    "semantic": {"mode": "negative"},
    "semantic-hsv": {"mode": "hsv", "trials": 5},
    "cw": {"steps": 5, "search_steps": 2},
}


def _attack(key):
    return build_attack(key.split("-")[0], **FAST[key])


def _tiny(channels=3, size=16, seed=0):
    torch.manual_seed(seed)
    return build_model("seed-resnet", (channels, size, size), 10, width=4, blocks=1)


def _batch(n=4, channels=3, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)


@pytest.mark.parametrize("key", list(FAST))
def test_attack_contract(key):
    attack = _attack(key)
    model = _tiny()
    x, y = _batch()
    model.train()
    marker = [torch.full_like(p, 3.0) for p in model.parameters()]
    for p, m in zip(model.parameters(), marker):
        p.grad = m.clone()
    adv = attack(model, x, y)
    assert model.training, "previous mode must be restored"
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(p.grad, m) for p, m in zip(model.parameters(), marker))
    assert adv.shape == x.shape and adv.dtype == x.dtype and adv.device == x.device
    assert not adv.requires_grad and adv.grad_fn is None
    assert adv.min() >= 0 and adv.max() <= 1
    threat = attack.threat()
    if threat is not None and threat.norm != "none":
        delta = (adv - x).flatten(1)
        if getattr(attack, "norm", "linf") == "linf":
            assert delta.abs().max() <= attack.eps + 1e-6
        else:
            assert delta.norm(dim=1).max() <= attack.eps + 1e-5
    model.eval()
    again = attack(model, x, y)
    assert not model.training
    assert torch.equal(adv, again), "same seed must give the same output"
    one = attack(model, x[:1], y[:1])
    assert one.shape == (1, 3, 16, 16)


def test_pgd_one_step_without_random_start_equals_fgsm():
    model, (x, y) = _tiny(), _batch(8)
    fgsm = build_attack("fgsm", eps=0.03)(model, x, y)
    pgd = PGD(eps=0.03, steps=1, step_size=0.03, random_start=False)(model, x, y)
    assert torch.allclose(fgsm, pgd, atol=1e-7)


def test_negation_twice_is_identity():
    model, (x, y) = _tiny(), _batch()
    neg = build_attack("semantic", mode="negative")
    assert torch.allclose(neg(model, neg(model, x, y), y), x, atol=1e-7)


def test_hsv_round_trip():
    x, _ = _batch(6)
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)


def test_hsv_needs_rgb():
    model, (x, y) = _tiny(1), _batch(2, 1)
    with pytest.raises(InputError, match="needs 3-channel RGB"):
        build_attack("semantic", mode="hsv")(model, x, y)


@pytest.mark.parametrize("name, params, message", [
    ("deepfool", {}, "valid attacks: noise, fgsm, pgd, semantic, cw"),
    ("fgsm", {"eps": -0.1}, r"eps must be a number in \[0.0, 1.0\]"),
    ("fgsm", {"eps": 1.5}, r"eps must be a number in \[0.0, 1.0\]"),
    ("pgd", {"steps": 0}, "steps must be a positive whole number"),
    ("pgd", {"norm": "l1"}, "valid norms: linf, l2"),
    ("pgd", {"epsilon": 0.1}, "unknown parameter"),
])
def test_bad_attack_parameters(name, params, message):
    with pytest.raises(InputError, match=message):
        build_attack(name, **params)


def test_inputs_outside_unit_range_are_refused():
    model = _tiny()
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        build_attack("fgsm")(model, torch.full((1, 3, 16, 16), 2.0), torch.zeros(1, dtype=torch.long))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(["noise", "fgsm", "pgd"]), eps=st.floats(0, 1),
       batch=st.integers(1, 3), channels=st.sampled_from([1, 3]), size=st.sampled_from([8, 12]),
       steps=st.integers(1, 3), l2=st.booleans())
def test_property_any_budget_and_shape_keeps_the_contract(name, eps, batch, channels, size,
                                                          steps, l2):
    params = {"noise": {"sigma": eps}, "fgsm": {"eps": eps},
              "pgd": {"eps": eps, "steps": steps, "norm": "l2" if l2 else "linf"}}[name]
    attack = build_attack(name, **params)
    model = _tiny(channels, size)
    x, y = _batch(batch, channels, size)
    adv = attack(model, x, y)
    assert adv.shape == x.shape and 0 <= adv.min() and adv.max() <= 1
    if name != "noise":
        delta = (adv - x).flatten(1)
        bound = delta.norm(dim=1).max() if params.get("norm") == "l2" else delta.abs().max()
        assert bound <= eps + 1e-5


def test_sanity_warnings_catch_softmax_outputs_and_zero_gradients():
    model = torch.nn.Sequential(_tiny(), torch.nn.Softmax(dim=1))
    x, y = _batch()
    assert any("probabilities" in w for w in sanity_warnings(model, x, y))
    flat = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 10))
    torch.nn.init.zeros_(flat[1].weight)
    assert any("exactly zero" in w for w in sanity_warnings(flat, x, y))
    model = _tiny().train()
    assert any("train mode" in w for w in sanity_warnings(model, x, y))


@requires_mnist
def test_attack_strength_ordering_on_real_mnist(mnist_model, mnist_test):
    model, _, _ = mnist_model
    data = mnist_test.subset(300, seed=0)
    attacks = [build_attack("noise", sigma=0.1), build_attack("fgsm"), build_attack("pgd", steps=20)]
    result = sweep(model, data, attacks, [0.1, 0.3])
    acc = {(r["attack"], r["budget"]): r["adv_acc"] for r in result["rows"]}
    for eps in (0.1, 0.3):
        assert acc[("pgd", eps)] <= acc[("fgsm", eps)] <= acc[("noise", eps)]
    assert acc[("pgd", 0.3)] < 0.10
    worst = {(w["norm"], w["eps"]): w for w in result["worst_case"]}
    assert worst[("linf", 0.3)]["worst_case_acc"] <= acc[("pgd", 0.3)]
    assert worst[("linf", 0.3)]["attacks"] == "fgsm, pgd"  # noise is never part of a worst case
    assert all(r["kind"] == "corruption" for r in result["rows"] if r["attack"] == "noise")
    assert result["warnings"] == []


@requires_mnist
def test_cw_finds_smaller_l2_perturbations_than_pgd_l2(mnist_model, mnist_test):
    model, _, _ = mnist_model
    data = mnist_test.subset(40, seed=1)
    cw = run_attack(model, data, build_attack("cw", steps=100, lr=0.05, search_steps=6))
    pgd = run_attack(model, data, build_attack("pgd", norm="l2", eps=3.0, steps=20))
    both = ((cw.adv_pred != cw.labels) & (pgd.adv_pred != pgd.labels)
            & (cw.clean_pred == cw.labels))
    assert both.sum() >= 10
    assert cw.l2[both].median() < pgd.l2[both].median()
    assert cw.summary()["success_rate"] > 0.9


@requires_mnist
def test_apgd_settling_points_lazily_as_on_a_gpu_changes_no_result(mnist_model, mnist_test,
                                                                   monkeypatch):
    """On a GPU broken points stay in the batch until they are half of it (fewer batch
    sizes for cuDNN to plan); the points, the verdicts and the trace are the same."""
    from core.attacks import APGD, APGDT

    model, _, _ = mnist_model
    x, y = mnist_test.floats(slice(0, 120)), mnist_test.labels[:120]
    for cls in (APGD, APGDT):
        results = []
        for lazy in (False, True):
            monkeypatch.setattr(APGD, "_settle_lazily", staticmethod(lambda x, lazy=lazy: lazy))
            attack = cls(eps=0.15, steps=20, seed=0, **({"targets": 3} if cls is APGDT else {}))
            results.append((attack(model, x, y), list(attack.trace)))
        assert torch.equal(results[0][0], results[1][0]) and results[0][1] == results[1][1]


def test_folding_a_model_draws_no_random_numbers():
    from core.attacks.speed import folded
    from core.models import build_model

    model = build_model("seed-resnet", (1, 12, 12), 10, width=4, blocks=1).eval()
    state = torch.get_rng_state()
    folded(model)
    assert torch.equal(torch.get_rng_state(), state)  # a training's crops stay the same
