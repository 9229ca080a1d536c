"""Square Attack, Andriushchenko, Croce, Flammarion & Hein, ECCV 2020, "Square Attack: a
query-efficient black-box adversarial attack via random search": gradient-free, so it is not
fooled by masked gradients. Random square-shaped updates at the corners of the eps-ball are
kept when they lower the margin loss; only still-robust points are queried."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from . import hyperparams as hp
from .contract import Attack, generator, margin, rand

# Query counts (of 10,000) at which the square's share of the image halves.
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, query: int, budget: int) -> float:
    """Share of the image the square covers at ``query`` (the schedule scaled to ``budget``)."""
    scaled = int(query / budget * 10000)
    return p_init / 2 ** sum(scaled > h for h in HALVINGS)


@dataclass
class Square(hp.SquareSettings, Attack):
    """Square Attack (Andriushchenko et al. 2020), L-inf: start from vertical stripes of +-eps,
    then ``queries`` times draw a square window (side from the p schedule) and set it to a
    random +-eps per channel; keep it where the margin loss drops. Points stop being queried
    once misclassified."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = generator(self.seed)
        n, c, h, w = x.shape
        eps = self.eps
        stripes = (rand(torch.Size([n, c, 1, w]), x, gen) < 0.5).float() * 2 - 1
        adv = (x + eps * stripes.expand_as(x)).clamp(0, 1)
        with torch.no_grad():
            best = margin(model(adv).float(), y)
        for q in range(1, self.queries):
            live = (best > 0).nonzero().squeeze(1)
            if not len(live):
                break
            side = max(1, min(h - 1, round(math.sqrt(square_fraction(self.p_init, q,
                                                                     self.queries) * h * w))))
            top = int(rand(torch.Size([1]), x, gen).item() * (h - side + 1))
            left = int(rand(torch.Size([1]), x, gen).item() * (w - side + 1))
            xs, cand = x[live], adv[live].clone()
            signs = (rand(torch.Size([len(live), c, 1, 1]), x, gen) < 0.5).float() * 2 - 1
            window = (xs[:, :, top:top + side, left:left + side] + eps * signs).clamp(0, 1)
            cand[:, :, top:top + side, left:left + side] = window
            with torch.no_grad():
                loss = margin(model(cand).float(), y[live])
            better = loss < best[live]
            keep = live[better]
            adv[keep], best[keep] = cand[better], loss[better]
        return adv
