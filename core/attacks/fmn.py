"""FMN, Pintor, Roli, Brendel & Biggio, NeurIPS 2021, "Fast Minimum-norm Adversarial Attacks
through Adaptive Norm Constraints": a minimum-norm attack, L-inf and L2. It steps along the
normalized gradient of the logit margin inside an epsilon-ball whose radius it adapts at every
step: shrinking it while the point is adversarial, growing it (or, before the first success,
setting it to a linear estimate of the distance to the boundary) while it is not."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import MinimumNorm, MinimumNormSettings, margin, tick
from core.checks import check_positive, check_range
from core.lazy import torch

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class FMNSettings(MinimumNormSettings):
    """FMN: ``steps`` iterations; the step size anneals (cosine) from ``alpha_init`` to
    ``alpha_final`` (``alpha_init / 100`` by default), the radius factor from ``gamma_init``
    to ``gamma_final``: the paper's schedules."""

    name: ClassVar[str] = "fmn"
    steps: int = 100
    alpha_init: float = 1.0
    alpha_final: float | None = None
    gamma_init: float = 0.05
    gamma_final: float = 0.001

    def validate(self) -> None:
        super().validate()
        check_positive("steps", self.steps)
        check_range("alpha_init", self.alpha_init, 1e-6, 100.0)
        if self.alpha_final is not None:
            check_range("alpha_final", self.alpha_final, 0.0, self.alpha_init)
        check_range("gamma_init", self.gamma_init, 0.0, 1.0)
        check_range("gamma_final", self.gamma_final, 0.0, self.gamma_init)

    def gradients_per_image(self) -> int:
        return self.steps


def cosine(step: int, steps: int, start: float, end: float) -> float:
    """Cosine annealing from ``start`` (step 0) to ``end`` (the last step)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / max(steps - 1, 1))) / 2


@dataclass
class FMN(FMNSettings, MinimumNorm):
    """Fast Minimum-Norm attack (Pintor et al. 2021), untargeted, L-inf or L2: returns per
    example the adversarial point of smallest norm found (the input where none was). One
    change from the paper, in L2 only: before the first success the radius grows by at least
    gamma per step (see the comment in the loop)."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        dual = 1 if self.norm == "linf" else 2  # the dual norm bounds a linear step's effect
        alpha_final = self.alpha_init / 100 if self.alpha_final is None else self.alpha_final
        delta = torch.zeros_like(x)
        best, best_norm = x.clone(), torch.full((len(x),), math.inf, device=x.device)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        radius = torch.zeros(len(x), device=x.device)  # the paper's first estimate replaces it
        widest = self.size(torch.maximum(x, 1 - x))  # no point of the box is farther
        for k in range(self.steps):
            tick()
            point = (x + delta).detach().requires_grad_(True)
            with torch.enable_grad():
                gap = margin(model(point).float(), y)  # negative once adversarial
                (grad,) = torch.autograd.grad(gap.sum(), point)
            gap, size = gap.detach(), self.size(delta)
            adversarial = gap < 0
            better = adversarial & (size < best_norm)
            best_norm = torch.where(better, size, best_norm)
            best = torch.where(better.view(shape), point.detach(), best)
            found |= adversarial
            gamma = cosine(k, self.steps, self.gamma_init, self.gamma_final)
            boundary = size + gap / grad.flatten(1).norm(p=dual, dim=1).clamp_min(1e-12)
            # before the first success the paper sets the radius to the linear estimate alone.
            # In L2 the image box cuts the steps that would cross (a black MNIST pixel cannot go
            # darker) and the projection rescales the whole step, so the estimate can settle
            # just short of the boundary for good: there the radius also grows by gamma, as
            # after a success. In L-inf the paper's rule matched Foolbox's FMN, so it is kept.
            before = torch.maximum(boundary, radius * (1 + gamma)) if self.norm == "l2" \
                else boundary
            radius = torch.where(adversarial, torch.minimum(radius * (1 - gamma), best_norm),
                                 torch.where(found, radius * (1 + gamma), before))
            radius = torch.minimum(radius, widest)
            alpha = cosine(k, self.steps, self.alpha_init, alpha_final)
            step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = self.project(delta - alpha * step, radius.view(shape))
            delta = (x + delta).clamp(0, 1) - x
        return best

    def project(self, delta: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Onto the ball of each example's own radius."""
        if self.norm == "linf":
            return torch.maximum(torch.minimum(delta, radius), -radius)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(radius)
        return delta * (radius / norms).clamp(max=1.0)
