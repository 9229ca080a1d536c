"""Square Attack, Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search": gradient-free, so it is not
fooled by masked gradients. Random square-shaped updates at the corners of the eps-ball are
kept when they lower the margin loss; only still-robust points are queried."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import (Attack, BallSettings, flat_norm, generator, margin, rand,
                                   tick)
from core.checks import check_positive, check_range
from core.lazy import torch

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class SquareSettings(BallSettings):
    """Square: ``queries`` forward passes per image at most, initial square share ``p_init``."""

    name: ClassVar[str] = "square"
    queries: int = 5000
    p_init: float = 0.8
    seed: int | None = 0

    def validate(self) -> None:
        super().validate()
        check_positive("queries", self.queries)
        check_range("p_init", self.p_init, 1e-4, 1.0)

    def gradients_per_image(self) -> int:
        return self.queries // 2  # a query is a forward pass, about half a gradient pass

    def iterations(self) -> int:
        return self.queries - 1


# Query counts (of 10,000) at which the square's share of the image halves.
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, budget: int) -> float:
    """Share of the image the square covers at ``query`` (the schedule scaled to ``budget``)."""
    scaled = int(query / budget * 10000)
    return p_init / 2 ** sum(scaled > h for h in HALVINGS)


def bump(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """The pseudo-Gaussian pattern of the L2 attack: nested rectangles around the centre,
    each adding 1 / (k + 1)^2, so the mass falls off from the centre outwards."""
    i = torch.arange(height, device=like.device, dtype=like.dtype)
    j = torch.arange(width, device=like.device, dtype=like.dtype)
    ring = torch.maximum((i - (height - 1) / 2).abs()[:, None] / max(height, 1) * width,
                         (j - (width - 1) / 2).abs()[None, :]).floor()
    k = torch.arange(max(height, width), device=like.device, dtype=like.dtype)
    weights = 1 / (k + 1) ** 2
    return (weights[None, None, :] * (k[None, None, :] >= ring[:, :, None])).sum(2)


def pattern(side: int, like: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
    """A unit-norm ``side`` x ``side`` window: two bumps of opposite sign side by side,
    randomly turned by a quarter."""
    half = max(side // 2, 1)
    window = torch.zeros(side, side, device=like.device, dtype=like.dtype)
    window[:, :half] = bump(side, half, like)
    if side > half:
        window[:, half:] = -bump(side, side - half, like)
    if rand(torch.Size([1]), like, gen).item() < 0.5:
        window = window.T
    return window / window.norm().clamp_min(1e-12)


@dataclass
class Square(SquareSettings, Attack):
    """Square Attack (Andriushchenko et al. 2020), L-inf and L2. L-inf: start from vertical
    stripes of +-eps, then ``queries`` times draw a square window (side from the p schedule)
    and set it to a random +-eps per channel. L2: start from a grid of pseudo-Gaussian bumps of
    norm eps, then move the mass of two windows into one of them as a new bump of random sign
    per channel, the total norm kept at eps. An update is kept where the margin loss drops;
    points stop being queried once misclassified."""

    found_any: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # queries only: no autograd bookkeeping at all
            return self._search(model, x, y)

    def _search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = generator(self.seed)
        adv = (x + self._init(x, gen)).clamp(0, 1)
        best = margin(model(adv).float(), y)
        h, w = x.shape[2:]
        for q in range(1, self.queries):
            tick()
            live = (best > 0).nonzero().squeeze(1)
            if not len(live):
                break
            side = max(1, min(h - 1, round(math.sqrt(square_fraction(self.p_init, q,
                                                                     self.queries) * h * w))))
            cand = self._candidate(x[live], adv[live], side, gen)
            loss = margin(model(cand).float(), y[live])
            better = loss < best[live]
            keep = live[better]
            adv[keep], best[keep] = cand[better], loss[better]
        self.found_any = best < 0
        return adv

    def _init(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            stripes = (rand(torch.Size([n, c, 1, w]), x, gen) < 0.5).float() * 2 - 1
            return self.eps * stripes.expand_as(x)
        tile = max(h // 5, 1)
        delta = torch.zeros_like(x)
        for top in range(0, h - tile + 1, tile):
            for left in range(0, w - tile + 1, tile):
                signs = (rand(torch.Size([n, c, 1, 1]), x, gen) < 0.5).float() * 2 - 1
                delta[:, :, top:top + tile, left:left + tile] = signs * bump(tile, tile, x)
        return delta / flat_norm(delta) * self.eps

    def _window(self, x: torch.Tensor, side: int, gen: torch.Generator | None
                ) -> tuple[int, int]:
        h, w = x.shape[2:]
        return (int(rand(torch.Size([1]), x, gen).item() * (h - side + 1)),
                int(rand(torch.Size([1]), x, gen).item() * (w - side + 1)))

    def _candidate(self, xs: torch.Tensor, adv: torch.Tensor, side: int,
                   gen: torch.Generator | None) -> torch.Tensor:
        c = xs.shape[1]
        top, left = self._window(xs, side, gen)
        area = (slice(None), slice(None), slice(top, top + side), slice(left, left + side))
        signs = (rand(torch.Size([len(xs), c, 1, 1]), xs, gen) < 0.5).float() * 2 - 1
        cand = adv.clone()
        if self.norm == "linf":
            cand[area] = (xs[area] + self.eps * signs).clamp(0, 1)
            return cand
        top2, left2 = self._window(xs, side, gen)
        area2 = (slice(None), slice(None), slice(top2, top2 + side), slice(left2, left2 + side))
        delta = adv - xs
        both = torch.zeros_like(delta)
        both[area], both[area2] = 1, 1
        # per channel: the mass of both windows plus the unused budget goes into the first
        freed = ((delta * both) ** 2).sum((2, 3), keepdim=True)
        spare = (self.eps ** 2 - (delta ** 2).sum((1, 2, 3), keepdim=True)).clamp_min(0) / c
        new = signs * pattern(side, xs, gen) + delta[area] / (
            delta[area].norm(dim=(2, 3), keepdim=True) + 1e-12)
        new = new / new.norm(dim=(2, 3), keepdim=True).clamp_min(1e-12) * (freed + spare).sqrt()
        delta = delta * (1 - both)
        delta[area] = new
        size = flat_norm(delta)
        return (xs + delta * (self.eps / size).clamp(max=1.0)).clamp(0, 1)
