"""PGD, Madry et al., ICLR 2018, "Towards Deep Learning Models Resistant to Adversarial
Attacks": L-inf and L2, restarts, targets."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import (SUCCESS, Attack, BallSettings, ce_sum, flat_norm,
                                   generator, goal, input_grad, project, rand, succeeded,
                                   tick)
from core.checks import check_positive, check_range
from core.lazy import F, torch

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class PGDSettings(BallSettings):
    """PGD: ``steps`` projected steps of size ``step_size`` (default 2.5 * eps / steps) from a
    random start, ``restarts`` runs; L-inf or L2. ``best_iterate`` returns per example the last
    successful iterate (evaluation); training crafts from the last iterate, as Madry et al."""

    name: ClassVar[str] = "pgd"
    strong: ClassVar[dict] = {"steps": 100, "restarts": 5}
    steps: int = 40
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    target: int | None = None
    seed: int | None = 0
    best_iterate: bool = True

    def validate(self) -> None:
        super().validate()
        check_positive("steps", self.steps)
        check_positive("restarts", self.restarts)
        if self.step_size is not None:
            check_range("step size", self.step_size, 0.0, 1e4)

    @property
    def alpha(self) -> float:
        """Step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def gradients_per_image(self) -> int:
        return self.steps * self.restarts


@dataclass
class PGD(PGDSettings, Attack):
    """Projected Gradient Descent, Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks". Threat model: white-box, L-infinity or L2 ball of radius ``eps``.
    Random start, ``steps`` steps of size ``step_size`` (default 2.5 * eps / steps), and
    ``restarts`` keeping the worst case per example; optionally targeted. Per example the last
    successful iterate is returned (not just the last one), and restarts run only on the points
    no run has fooled yet."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = goal(model, x, y, self.targeted, self.target)
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
            tick()
            grad, logits = input_grad(model, x + delta, labels, ce_sum)
            if k and self.best_iterate:  # the logits come with the gradient: a free check
                hit = succeeded(logits, labels, sign)
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
            last = succeeded(model(x + delta).float(), labels, sign)
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
        return loss + succeeded(logits, labels, sign).float() * SUCCESS
