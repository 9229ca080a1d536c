"""FGSM, Goodfellow, Shlens & Szegedy, ICLR 2015, "Explaining and Harnessing
Adversarial Examples": one signed-gradient step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import Attack, AttackSettings, ce_sum, goal, input_grad
from core.checks import check_range
from core.lazy import torch
from core.threat import ThreatModel

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class FGSMSettings(AttackSettings):
    """FGSM: one signed-gradient step of size ``eps`` (L-inf)."""

    name: ClassVar[str] = "fgsm"
    budget: ClassVar[str | None] = "eps"
    eps: float = 0.1
    targeted: bool = False
    target: int | None = None

    def validate(self) -> None:
        check_range("eps", self.eps, 0.0, 1.0)

    def threat(self) -> ThreatModel | None:
        return ThreatModel("linf", self.eps)


@dataclass
class FGSM(FGSMSettings, Attack):
    """Fast Gradient Sign Method, Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples". Threat model: white-box, L-infinity ball of radius ``eps``."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = goal(model, x, y, self.targeted, self.target)
        grad, _ = input_grad(model, x, labels, ce_sum)
        return (x + sign * self.eps * grad.sign()).clamp(0, 1)
