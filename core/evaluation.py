"""Clean and adversarial evaluation, sweeps over attack budgets, and their sharding across
torchrun ranks (whole batches per rank, results gathered in order, so every number equals a
single process's). Every adversarial result carries its threat model; a worst case over
attacks is only ever taken within one threat model, and noise (a corruption) never joins one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core import confidence, distributed
from core.attacks import Attack, with_budget
from core.attacks.contract import attack_mode, input_grad, watching
from core.attacks.contract import outputs_are_probabilities
from core.data import TensorData
from core.lazy import sklearn_metrics
from core.metrics import classification_report
from core.prediction import predict

Progress = Callable[[int, int], None]


def clean_report(model: nn.Module, data: TensorData, batch_size: int = 500,
                 predictor: Callable[..., torch.Tensor] | None = None,
                 progress: Progress | None = None) -> dict:
    """Metrics of ``model`` on ``data`` plus per-example predictions and confidences (split
    across torchrun ranks when there are several); ``progress`` hears each batch (one
    process)."""
    ctx = distributed.current()
    if predictor is None and ctx.world == 1:
        logits = predict(model, data.floats(), batch_size, progress)
    else:
        logits = (predictor or sharded_predict(ctx))(model, data.floats(), batch_size)
    probs = F.softmax(logits, dim=1)
    conf, pred = probs.max(1)
    report = classification_report(data.labels.numpy(), pred.numpy(), data.classes)
    report["records"] = [
        {"index": int(i), "true": int(t), "pred": int(p), "confidence": float(c)}
        for i, t, p, c in zip(data.original_index(), data.labels, pred, conf)
    ]
    report["source"] = data.source
    return report


def clean_accuracy(model: nn.Module, data: TensorData, progress=None
                   ) -> tuple[float, int, float]:
    """Accuracy of ``model`` on ``data``: the share, the number of images, and the top of its
    95% interval."""
    logits = predict(model, data.floats(), progress=progress)
    correct = int((logits.argmax(1) == data.labels).sum())
    return correct / len(data), len(data), confidence.interval(correct, len(data))[1]


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
        if outputs_are_probabilities(out):
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
    threat: dict | None
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
        robust = clean_ok & adv_ok  # the audit's definition: correct before and after
        flipped = clean_ok & ~adv_ok
        n, n_ok = int(len(self.labels)), int(clean_ok.sum())
        l2, linf = self.l2[flipped].numpy(), self.linf[flipped].numpy()
        report = classification_report(self.labels.numpy(), self.adv_pred.numpy(), self.classes)
        per_class = [float(robust[self.labels == c].float().mean()) if (self.labels == c).any()
                     else 0.0 for c in range(len(self.classes))]
        return {
            "attack": self.attack, "budget": self.budget, "params": self.params,
            **threat_columns(self.threat, self.params), "n": n,
            "clean_acc": float(clean_ok.float().mean()),
            "clean_acc_ci": confidence.interval(n_ok, n),
            "adv_acc": float(robust.float().mean()),
            "adv_acc_ci": confidence.interval(int(robust.sum()), n),
            # the older figure, renamed: correct after the attack, whatever the clean prediction
            "after_attack_acc": float(adv_ok.float().mean()),
            "success_rate": float(flipped.sum()) / n_ok if n_ok else 0.0,
            # no flipped example, no perturbation size: None ("—"), never a misleading 0
            "l2_mean": float(l2.mean()) if len(l2) else None,
            "l2_median": float(np.median(l2)) if len(l2) else None,
            "linf_mean": float(linf.mean()) if len(linf) else None,
            "linf_median": float(np.median(linf)) if len(linf) else None,
            "per_class_adv_acc": dict(zip(self.classes, per_class)),
            "confusion_adv": report["confusion"],
            # the same images unattacked, so the two matrices compare like with like
            "confusion_clean": sklearn_metrics.confusion_matrix(self.labels.numpy(), self.clean_pred.numpy(),
                                                labels=list(range(len(self.classes)))).tolist(),
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


PARTS = ("cp", "cc", "ap", "ac", "l2", "linf")  # clean/adv prediction and confidence, norms
Saved = tuple[dict[str, torch.Tensor], dict]  # (tensors, JSON bookkeeping) of a stopped job


def run_attack(model: nn.Module, data: TensorData, attack: Attack, batch_size: int = 250,
               keep_examples: int = 0, progress: Progress | None = None,
               saved: Saved | None = None, on_batch: Callable[[Saved], None] | None = None
               ) -> AttackOutcome:
    """Attack every example of ``data``; keep the first ``keep_examples`` image pairs. After
    each batch ``on_batch`` gets the state so far; ``saved`` (such a state) continues from it,
    with the result of an unbroken run (the attack is seeded per call)."""
    device = next(model.parameters()).device
    parts: dict[str, list] = {k: [] for k in PARTS + ("kept_x", "kept_adv")}
    first = 0
    if saved is not None:
        parts = {k: [saved[0][k]] if k in saved[0] else [] for k in parts}
        first = saved[1]["next"]
    n = len(data)
    for start in range(first, n, batch_size):
        x = data.floats(slice(start, start + batch_size)).to(device)
        y = data.labels[start:start + batch_size].to(device)
        within = (lambda f, s=start, b=len(x): progress(round(s + f * b), n)) if progress \
            else (lambda _f: None)
        with watching(attack, within):  # progress inside a long batch (CW, strong PGD)
            adv = attack(model, x, y)
        with torch.no_grad(), attack_mode(model):
            p_clean = F.softmax(model(x).float(), 1).cpu()
            p_adv = F.softmax(model(adv).float(), 1).cpu()
        delta = (adv - x).flatten(1).cpu()
        for key, val in (("cp", p_clean.argmax(1)), ("cc", p_clean.max(1).values),
                         ("ap", p_adv.argmax(1)), ("ac", p_adv.max(1).values),
                         ("l2", delta.norm(dim=1)), ("linf", delta.abs().max(1).values)):
            parts[key].append(val)
        if sum(len(k) for k in parts["kept_x"]) < keep_examples:
            parts["kept_x"].append(x.cpu())
            parts["kept_adv"].append(adv.cpu())
        if on_batch:
            on_batch(({k: torch.cat(v) for k, v in parts.items() if v},
                      {"next": min(start + batch_size, n)}))
        if progress:
            progress(min(start + batch_size, n), n)
    cat = {k: torch.cat(v) for k, v in parts.items() if v}
    examples = {}
    if keep_examples:
        examples = {"x": cat["kept_x"][:keep_examples], "x_adv": cat["kept_adv"][:keep_examples]}
    return outcome_of(attack, data, cat, examples)


def outcome_of(attack: Attack, data: TensorData, cat: dict[str, torch.Tensor],
               examples: dict | None = None) -> AttackOutcome:
    """The outcome of ``attack`` on ``data`` from its per-example tensors (:data:`PARTS`)."""
    return AttackOutcome(attack.name, attack.params(),
                         getattr(attack, attack.budget) if attack.budget else None,
                         _threat_dict(attack), cat["cp"], cat["cc"], cat["ap"], cat["ac"],
                         cat["l2"], cat["linf"], data.labels.clone(), data.original_index(),
                         data.classes, examples or {})


def _threat_dict(attack: Attack) -> dict | None:
    threat = attack.threat()
    return threat.to_dict() if threat else None


def threat_columns(threat: dict | None, params: dict) -> dict:
    """The columns that say where a number lives: ``kind`` (adversarial or corruption),
    ``norm`` and ``eps`` for attacks, ``sigma`` for noise."""
    if threat is None:
        return {"kind": "corruption", "norm": None, "eps": None, "sigma": params.get("sigma")}
    return {"kind": "adversarial", "norm": threat["norm"], "eps": threat["eps"], "sigma": None}


def sweep(model: nn.Module, data: TensorData, attacks: Sequence[Attack],
          budgets: Sequence[float], batch_size: int = 250,
          progress: Progress | None = None, runner: Callable | None = None,
          saved: Saved | None = None, on_batch: Callable[[Saved], None] | None = None) -> dict:
    """Run each attack at each budget (eps for attacks, sigma for noise; attacks without a
    budget once).

    Returns ``rows`` (the tidy table, with each row's threat model), ``worst_case`` (per threat
    model: accuracy when an example counts as robust only if every attack of that threat model
    failed on it; noise is never part of one) and ``warnings``. After each batch ``on_batch``
    gets the state so far (finished points and the current one's batches); ``saved``, such a
    state, continues from it (one process).
    """
    runner = runner or sharded_attack(distributed.current())
    jobs = [(a, b) for a in attacks for b in (budgets if a.budget else [None])]
    rows, robust = [], {}
    members: dict[tuple, list[str]] = {}
    warnings = sanity_warnings(model, data.floats(slice(0, 64)), data.labels[:64])
    n = len(data)
    done, current = _sweep_state(saved)
    for k, (attack, budget) in enumerate(jobs):
        concrete = with_budget(attack, budget) if budget is not None else attack
        tick = (lambda d, _total, k=k: progress(k * n + d, len(jobs) * n)) \
            if progress else None
        if k in done:
            outcome = outcome_of(concrete, data, done[k])
        elif on_batch is None and current is None:
            outcome = runner(model, data, concrete, batch_size, progress=tick)
        else:
            keep = _sweep_saver(on_batch, done, k)
            outcome = run_attack(model, data, concrete, batch_size, progress=tick,
                                 saved=current if k == _point(saved) else None, on_batch=keep)
            done[k] = {key: getattr(outcome, name) for key, name in _PART_FIELDS.items()}
        summary = outcome.summary()
        rows.append({key: summary[key] for key in (
            "attack", "kind", "norm", "eps", "sigma", "budget", "n", "clean_acc", "adv_acc")}
            | {"adv_acc_low": summary["adv_acc_ci"][0], "adv_acc_high": summary["adv_acc_ci"][1]}
            | {key: summary[key] for key in ("success_rate", "l2_mean", "l2_median",
                                             "linf_mean", "linf_median")}
            | {"params": summary["params"]})
        if outcome.threat is not None:
            key = (outcome.threat["norm"], outcome.threat["eps"])
            ok = (outcome.adv_pred == outcome.labels) & (outcome.clean_pred == outcome.labels)
            robust[key] = robust.get(key, ok) & ok
            members.setdefault(key, []).append(attack.name)
    worst = [{"norm": norm, "eps": eps, "attacks": ", ".join(members[(norm, eps)]),
              "n": n, "worst_case_acc": float(ok.float().mean()),
              "worst_case_low": confidence.interval(int(ok.sum()), n)[0],
              "worst_case_high": confidence.interval(int(ok.sum()), n)[1]}
             for (norm, eps), ok in sorted(robust.items(), key=lambda kv: (kv[0][0],
                                                                            kv[0][1] or 0))]
    return {"rows": rows, "worst_case": worst, "warnings": warnings + _ordering_warnings(rows)}


_PART_FIELDS = {"cp": "clean_pred", "cc": "clean_conf", "ap": "adv_pred", "ac": "adv_conf",
                "l2": "l2", "linf": "linf"}


def _point(saved: Saved | None) -> int | None:
    return None if saved is None else saved[1]["point"]


def _sweep_state(saved: Saved | None) -> tuple[dict[int, dict], Saved | None]:
    """A saved sweep's finished points (their per-example tensors) and its current point's
    state."""
    if saved is None:
        return {}, None
    tensors, meta = saved
    done: dict[int, dict] = {}
    current = {}
    for name, value in tensors.items():
        point, key = name.split(".", 1)
        if point == "cur":
            current[key] = value
        else:
            done.setdefault(int(point), {})[key] = value
    return done, (current, meta["current"]) if meta.get("current") else None


def _sweep_saver(on_batch: Callable[[Saved], None] | None, done: dict[int, dict], k: int
                 ) -> Callable[[Saved], None] | None:
    """``on_batch`` for point ``k`` of a sweep: the finished points and this one's batches."""
    if on_batch is None:
        return None

    def save(state: Saved) -> None:
        tensors = {f"{p}.{key}": v for p, part in done.items() for key, v in part.items()}
        tensors.update({f"cur.{key}": v for key, v in state[0].items()})
        on_batch((tensors, {"point": k, "current": state[1]}))

    return save


def _ordering_warnings(rows: list[dict]) -> list[str]:
    """FGSM beating PGD in the same threat model hints at gradient masking or too few steps."""
    pgd = {(r["norm"], r["eps"]): r["adv_acc"] for r in rows if r["attack"] == "pgd"}
    out = []
    for r in rows:
        key = (r["norm"], r["eps"])
        if r["attack"] == "fgsm" and key in pgd and r["adv_acc"] < pgd[key] - 0.01:
            out.append(f"fgsm at {r['norm']} eps {r['eps']:g} ({r['adv_acc']:.1%}) beats PGD "
                       f"({pgd[key]:.1%}) in the same threat model: possible gradient masking "
                       "or too few PGD steps")
    return out


def sharded_attack(ctx: distributed.Context, batch_size: int = 250
                   ) -> Callable[..., AttackOutcome]:
    """A drop-in for :func:`run_attack` that splits whole batches across ranks and gathers the
    per-example results in their original order (plain :func:`run_attack` for one process)."""

    def runner(model: nn.Module, data: TensorData, attack: Attack, batch_size_: int = batch_size,
               keep_examples: int = 0, progress: Progress | None = None) -> AttackOutcome:
        if ctx.world == 1:
            return run_attack(model, data, attack, batch_size_, keep_examples, progress)
        mine = distributed.my_positions(ctx, len(data), batch_size_)
        local = None
        if len(mine):
            # Rank 0 holds the first batch, so the examples it keeps are the single run's too.
            local = run_attack(model, data.take(mine), attack, batch_size_,
                               keep_examples if ctx.is_main else 0,
                               _scaled(progress, len(data)) if ctx.is_main else None)
        fields_ = {k: getattr(local, k) for k in _TENSOR_FIELDS} if local else {}
        merged = distributed.gather_in_order(ctx, mine, fields_)
        budget = getattr(attack, attack.budget) if attack.budget else None
        return AttackOutcome(attack.name, attack.params(), budget, _threat_dict(attack),
                             classes=data.classes, examples=local.examples if local else {},
                             **merged)

    return runner


def sharded_predict(ctx: distributed.Context) -> Callable[..., torch.Tensor]:
    """A drop-in for :func:`core.prediction.predict` that splits whole batches across ranks
    and gathers the logits in their original order."""

    def runner(model: nn.Module, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
        if ctx.world == 1:
            return predict(model, x, batch_size)
        mine = distributed.my_positions(ctx, len(x), batch_size)
        mine_logits = {"logits": predict(model, x[mine], batch_size)} if len(mine) else {}
        return distributed.gather_in_order(ctx, mine, mine_logits)["logits"]

    return runner


def _scaled(progress: Progress | None, total: int) -> Progress | None:
    """Rank 0's progress through its shard, reported as progress through the whole split."""
    if progress is None:
        return None
    return lambda done, mine: progress(min(total, round(done / max(mine, 1) * total)), total)


_TENSOR_FIELDS = ("clean_pred", "clean_conf", "adv_pred", "adv_conf", "l2", "linf", "labels",
                  "index")
