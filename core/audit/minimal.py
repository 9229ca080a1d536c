"""The robustness curve's search (beside the audit's cascade): each image's smallest
adversarial perturbation over minimum-norm attacks (FMN, Pintor et al. 2021; FAB's
minimum-norm form, Croce & Hein 2020), each norm kept only where the float32 model is fooled;
then lowered by what the lab already knows (:func:`known_points`: adversarial examples an
audit or a curve of the same weights kept) and checked at the budgets the user cares about
(:func:`checked_at`: the fast audit's APGD-CE and APGD-T, Croce & Hein 2020, on the images
the search left unbroken there), so the curve is never weaker than the lab's own audit.

An image misclassified already has norm 0 and is attacked by none of them. Where a
low-precision search reports a point that the float32 model does not confirm (a boundary
point, at a margin of rounding), the image is searched again in float32, as the audit does, so
rounding neither hides a success nor drops the point; how many were is counted."""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Callable, Sequence

import torch
import torch.nn as nn

from core.audit.cascade import confirmed, predict_labels, stages
from core.threat import ThreatModel

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


AFTER = ("clean", "apgd-ce", "apgd-t", "stored")  # the sources past the curve's own attacks


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Each image's perturbation size in ``norm`` (float32)."""
    delta = (x_adv.float() - x.float()).flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def known_points(model: nn.Module, x: torch.Tensor, y: torch.Tensor, found: dict,
                 rows: torch.Tensor, x_known: torch.Tensor, bound: torch.Tensor, norm: str,
                 by: int) -> int:
    """Lower ``found``'s norms (in place) to those of known adversarial examples ``x_known``
    of the images at ``rows`` of ``x`` where the float32 model is fooled by them; ``bound`` is
    the radius of the ball each was projected into (infinity: none in this norm); ``by`` names
    them. Returns how many images were lowered."""
    if not len(rows):
        return 0
    x_known = x_known.to(x.device).clamp(0, 1)
    fooled = predict_labels(model, x_known) != y[rows]
    size = distance(x_known, x[rows], norm)
    # projected into the ball: a size a rounding above its radius is the radius
    bound = bound.to(size.device)
    size = torch.where(size <= bound * (1 + 1e-5), torch.minimum(size, bound), size)
    lowered = 0
    for j in (fooled & (size < found["norm"][rows])).nonzero().squeeze(1).tolist():
        r = int(rows[j])
        if size[j] < found["norm"][r]:  # an image may have several known examples
            found["norm"][r], found["by"][r], found["x_adv"][r] = size[j], by, x_known[j]
            lowered += 1
    return lowered


def checked_at(model: nn.Module, search: nn.Module, x: torch.Tensor, y: torch.Tensor,
               found: dict, budgets: Sequence[float], norm: str, steps: int, seed: int,
               first: int, watch: Watch | None = None) -> int:
    """At each budget, the fast audit's attacks on the images ``found`` has not broken within
    it; an image they break gets that example, at its own size (at most the budget). ``first``
    is the index that names APGD-CE (APGD-T is the next). Returns how many were broken."""
    broken = 0
    for b, eps in enumerate(sorted(budgets)):
        plan = stages("fast", ThreatModel(norm, eps), steps, seed=seed)
        for k, stage in enumerate(plan):
            todo = (found["norm"] > eps).nonzero().squeeze(1)
            if not len(todo):
                break
            with (watch(stage.attack, b * len(plan) + k) if watch else nullcontext()):
                adv = stage.attack(search, x[todo], y[todo])
            adv, adv_pred, _ = confirmed(stage.attack, model, search, x[todo], y[todo], adv)
            fooled = (adv_pred.to(x.device) != y[todo]).nonzero().squeeze(1)
            # inside the ball by projection: a size a rounding above eps is eps
            size = distance(adv[fooled], x[todo[fooled]], norm).clamp(max=eps)
            found["norm"][todo[fooled]], found["x_adv"][todo[fooled]] = size, adv[fooled]
            found["by"][todo[fooled]] = first + k
            broken += len(fooled)
    return broken
