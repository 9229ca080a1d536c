"""Automatic checks for attack failure (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; Pintor et al., NeurIPS 2022, "Indicators of Attack Failure"), the audit's report
and its verdict. Each indicator says pass, warn or fail, what that means, and what to do."""
from __future__ import annotations

import torch
import torch.nn as nn

from core.attacks import APGD, PGD
from core.attacks.contract import attack_mode, input_grad, margin, outputs_are_probabilities
from core.audit.cascade import Stage, predict_labels
from core.data import TensorData
from core.threat import ThreatModel


def _indicator(name: str, status: str, detail: str) -> dict:
    return {"name": name, "status": status, "detail": detail}


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
    if extra_broken / max(n, 1) > 0.005:
        return _indicator("optimisation", "fail", f"doubling APGD-CE's iterations broke "
                          f"{extra_broken} more example(s) ({extra_broken / n:.1%}): the attack "
                          "had not converged; raise the iterations until the number settles")
    if late / max(n, 1) > 0.005:
        return _indicator("optimisation", "warn", f"APGD-CE still broke {late} example(s) in its "
                          "last 10% of iterations: it had not converged; more iterations may "
                          "lower robust accuracy")
    return _indicator("optimisation", "pass", f"APGD-CE broke {late} example(s) in its last 10% "
                      f"of iterations, and doubling its iterations broke {extra_broken} more")


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
    if square_broken / max(n, 1) > 0.002:
        return _indicator("black-box", "fail", f"gradient-free Square broke {square_broken} "
                          f"example(s) ({square_broken / n:.1%}) that APGD missed: gradients "
                          "are masked; trust the cascade's number, not PGD-style ones")
    return _indicator("black-box", "pass", f"Square broke {square_broken} example(s) APGD missed")


def weaker_indicator(fgsm_only: int, noise_only: int, n: int) -> dict:
    """8. A single gradient step (FGSM, or its L2 form) or random noise inside the ball breaks
    an example that APGD-CE did not, in the same threat model."""
    if fgsm_only or noise_only:
        return _indicator("weaker beats stronger", "fail", f"a single gradient step (FGSM) broke "
                          f"{fgsm_only} and random noise inside the ball {noise_only} example(s) "
                          "that APGD-CE did not: a stronger attack lost to a weaker one; check "
                          "the attack's step sizes and the model's gradients")
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


def monotone_indicator(points: list[tuple[float, float]]) -> dict:
    """9. Robust accuracy rises with epsilon across a sweep."""
    rises = [(a, b) for a, b in zip(points, points[1:]) if b[1] > a[1] + 1e-9]
    if rises:
        (e1, a1), (e2, a2) = rises[0]
        return _indicator("monotone", "fail", f"robust accuracy rose from {a1:.1%} at eps "
                          f"{e1:.4g} to {a2:.1%} at eps {e2:.4g}: a larger budget can only "
                          "help the attacker, so the attack is failing somewhere")
    text = ", ".join(f"{a:.1%} at {e:.4g}" for e, a in points)
    return _indicator("monotone", "pass", f"robust accuracy falls with epsilon ({text})")


def _accuracy(model: nn.Module, attack, x: torch.Tensor, y: torch.Tensor) -> tuple[float,
                                                                                   torch.Tensor]:
    adv = attack(model, x, y)
    ok = predict_labels(model, adv) == y
    return float(ok.float().mean()), ok


def indicators(model: nn.Module, data: TensorData, threat: ThreatModel, result: dict,
               plan: list[Stage], steps: int = 100, seed: int = 0, probe: int = 128) -> list[dict]:
    """All nine indicators for an audit ``result`` of ``model`` on ``data``."""
    device = next(model.parameters()).device
    x = data.floats(slice(0, probe)).to(device)
    y = data.labels[:probe].to(device)
    out = [gradient_indicator(model, x, y), randomness_indicator(model, x),
           probability_indicator(model, x), silent_indicator(result["silent"], result["n"])]
    still = [i for i, b in enumerate(result["broken_by"]) if b is None]
    extra = 0
    if still:
        longer = APGD(eps=threat.eps, norm=threat.norm, steps=2 * steps, seed=seed)
        xs, ys = data.floats(torch.tensor(still)).to(device), data.labels[still].to(device)
        acc, _ = _accuracy(model, longer, xs, ys)
        extra = round((1 - acc) * len(still))
    out.append(optimisation_indicator(result["trace"], extra, result["n"]))
    huge = ThreatModel("linf", 1.0) if threat.norm == "linf" else ThreatModel("l2", 1000.0)
    acc, _ = _accuracy(model, APGD(eps=huge.eps, norm=huge.norm, steps=20, seed=seed), x, y)
    out.append(unbounded_indicator(acc, len(x)))
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
    points = []
    for share in (0.25, 0.5, 1.0):
        acc, _ = _accuracy(model, APGD(eps=threat.eps * share, norm=threat.norm,
                                       steps=max(10, steps // 5), seed=seed), x, y)
        points.append((threat.eps * share, acc))
    out.append(monotone_indicator(points))
    return out


def report(spec, threat: ThreatModel, result: dict, checks: list[dict], data: TensorData
           ) -> dict:
    """The audit's record: threat model, version, accuracies, stages, indicators, and per
    example its original index, label, clean prediction, robustness and breaking stage."""
    examples = [{"index": int(i), "label": int(lab), "clean_pred": int(p), "robust": b is None,
                 "broken_by": b}
                for i, lab, p, b in zip(data.original_index().tolist(), data.labels.tolist(),
                                        result["clean_pred"], result["broken_by"])]
    return {"threat_model": threat.to_dict(), "threat_label": threat.label(),
            "version": spec.version, "n": result["n"], "clean_acc": result["clean_acc"],
            "robust_acc": result["robust_acc"], "stages": result["stages"],
            "indicators": checks, "steps": spec.steps, "queries": spec.queries,
            "search_precision": result.get("search_precision", "fp32"),
            "verdict": verdict(checks), "examples": examples}


def verdict(checks: list[dict]) -> str:
    """'trusted', 'doubtful' (a warning) or 'failed' (a failing indicator)."""
    statuses = {c["status"] for c in checks}
    return "failed" if "fail" in statuses else "doubtful" if "warn" in statuses else "trusted"
