"""Clean and adversarial evaluation, and sweeps over attack budgets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .attacks import Attack, attack_mode, input_grad, with_budget
from .data import TensorData
from .metrics import classification_report
from .training import predict

Progress = Callable[[int, int], None]


def clean_report(model: nn.Module, data: TensorData, batch_size: int = 500,
                 predictor: Callable[..., torch.Tensor] = predict) -> dict:
    """Metrics of ``model`` on ``data`` plus per-example predictions and confidences
    (``core.distributed.sharded_predict`` as ``predictor`` splits the work across ranks)."""
    logits = predictor(model, data.floats(), batch_size)
    probs = F.softmax(logits, dim=1)
    conf, pred = probs.max(1)
    report = classification_report(data.labels.numpy(), pred.numpy(), data.classes)
    report["records"] = [
        {"index": int(i), "true": int(t), "pred": int(p), "confidence": float(c)}
        for i, t, p, c in zip(data.original_index(), data.labels, pred, conf)
    ]
    report["source"] = data.source
    return report


def misclassified(report: dict, true: int | None = None, pred: int | None = None) -> list[dict]:
    """Records of misclassified examples, optionally filtered by true and predicted class."""
    return [r for r in report["records"] if r["true"] != r["pred"]
            and (true is None or r["true"] == true) and (pred is None or r["pred"] == pred)]


def sanity_warnings(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Signs that an evaluation would mislead: train mode, probability outputs, zero gradients."""
    warnings = []
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    if model.training:
        warnings.append("model was in train mode; attacks evaluate it in eval mode")
    with attack_mode(model):
        with torch.no_grad():
            out = model(x[:64]).float()
        if out.min() >= 0 and out.max() <= 1 and torch.allclose(
                out.sum(1), torch.ones(len(out), device=device), atol=1e-3):
            warnings.append("model outputs look like probabilities, not logits: gradient "
                            "attacks on softmax outputs are weakened (remove the softmax)")
        grad, _ = input_grad(model, x[:64], y[:64],
                             lambda z, t: F.cross_entropy(z, t, reduction="sum"))
        if float(grad.abs().max()) == 0.0:
            warnings.append("input gradients are exactly zero: gradient-based attacks cannot "
                            "work (gradient masking or a non-differentiable model)")
    return warnings


@dataclass
class AttackOutcome:
    """Per-example results of one attack on a sample."""

    attack: str
    params: dict
    budget: float | None
    clean_pred: torch.Tensor
    clean_conf: torch.Tensor
    adv_pred: torch.Tensor
    adv_conf: torch.Tensor
    l2: torch.Tensor
    linf: torch.Tensor
    labels: torch.Tensor
    index: torch.Tensor
    classes: list[str]
    examples: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """Accuracies, success rate, norms, per-class accuracy and confusion under attack."""
        clean_ok = self.clean_pred == self.labels
        adv_ok = self.adv_pred == self.labels
        flipped = clean_ok & ~adv_ok
        n_ok = int(clean_ok.sum())
        l2, linf = self.l2[flipped].numpy(), self.linf[flipped].numpy()
        report = classification_report(self.labels.numpy(), self.adv_pred.numpy(), self.classes)
        return {
            "attack": self.attack, "budget": self.budget, "params": self.params,
            "n": int(len(self.labels)),
            "clean_acc": float(clean_ok.float().mean()),
            "adv_acc": float(adv_ok.float().mean()),
            "success_rate": float(flipped.sum()) / n_ok if n_ok else 0.0,
            "l2_mean": float(l2.mean()) if len(l2) else 0.0,
            "l2_median": float(np.median(l2)) if len(l2) else 0.0,
            "linf_mean": float(linf.mean()) if len(linf) else 0.0,
            "linf_median": float(np.median(linf)) if len(linf) else 0.0,
            "per_class_adv_acc": {c["class"]: c["recall"] for c in report["per_class"]},
            "confusion_adv": report["confusion"],
        }

    def records(self) -> list[dict]:
        """One dict per example (for browsing flipped examples)."""
        return [
            {"index": int(i), "true": int(t), "clean_pred": int(cp), "clean_conf": float(cc),
             "adv_pred": int(ap), "adv_conf": float(ac), "l2": float(a), "linf": float(b)}
            for i, t, cp, cc, ap, ac, a, b in zip(
                self.index, self.labels, self.clean_pred, self.clean_conf, self.adv_pred,
                self.adv_conf, self.l2, self.linf)
        ]


def run_attack(model: nn.Module, data: TensorData, attack: Attack, batch_size: int = 250,
               keep_examples: int = 0, progress: Progress | None = None) -> AttackOutcome:
    """Attack every example of ``data``; keep the first ``keep_examples`` image pairs."""
    device = next(model.parameters()).device
    parts: dict[str, list] = {k: [] for k in ("cp", "cc", "ap", "ac", "l2", "linf")}
    kept_x, kept_adv = [], []
    n = len(data)
    for start in range(0, n, batch_size):
        x = data.floats(slice(start, start + batch_size)).to(device)
        y = data.labels[start:start + batch_size].to(device)
        adv = attack(model, x, y)
        with torch.no_grad(), attack_mode(model):
            p_clean = F.softmax(model(x).float(), 1).cpu()
            p_adv = F.softmax(model(adv).float(), 1).cpu()
        delta = (adv - x).flatten(1).cpu()
        for key, val in (("cp", p_clean.argmax(1)), ("cc", p_clean.max(1).values),
                         ("ap", p_adv.argmax(1)), ("ac", p_adv.max(1).values),
                         ("l2", delta.norm(dim=1)), ("linf", delta.abs().max(1).values)):
            parts[key].append(val)
        if sum(len(k) for k in kept_x) < keep_examples:
            kept_x.append(x.cpu())
            kept_adv.append(adv.cpu())
        if progress:
            progress(min(start + batch_size, n), n)
    cat = {k: torch.cat(v) for k, v in parts.items()}
    examples = {}
    if keep_examples:
        examples = {"x": torch.cat(kept_x)[:keep_examples],
                    "x_adv": torch.cat(kept_adv)[:keep_examples]}
    return AttackOutcome(attack.name, attack.params(),
                         getattr(attack, attack.budget) if attack.budget else None,
                         cat["cp"], cat["cc"], cat["ap"], cat["ac"], cat["l2"], cat["linf"],
                         data.labels.clone(), data.original_index(), data.classes, examples)


def sweep(model: nn.Module, data: TensorData, attacks: Sequence[Attack],
          budgets: Sequence[float], batch_size: int = 250,
          progress: Progress | None = None, runner: Callable = None) -> dict:
    """Run each attack at each budget (attacks without a budget once).

    Returns ``rows`` (the tidy table), ``worst_case`` (per budget, accuracy when an example
    counts as robust only if every budgeted attack failed on it) and ``warnings``.
    """
    runner = runner or run_attack  # core.distributed.sharded_attack splits it across ranks
    jobs = [(a, b) for a in attacks for b in (budgets if a.budget else [None])]
    rows, correct_by_budget = [], {}
    warnings = sanity_warnings(model, data.floats(slice(0, 64)), data.labels[:64])
    for k, (attack, budget) in enumerate(jobs):
        concrete = with_budget(attack, budget) if budget is not None else attack
        outcome = runner(model, data, concrete, batch_size)
        summary = outcome.summary()
        rows.append({key: summary[key] for key in (
            "attack", "budget", "n", "clean_acc", "adv_acc", "success_rate", "l2_mean",
            "l2_median", "linf_mean", "linf_median")} | {"params": summary["params"]})
        if budget is not None:
            ok = outcome.adv_pred == outcome.labels
            correct_by_budget[budget] = correct_by_budget.get(budget, ok) & ok
        if progress:
            progress(k + 1, len(jobs))
    worst = [{"budget": b, "worst_case_acc": float(ok.float().mean())}
             for b, ok in sorted(correct_by_budget.items())]
    return {"rows": rows, "worst_case": worst, "warnings": warnings + _ordering_warnings(rows)}


def _ordering_warnings(rows: list[dict]) -> list[str]:
    """A weaker attack beating PGD at the same budget hints at gradient masking or a bug."""
    pgd = {r["budget"]: r["adv_acc"] for r in rows if r["attack"] == "pgd"}
    out = []
    for r in rows:
        if r["attack"] in ("noise", "fgsm") and r["budget"] in pgd:
            if r["adv_acc"] < pgd[r["budget"]] - 0.01:
                out.append(f"{r['attack']} at {r['budget']} ({r['adv_acc']:.1%}) beats PGD "
                           f"({pgd[r['budget']]:.1%}): possible gradient masking or too few "
                           "PGD steps")
    return out
