"""The robustness curve's search (beside the audit's cascade): each image's smallest
adversarial perturbation over minimum-norm attacks (FMN, Pintor et al. 2021; FAB's
minimum-norm form, Croce & Hein 2020), each norm kept only where the float32 model is fooled.

An image misclassified already has norm 0 and is attacked by none of them. Where a
low-precision search reports a point that the float32 model does not confirm (a boundary
point, at a margin of rounding), the image is searched again in float32, as the audit does, so
rounding neither hides a success nor drops the point; how many were is counted."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Sequence

import torch
import torch.nn as nn

from core.audit.cascade import predict_labels

Watch = Callable[[object, int], AbstractContextManager]


def smallest_norms(model: nn.Module, search: nn.Module, x: torch.Tensor, y: torch.Tensor,
                   attacks: Sequence, low_precision: bool, watch: Watch | None = None
                   ) -> dict[str, torch.Tensor]:
    """Per image of ``x``: ``norm`` (0: misclassified already; infinity: never broken), ``by``
    (the attack's index; ``len(attacks)`` for misclassified), ``x_adv`` (the point kept) and
    ``researched`` (searched again in float32). ``search`` is the model the attacks run on
    (``model`` itself, or its low-precision form); every verdict is ``model``'s."""
    device = x.device
    best = torch.full((len(x),), float("inf"), device=device)
    by = torch.full((len(x),), -1, dtype=torch.long, device=device)
    best_x, researched = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=device)
    wrong = predict_labels(model, x) != y
    best[wrong], by[wrong] = 0.0, len(attacks)
    todo = (~wrong).nonzero().squeeze(1)  # FAB and FMN skip what is misclassified already
    for a, attack in enumerate(attacks):
        if not len(todo):
            break
        xs, ys = x[todo], y[todo]
        with (watch(attack, a) if watch else nullcontext()):
            x_adv, norms = attack.minimal(search, xs, ys, verdict=model)
        if low_precision:
            found = predict_labels(search, x_adv) != ys
            rejected = (found & torch.isinf(norms)).nonzero().squeeze(1)
            if len(rejected):
                again, again_norms = attack.minimal(model, xs[rejected], ys[rejected])
                x_adv[rejected], norms[rejected] = again, again_norms
                researched[todo[rejected]] = True
        better = norms < best[todo]
        keep = todo[better]
        best[keep], by[keep], best_x[keep] = norms[better], a, x_adv[better]
    return {"norm": best, "by": by, "x_adv": best_x, "researched": researched}
