"""Random noise: a corruption baseline, not an attack (the seed study's noise row)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import Attack, AttackSettings, generator, rand
from core.checks import check_choice, check_range
from core.lazy import torch
from core.threat import ThreatModel

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class NoiseSettings(AttackSettings):
    """Random noise of standard deviation ``sigma`` (a corruption, not an attack)."""

    name: ClassVar[str] = "noise"
    kind: ClassVar[str] = "corruption"
    budget: ClassVar[str | None] = "sigma"
    sigma: float = 0.1
    distribution: str = "gaussian"
    seed: int | None = 0

    def validate(self) -> None:
        check_range("sigma", self.sigma, 0.0, 1.0)
        check_choice("noise distribution", self.distribution, ("gaussian", "uniform"))

    def threat(self) -> ThreatModel | None:
        return None

    def gradients_per_image(self) -> int:
        return 0


@dataclass
class Noise(NoiseSettings, Attack):
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
