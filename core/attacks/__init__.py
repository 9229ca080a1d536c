"""Adversarial attacks. Each is a dataclass of hyperparameters called as
``attack(model, x, y) -> x_adv`` with ``x`` in [0, 1] (B, C, H, W).

Contract: gradients are taken with respect to the input only (parameters are frozen for the
call, so their ``.grad`` is untouched and no weight gradients are computed); the model runs in
eval mode and its previous mode is restored; the result is detached, of the input's shape,
dtype and device, inside [0, 1] and, for norm-bounded attacks, inside the epsilon-ball.
Random attacks take a ``seed``; ``seed=None`` draws from torch's global generator (training).
Hyperparameters, their defaults and checks live in :mod:`core.hyperparams`; each class here adds
only the computation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core import hyperparams as hp
from core.paths import InputError

NORMS = ("linf", "l2")
SUCCESS = 1e6  # added to a restart's score when it fooled the model: success beats any loss


from core.attacks.contract import (Attack, attack_mode, flat_norm, folded, generator,  # noqa: F401
                       input_grad, margin, project, rand)


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


@dataclass
class Noise(hp.NoiseSettings, Attack):
    """Random noise baseline (not an adversarial attack): additive Gaussian noise of standard
    deviation ``sigma`` (or uniform in [-sigma, sigma]), clipped to [0, 1]. Threat model:
    random corruption. Used as the noise row of the seed study's table."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = generator(self.seed)
        if self.distribution == "gaussian":
            noise = rand(x.shape, x, gen, "normal") * self.sigma
        else:
            noise = (rand(x.shape, x, gen) * 2 - 1) * self.sigma
        return x + noise


@dataclass
class FGSM(hp.FGSMSettings, Attack):
    """Fast Gradient Sign Method, Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples". Threat model: white-box, L-infinity ball of radius ``eps``."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = _goal(model, x, y, self.targeted, self.target)
        grad, _ = input_grad(model, x, labels, _ce_sum)
        return (x + sign * self.eps * grad.sign()).clamp(0, 1)


def _goal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool,
          target: int | None) -> tuple[torch.Tensor, float]:
    """Labels the loss is computed against and the ascent sign (+1 untargeted, -1 targeted)."""
    if not targeted:
        return y, 1.0
    if target is not None:
        return torch.full_like(y, int(target)), -1.0
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    return (y + 1) % classes, -1.0  # "next class" target when none is given


@dataclass
class PGD(hp.PGDSettings, Attack):
    """Projected Gradient Descent, Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks". Threat model: white-box, L-infinity or L2 ball of radius ``eps``.
    Random start, ``steps`` steps of size ``step_size`` (default 2.5 * eps / steps), and
    ``restarts`` keeping the worst case per example; optionally targeted. Per example the last
    successful iterate is returned (not just the last one), and restarts run only on the points
    no run has fooled yet."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = _goal(model, x, y, self.targeted, self.target)
        gen = generator(self.seed)
        if self.restarts == 1:  # nothing to choose between: skip the scoring pass
            return self._one_run(model, x, labels, sign, gen)
        best, best_score = x.clone(), torch.full((len(x),), -math.inf, device=x.device)
        for _ in range(self.restarts):
            idx = (best_score < SUCCESS).nonzero().squeeze(1)
            if not len(idx):
                break
            adv = self._one_run(model, x[idx], labels[idx], sign, gen)
            score = self._score(model, adv, labels[idx], sign)
            better = score > best_score[idx]
            best[idx[better]], best_score[idx[better]] = adv[better], score[better]
        return best

    def _one_run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, sign: float,
                 gen: torch.Generator | None) -> torch.Tensor:
        delta = torch.zeros_like(x)
        if self.random_start and self.eps > 0:
            delta = self._random_delta(x, gen)
        delta = (x + delta).clamp(0, 1) - x
        shape = (-1,) + (1,) * (x.dim() - 1)
        success, found = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for k in range(self.steps):
            grad, logits = input_grad(model, x + delta, labels, _ce_sum)
            if k and self.best_iterate:  # the logits come with the gradient: a free check
                hit = _success(logits, labels, sign)
                success = torch.where(hit.view(shape), x + delta, success)
                found |= hit
            if self.norm == "linf":
                step = grad.sign()
            else:
                step = grad / flat_norm(grad)
            delta = project(delta + sign * self.alpha * step, self.eps, self.norm)
            delta = (x + delta).clamp(0, 1) - x
        if not bool(found.any()):
            return x + delta
        with torch.no_grad():  # the last iterate wins where it succeeds too
            last = _success(model(x + delta).float(), labels, sign)
        return torch.where((found & ~last).view(shape), success, x + delta)

    def _random_delta(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            return (rand(x.shape, x, gen) * 2 - 1) * self.eps
        direction = rand(x.shape, x, gen, "normal")
        radius = rand(torch.Size([len(x)]), x, gen).view(-1, 1, 1, 1) * self.eps
        return direction / flat_norm(direction) * radius

    @staticmethod
    def _score(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor, sign: float
               ) -> torch.Tensor:
        """Per-example attack quality: success first, then loss (higher is worse for the model)."""
        with torch.no_grad():
            logits = model(adv).float()
        loss = sign * F.cross_entropy(logits, labels, reduction="none")
        return loss + _success(logits, labels, sign).float() * SUCCESS


def _success(logits: torch.Tensor, labels: torch.Tensor, sign: float) -> torch.Tensor:
    """Misclassified (untargeted, ``sign`` 1) or classified as the target (``sign`` -1)."""
    return logits.argmax(1) != labels if sign > 0 else logits.argmax(1) == labels


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """RGB in [0, 1] (B, 3, H, W) to HSV with every channel in [0, 1]."""
    r, g, b = x.unbind(1)
    maxc, argmax = x.max(1)
    minc = x.min(1).values
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.stack([((g - b) / safe) % 6, (b - r) / safe + 2, (r - g) / safe + 4], 1)
    h = hue.gather(1, argmax.unsqueeze(1)).squeeze(1) / 6
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)),
                    torch.zeros_like(maxc))
    return torch.stack([h % 1.0, s, maxc], 1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)
    f = v.unsqueeze(1) - (v * s).unsqueeze(1) * torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return f


@dataclass
class Semantic(hp.SemanticSettings, Attack):
    """Semantic attacks without an epsilon. ``mode='negative'``: x' = 1 - x (Hosseini et al.
    2017, "On the Limitation of Convolutional Neural Networks in Recognizing Negative Images").
    ``mode='hsv'``: Hosseini & Poovendran 2018, "Semantic Adversarial Examples": per trial a
    random hue shift and a saturation shift whose range grows with the trial number, up to
    ``trials``, keeping per example the first shift that is misclassified (unfooled examples are returned
    unchanged; RGB inputs only).
    Threat model: large, semantics-preserving colour changes, not a norm ball."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "negative":
            return 1.0 - x
        if x.shape[1] != 3:
            raise InputError(f"the hsv semantic attack needs 3-channel RGB images, got "
                             f"{x.shape[1]} channel(s); use mode='negative' for grayscale")
        gen = generator(self.seed)
        hsv = rgb_to_hsv(x)
        best = x.clone()
        open_ = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for trial in range(1, self.trials + 1):
            dh = rand(torch.Size([len(x), 1, 1]), x, gen)
            ds = (rand(torch.Size([len(x), 1, 1]), x, gen) * 2 - 1) * trial / self.trials
            shifted = torch.stack([(hsv[:, 0] + dh) % 1.0, (hsv[:, 1] + ds).clamp(0, 1),
                                   hsv[:, 2]], 1)
            cand = hsv_to_rgb(shifted).clamp(0, 1)
            with torch.no_grad():
                fooled = model(cand).argmax(1) != y
            take = fooled & open_
            best[take] = cand[take]
            open_ &= ~fooled
            if not open_.any():
                break
        return best


@dataclass
class CarliniWagner(hp.CWSettings, Attack):
    """Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks", L2 attack.
    Threat model: white-box, minimal L2 perturbation. Optimizes w in tanh space with Adam on
    ||x' - x||^2 + c * max(Z_y - max_{i != y} Z_i, -kappa), binary-searching c per example
    (``search_steps`` rounds from ``initial_const``), aborting early when the loss stalls, and
    keeping the smallest successful perturbation; unsuccessful examples are returned unchanged."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = _goal(model, x, y, self.targeted, self.target)
        targeted = sign < 0
        n = len(x)
        const = torch.full((n,), self.initial_const, device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), 1e10, device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best = x.clone()
        for _ in range(self.search_steps):
            found, l2, adv = self._optimize(model, x, labels, const, targeted)
            improve = found & (l2 < best_l2)
            best_l2[improve], best[improve] = l2[improve], adv[improve]
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2,
                                torch.where(found, const, const * 10))
        return best

    def _optimize(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                  const: torch.Tensor, targeted: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        n = len(x)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best = x.clone()
        previous = math.inf
        for it in range(self.steps):
            with torch.enable_grad():
                adv = (torch.tanh(w) + 1) / 2
                logits = model(adv).float()
                l2 = (adv - x).flatten(1).pow(2).sum(1)
                margin = self._margin(logits, labels, targeted)
                loss = (l2 + const * margin.clamp_min(-self.confidence)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            with torch.no_grad():
                success = margin <= -self.confidence if self.confidence > 0 else margin < 0
                dist = l2.detach().sqrt()
                improve = success & (dist < best_l2)
                best_l2[improve], best[improve] = dist[improve], adv.detach()[improve]
                found |= success
            if self.abort_early and it % max(self.steps // 10, 1) == 0:
                if loss.item() > previous * 0.9999:
                    break
                previous = loss.item()
        return found, best_l2, best

    @staticmethod
    def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        return -margin(logits, labels) if targeted else margin(logits, labels)


ATTACKS: dict[str, type] = {
    "noise": Noise, "fgsm": FGSM, "pgd": PGD, "semantic": Semantic, "cw": CarliniWagner,
}


def build_attack(name: str, strong: bool = False, **params) -> Attack:
    """Build a registered attack (its strong setting with ``strong``); unknown names or
    parameters get an error listing the valid ones."""
    from core.attacks.apgd import APGD, APGDT
    from core.attacks.fab import FABT
    from core.attacks.square import Square

    settings = hp.attack_settings(name, params, strong)
    registry = dict(ATTACKS, **{"apgd-ce": APGD, "apgd-t": APGDT, "fab-t": FABT,
                                "square": Square})
    return registry[name](**settings.params())


def with_budget(attack: Attack, value: float) -> Attack:
    """A copy of ``attack`` with its budget (eps or sigma) set to ``value``."""
    if attack.budget is None:
        return attack
    return build_attack(attack.name, **hp.with_budget(attack, value))
