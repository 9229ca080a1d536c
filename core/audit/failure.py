"""Automatic checks for attack failure (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; Pintor et al., NeurIPS 2022, "Indicators of Attack Failure"), the audit's report
and its verdict. Each indicator says pass, warn or fail, what that means, and what to do."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from core import confidence
from core.comparison import compare
from core.attacks import APGD, PGD
from core.attacks.contract import (attack_mode, input_grad, margin, outputs_are_probabilities,
                                   watching)
from core.audit.cascade import Stage, predict_labels
from core.data import TensorData
from core.threat import ThreatModel


def _indicator(name: str, status: str, detail: str) -> dict:
    return {"name": name, "status": status, "detail": detail}


# The stated test of the counting indicators: a count of k examples in n fails only when it is
# unlikely (p < SIGNIFICANCE) if such examples occurred independently at the tolerated rate,
# the run-to-run wobble of a randomly started attack. One example in 200 is chance; ten are not.
SIGNIFICANCE = 0.05
TOLERANCE = {"optimisation": 0.005, "black-box": 0.002, "weaker beats stronger": 0.005,
             "monotone": 0.005}


def _by_chance(name: str, k: int, n: int) -> tuple[bool, str]:
    """Whether ``k`` of ``n`` is within chance for indicator ``name``, and the sentence saying
    how likely that count is."""
    rate = TOLERANCE[name]
    p = confidence.chance(k, max(n, 1), rate)
    if k == 0:
        return True, f"0 of {n}"
    return p >= SIGNIFICANCE, (f"{k} of {n} ({k / max(n, 1):.1%}); P(at least {k} by chance at "
                               f"a tolerated rate of {rate:.1%}) = {p:.2g}")


def gradient_indicator(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """1. Zero or non-finite input gradients on any evaluated example."""
    # the logit margin, not cross-entropy: a confident softmax rounds CE's gradient to zero in
    # float32 without any masking
    with attack_mode(model):  # eval mode: a training forward would move BatchNorm's statistics
        grad, _ = input_grad(model, x, y, lambda z, t: margin(z, t).sum())
    norms = grad.flatten(1).norm(dim=1)
    bad = int((~torch.isfinite(norms) | (norms == 0)).sum())
    if bad:
        return _indicator("gradients", "fail", f"{bad} of {len(x)} examples have zero or "
                          "non-finite input gradients: gradient attacks cannot work there "
                          "(masking or a non-differentiable layer); trust only Square's number, "
                          "or make the model differentiable")
    return _indicator("gradients", "pass", f"input gradients are finite and non-zero on all "
                      f"{len(x)} examples checked")


def randomness_indicator(model: nn.Module, x: torch.Tensor) -> dict:
    """2. Logits differ across 5 identical forward passes."""
    with torch.no_grad(), attack_mode(model):
        outs = [model(x).float() for _ in range(5)]
    spread = max(float((o - outs[0]).abs().max()) for o in outs)
    if spread > 1e-4:
        return _indicator("randomness", "fail", f"logits change by up to {spread:.3g} between "
                          "identical passes: the model is random, so attacks need expectation "
                          "over transformation (EOT) and one run's number is not a verdict")
    return _indicator("randomness", "pass", "5 identical forward passes give the same logits")


def probability_indicator(model: nn.Module, x: torch.Tensor) -> dict:
    """3. Outputs look like probabilities rather than logits."""
    with torch.no_grad(), attack_mode(model):
        out = model(x).float()
    if outputs_are_probabilities(out):
        return _indicator("logits", "fail", "the model outputs probabilities, not logits: "
                          "cross-entropy gradients vanish on saturated softmaxes; remove the "
                          "softmax from the model")
    return _indicator("logits", "pass", "the model outputs logits")


def silent_indicator(silent: int, n: int) -> dict:
    """4. An attack found a misclassified point but did not return it."""
    if silent:
        return _indicator("silent success", "fail", f"{silent} point(s) were misclassified "
                          "during an attack but the returned point was not: the attack's "
                          "bookkeeping loses successes; report it")
    return _indicator("silent success", "pass", f"every success found was returned ({n} images)")


def optimisation_indicator(trace: list[int], extra_broken: int, n: int) -> dict:
    """5. The attack still makes progress over the last 10% of iterations (points broken
    there), or doubling APGD's iterations lowers robust accuracy by more than 0.5 pp."""
    late = trace[-1] - trace[-max(2, len(trace) // 10)] if trace else 0
    extra_ok, extra_text = _by_chance("optimisation", extra_broken, n)
    late_ok, late_text = _by_chance("optimisation", late, n)
    if not extra_ok:
        return _indicator("optimisation", "fail", f"doubling APGD-CE's iterations broke more "
                          f"examples: {extra_text}: the attack had not converged; raise the "
                          "iterations until the number settles")
    if not late_ok:
        return _indicator("optimisation", "warn", f"APGD-CE still broke examples in its last 10% "
                          f"of iterations: {late_text}: it had not converged; more iterations "
                          "may lower robust accuracy")
    return _indicator("optimisation", "pass", f"APGD-CE broke {late} example(s) in its last 10% "
                      f"of iterations, and doubling its iterations broke {extra_broken} more "
                      f"({extra_text}): within chance")


def unbounded_indicator(accuracy: float, n: int) -> dict:
    """6. At an unbounded budget accuracy must reach 0%."""
    if accuracy > 0:
        return _indicator("unbounded", "fail", f"with an unbounded budget APGD-CE still leaves "
                          f"{accuracy:.1%} of {n} images correct: the attack is failing "
                          "(masked gradients or a bug), not the model succeeding")
    return _indicator("unbounded", "pass", f"an unbounded budget breaks all {n} images checked")


def blackbox_indicator(square_broken: int, n: int, ran: bool) -> dict:
    """7. Square breaks examples that APGD-CE and APGD-T did not, beyond 0.2 pp."""
    if not ran:
        return _indicator("black-box", "warn", "Square did not run (fast version), so "
                          "gradient masking was not checked by a gradient-free attack; run the "
                          "standard version for that check")
    within, text = _by_chance("black-box", square_broken, n)
    if not within:
        return _indicator("black-box", "fail", f"gradient-free Square broke examples that APGD "
                          f"missed: {text}: gradients are masked; trust the cascade's number, "
                          "not PGD-style ones")
    return _indicator("black-box", "pass", f"Square broke {square_broken} example(s) APGD "
                      f"missed ({text}): within chance")


def weaker_indicator(fgsm_only: int, noise_only: int, n: int) -> dict:
    """8. A single gradient step (FGSM, or its L2 form) or random noise inside the ball breaks
    an example that APGD-CE did not, in the same threat model."""
    name = "weaker beats stronger"
    fgsm_within, fgsm_text = _by_chance(name, fgsm_only, n)
    noise_within, noise_text = _by_chance(name, noise_only, n)
    if not (fgsm_within and noise_within):
        return _indicator(name, "fail", f"weaker attacks broke examples that APGD-CE did not: "
                          f"a single gradient step (FGSM) {fgsm_text}, random noise inside the "
                          f"ball {noise_text}: a stronger attack lost to a weaker one; check "
                          "the attack's step sizes and the model's gradients")
    if fgsm_only or noise_only:
        return _indicator(name, "pass", f"a single gradient step (FGSM) broke {fgsm_only} and "
                          f"random noise {noise_only} example(s) APGD-CE missed, within chance "
                          f"(FGSM: {fgsm_text}; noise: {noise_text})")
    return _indicator("weaker beats stronger", "pass", f"neither a single gradient step (FGSM) "
                      f"nor random noise inside the ball broke anything APGD-CE missed ({n} "
                      "images)")


def _noise_in_ball(x: torch.Tensor, threat: ThreatModel, seed: int) -> torch.Tensor:
    """A random point of the threat model's ball around each image (inside [0, 1])."""
    gen = torch.Generator().manual_seed(seed)
    draw = torch.rand(x.shape, generator=gen) * 2 - 1 if threat.norm == "linf" else \
        torch.randn(x.shape, generator=gen)
    draw = draw.to(x)
    if threat.norm == "l2":
        draw = draw / draw.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (x.dim() - 1))
    return (x + threat.eps * draw).clamp(0, 1)


def monotone_indicator(points: list[tuple[float, float]], rises: list[int] | None = None,
                       n: int = 0) -> dict:
    """9. Robust accuracy rises with epsilon. ``rises[k]``: images robust at the larger budget
    of pair k and broken at the smaller, on the same ``n`` images; a count within chance (as
    the other counting indicators decide) is no failure: one image must not fail a verdict."""
    text = ", ".join(f"{a:.1%} at {e:.4g}" for e, a in points)
    if rises is None:  # accuracies only: any rise counts
        rises = [int(b[1] > a[1] + 1e-9) for a, b in zip(points, points[1:])]
        n = max(n, 1)
    for k, count in enumerate(rises):
        within, said = _by_chance("monotone", count, n)
        if count and not within:
            (e1, a1), (e2, a2) = points[k], points[k + 1]
            return _indicator("monotone", "fail", f"robust accuracy rose from {a1:.1%} at eps "
                              f"{e1:.4g} to {a2:.1%} at eps {e2:.4g}: {said} images broken at "
                              "the smaller budget survived the larger; a larger budget can only "
                              "help the attacker, so the attack is failing somewhere")
    if any(rises):
        return _indicator("monotone", "pass", f"robust accuracy falls with epsilon within "
                          f"chance ({text}; at most {max(rises)} image(s) of {n} survived a "
                          "larger budget that a smaller broke)")
    return _indicator("monotone", "pass", f"robust accuracy falls with epsilon ({text})")


OWN_NUMBERS = "own numbers"


def own_numbers_indicator(figures: list[dict], audit: dict) -> dict:
    """10. The lab's own stored robust accuracies of this model at this threat model (attack
    runs, sweeps, the Attack page's grid, curves, the overfitting guard) against the audit
    (``acc``, ``n`` and its per-image ``positions`` and ``robust``), each judged by
    :func:`core.comparison.compare`: paired on shared images, by intervals across others; a
    single-step attack is expected weaker and the guard's training images are other images."""
    if not figures:
        return _indicator(OWN_NUMBERS, "pass", "no other robust accuracy of this model at this "
                          "threat model is stored: nothing to compare")
    judged = [(f, compare(f, audit)) for f in figures]
    over = [(f, j) for f, j in judged if j["overstates"]]
    listed = "; ".join(f"{f['what']}: {confidence.text(f['acc'], f['n'])}, {j['sentence']}"
                       for f, j in (over or judged))
    audit_text = confidence.text(audit["acc"], audit["n"])
    if over:
        return _indicator(OWN_NUMBERS, "fail", f"{len(over)} of {len(figures)} stored figure(s) "
                          f"overstate the audit's {audit_text} ({listed})")
    return _indicator(OWN_NUMBERS, "pass", f"none of the {len(figures)} stored figure(s) "
                      f"overstates the audit's {audit_text} ({listed})")


def _accuracy(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor) -> tuple[float,
                                                                                   torch.Tensor]:
    adv = attack(model, x, y)
    ok = predict_labels(model, adv) == y
    return float(ok.float().mean()), ok


CHECKS = 10  # the indicators, for progress counts


def indicators(model: nn.Module, data: TensorData, threat: ThreatModel, result: dict,
               plan: list[Stage], steps: int = 100, seed: int = 0, probe: int = 128,
               figures: list[dict] | None = None,
               progress: Callable[[float, str], None] | None = None) -> list[dict]:
    """All ten indicators for an audit ``result`` of ``model`` on ``data``; ``figures`` are
    the lab's stored robust accuracies of the model at ``threat`` (:mod:`core.jobs.claims`).
    ``progress(done, name)`` hears each check as it ends, and how far the long ones are."""
    tell = progress or (lambda _done, _name: None)
    device = next(model.parameters()).device
    x = data.floats(slice(0, probe)).to(device)
    y = data.labels[:probe].to(device)
    out = [gradient_indicator(model, x, y), randomness_indicator(model, x),
           probability_indicator(model, x), silent_indicator(result["silent"], result["n"])]
    tell(len(out), "optimisation check: APGD with twice the iterations")
    still = [i for i, b in enumerate(result["broken_by"]) if b is None]
    extra = 0
    if still:
        longer = APGD(eps=threat.eps, norm=threat.norm, steps=2 * steps, seed=seed)
        xs, ys = data.floats(torch.tensor(still)).to(device), data.labels[still].to(device)
        with watching(longer, lambda f: tell(4 + f, "optimisation check")):
            acc, _ = _accuracy(model, longer, xs, ys)
        extra = round((1 - acc) * len(still))
    out.append(optimisation_indicator(result["trace"], extra, result["n"]))
    tell(len(out), "unbounded check")
    huge = ThreatModel("linf", 1.0) if threat.norm == "linf" else ThreatModel("l2", 1000.0)
    acc, _ = _accuracy(model, APGD(eps=huge.eps, norm=huge.norm, steps=20, seed=seed), x, y)
    out.append(unbounded_indicator(acc, len(x)))
    tell(len(out), "weaker-attack and monotonicity checks")
    ran = any(s.name == "square" for s in plan)
    square = sum(b == "square" for b in result["broken_by"])
    out.append(blackbox_indicator(square, result["n"], ran))
    # one full step: FGSM for L-inf, its L2 form (the normalized gradient) for L2
    one_step = PGD(eps=threat.eps, norm=threat.norm, steps=1, step_size=threat.eps,
                   random_start=False)
    _, weak_ok = _accuracy(model, one_step, x, y)
    noise_ok = predict_labels(model, _noise_in_ball(x, threat, seed)) == y
    apgd_missed = torch.tensor([b not in ("clean", "apgd-ce")
                                for b in result["broken_by"][:len(x)]], device=device)
    out.append(weaker_indicator(int((~weak_ok & apgd_missed).sum()),
                                int((~noise_ok & apgd_missed).sum()), len(x)))
    points, oks = [], []
    for share in (0.25, 0.5, 1.0):
        acc, ok = _accuracy(model, APGD(eps=threat.eps * share, norm=threat.norm,
                                        steps=max(10, steps // 5), seed=seed), x, y)
        points.append((threat.eps * share, acc))
        oks.append(ok)
        tell(len(out) + 0.3 * len(points), "monotonicity check")
    rises = [int((later & ~earlier).sum()) for earlier, later in zip(oks, oks[1:])]
    out.append(monotone_indicator(points, rises, len(x)))
    audit = {"acc": result["robust_acc"], "n": result["n"], "seed": seed,
             "positions": data.original_index().tolist(),
             "robust": [b is None for b in result["broken_by"]]}
    out.append(own_numbers_indicator(figures or [], audit))
    tell(len(out), "indicators done")
    return out


def report(spec, threat: ThreatModel, result: dict, checks: list[dict], data: TensorData
           ) -> dict:
    """The audit's record: threat model, version, accuracies, stages, indicators, and per
    example its original index, label, clean prediction, robustness and breaking stage."""
    examples = [{"index": int(i), "label": int(lab), "clean_pred": int(p), "robust": b is None,
                 "broken_by": b}
                for i, lab, p, b in zip(data.original_index().tolist(), data.labels.tolist(),
                                        result["clean_pred"], result["broken_by"])]
    n = result["n"]
    stages = [dict(s, robust_acc_ci=confidence.accuracy_interval(s["robust_acc"], n))
              for s in result["stages"]]
    return {"threat_model": threat.to_dict(), "threat_label": threat.label(),
            "version": spec.version, "n": n, "clean_acc": result["clean_acc"],
            "clean_acc_ci": confidence.accuracy_interval(result["clean_acc"], n),
            "robust_acc": result["robust_acc"],
            "robust_acc_ci": confidence.accuracy_interval(result["robust_acc"], n),
            "interval": "95% Wilson", "stages": stages,
            "indicators": checks, "steps": spec.steps, "queries": spec.queries,
            "search_precision": result.get("search_precision", "fp32"),
            "losses": result.get("losses", {}),
            "verdict": verdict(checks, result["robust_acc"]), "examples": examples}


NOTHING_LEFT = "nothing left to check"


def verdict(checks: list[dict], robust_acc: float | None = None) -> str:
    """'trusted', 'doubtful' (a warning) or 'failed' (a failing indicator) about the audit's own
    number; at 0% robust accuracy without a failing indicator, 'nothing left to check' (the
    indicators that look at surviving points had none). The own-numbers indicator judges the
    lab's other figures, not the audit, so it does not enter the verdict."""
    statuses = {c["status"] for c in checks if c["name"] != OWN_NUMBERS}
    if "fail" in statuses:
        return "failed"
    if robust_acc == 0:
        return NOTHING_LEFT
    return "doubtful" if "warn" in statuses else "trusted"
