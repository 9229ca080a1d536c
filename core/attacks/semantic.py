"""Semantic attacks without an epsilon: negative images (Hosseini et al. 2017) and HSV
colour shifts (Hosseini & Poovendran 2018)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import Attack, AttackSettings, generator, rand
from core.checks import check_positive
from core.lazy import torch
from core.paths import InputError

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class SemanticSettings(AttackSettings):
    """Semantic attacks without an epsilon: negative images or HSV colour shifts."""

    name: ClassVar[str] = "semantic"
    mode: str = "negative"
    trials: int = 100
    seed: int | None = 0

    def validate(self) -> None:
        if self.mode not in ("negative", "hsv"):
            raise InputError(f"semantic mode must be 'negative' or 'hsv', got {self.mode!r}")
        check_positive("trials", self.trials)

    def gradients_per_image(self) -> int:
        return 0


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
class Semantic(SemanticSettings, Attack):
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
