"""FAB, Croce & Hein, ICML 2020, "Minimally distorted Adversarial Examples with a Fast
Adaptive Boundary Attack", targeted: per target class, linearize the boundary between the true
and the target class, step to the projection of the current point and of the original point
onto it (inside the image box), biased towards the original, overshoot a little, and step back
towards the original after each success. L-inf and L2. Two forms share that geometry: FAB-T
as in AutoAttack's standard version (adversarial within a budget) and FAB in its minimum-norm
form (the smallest perturbation found, for robustness curves)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import (Attack, BallSettings, MinimumNorm, MinimumNormSettings,
                                   flat_norm, generator, rand, tick)
from core.checks import check_positive, check_range
from core.lazy import torch

if TYPE_CHECKING:
    import torch.nn as nn


def check_step(settings) -> None:
    """Check FAB's step settings (both forms): bias ``alpha_max``, overshoot ``eta``, backward
    step ``beta``."""
    check_range("alpha_max", settings.alpha_max, 0.0, 1.0)
    check_range("eta", settings.eta, 1.0, 10.0)
    check_range("beta", settings.beta, 0.0, 1.0)


@dataclass
class FABSettings(BallSettings):
    """FAB-T: ``steps`` iterations and ``restarts`` per target class, ``targets`` classes,
    step bias ``alpha_max``, overshoot ``eta`` and backward step ``beta``."""

    name: ClassVar[str] = "fab-t"
    steps: int = 100
    restarts: int = 1
    targets: int = 9
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9
    seed: int | None = 0

    def validate(self) -> None:
        super().validate()
        check_positive("steps", self.steps)
        check_positive("restarts", self.restarts)
        check_positive("targets", self.targets)
        check_step(self)

    def gradients_per_image(self) -> int:
        # a gradient pass and a forward pass per iteration
        return self.steps * self.restarts * self.targets * 4 // 3

    def iterations(self) -> int:
        return self.steps * self.restarts * self.targets


def plane_step(w: torch.Tensor, c: torch.Tensor, low: torch.Tensor, high: torch.Tensor,
               norm: str) -> torch.Tensor:
    """The smallest ``d`` (in ``norm``) with ``w . d = c`` and ``low <= d <= high``, per
    example (rows of the flattened tensors; ``low <= 0 <= high``); where no such ``d`` exists,
    the box corner that comes closest. Both norms make ``d`` a clipped ray
    ``clip(t * v, low, high)`` (``v = sign(c) sign(w)`` for L-inf, ``sign(c) w`` for L2) whose
    ``w . d`` is, in ``t``, piecewise linear and increasing: each coordinate adds ``slope * t``
    until it reaches its bound at its breakpoint, then a constant. So the exact ``t`` comes from
    the breakpoints sorted once per row and two running sums: a few kernels, where a bisection
    took hundreds per step (and a GPU runs a small model's attack at the pace of its kernel
    launches)."""
    a = torch.sign(c)[:, None] * w
    bound = torch.where(a > 0, high, -low)  # how far each coordinate can move the useful way
    if norm == "linf":
        v, slope, knot = torch.sign(a), a.abs(), bound
    else:
        v, slope = a, a * a
        knot = torch.where(a != 0, bound / a.abs().clamp_min(1e-30), float("inf"))
    reached = torch.where(slope > 0, slope * knot.nan_to_num(posinf=0.0), 0.0)
    knot, order = knot.sort(dim=1)
    slope, reached = slope.gather(1, order), reached.gather(1, order)
    done_before = reached.cumsum(1) - reached  # from the coordinates already at their bound
    slope_before = slope.cumsum(1) - slope
    total = slope.sum(1, keepdim=True)
    rate = (total - slope_before).clamp_min(0)
    at_knot = torch.where(knot.isinf(), float("inf"), done_before + knot * rate)
    need = c.abs()
    count = (at_knot < need[:, None]).sum(1, keepdim=True)  # knots passed before w . d = c
    k = count.clamp(max=knot.shape[1] - 1)
    t = ((need[:, None] - done_before.gather(1, k))
         / rate.gather(1, k).clamp_min(1e-30)).squeeze(1)
    corner = knot.masked_fill(knot.isinf(), 0).amax(1)  # every coordinate at its bound
    t = torch.where(count.squeeze(1) >= knot.shape[1], corner, t)
    return (t[:, None] * v).clamp(low, high) * (need > 0)[:, None]


class FABGeometry:
    """FAB's step towards the linearized boundary between the true and a target class, shared
    by its budgeted and its minimum-norm form (needs ``norm``, ``alpha_max`` and ``eta``)."""

    def _step(self, origin: torch.Tensor, x_k: torch.Tensor, f: torch.Tensor, w: torch.Tensor,
              shape: tuple) -> torch.Tensor:
        """The biased step to the linearized boundary: towards the projections of the current
        point and of the original, mixed by alpha, with overshoot eta."""
        flat_w = w.flatten(1)
        towards_k = plane_step(flat_w, -f, -x_k.flatten(1), 1 - x_k.flatten(1), self.norm)
        c_orig = -f - (flat_w * (origin - x_k).flatten(1)).sum(1)
        towards_0 = plane_step(flat_w, c_orig, -origin.flatten(1), 1 - origin.flatten(1),
                               self.norm)
        n_k, n_0 = self._size(towards_k), self._size(towards_0)
        alpha = (n_k / (n_k + n_0).clamp_min(1e-12)).clamp(0, self.alpha_max).view(shape)
        return ((1 - alpha) * (x_k + self.eta * towards_k.view_as(x_k))
                + alpha * (origin + self.eta * towards_0.view_as(x_k))).clamp(0, 1)

    def _boundary(self, model: nn.Module, x_k: torch.Tensor, y: torch.Tensor,
                  target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z_y - z_t at ``x_k`` (positive while the true class wins), its input gradient, and
        the logits."""
        point = x_k.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(point).float()
            f = logits.gather(1, y[:, None]).squeeze(1) - logits.gather(1, target[:, None]
                                                                        ).squeeze(1)
            (grad,) = torch.autograd.grad(f.sum(), point)
        return f.detach(), grad, logits.detach()

    def _size(self, d: torch.Tensor) -> torch.Tensor:
        return d.abs().max(1).values if self.norm == "linf" else d.norm(dim=1)


@dataclass
class FABT(FABSettings, FABGeometry, Attack):
    """FAB-T (Croce & Hein 2020), targeted at the classes with the 2nd to (k+1)-th highest
    clean logits, ``steps`` iterations and ``restarts`` per target, ``alpha_max`` 0.1,
    overshoot ``eta`` 1.05, backward step ``beta`` 0.9, as AutoAttack's standard version. A
    point is returned adversarial only if the smallest perturbation found is within ``eps``;
    it leaves the batch as soon as one is (the verdict is the same, the cost smaller)."""

    found_any: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = generator(self.seed)
        with torch.no_grad():
            order = model(x).float().sort(dim=1, descending=True).indices
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for rank in range(1, min(self.targets, order.shape[1] - 1) + 1):
            for restart in range(self.restarts):
                idx = robust.nonzero().squeeze(1)
                if not len(idx):
                    break
                adv, hit = self.run_once(model, x[idx], y[idx], order[idx, rank], gen,
                                         random_start=restart > 0)
                best[idx[hit]] = adv[hit]
                robust[idx[hit]] = False
        self.found_any = ~robust
        return best

    def run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor,
                 gen: torch.Generator | None, random_start: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One FAB run towards ``target``; returns the points and which are adversarial within
        eps. Each iteration takes the boundary's gradient at the current points, steps, and
        checks the new points with a forward pass (a step that crossed the boundary is then
        pulled back towards the original, so a gradient there would be wasted); a point stops
        being iterated once it is adversarial within eps."""
        shape = (-1,) + (1,) * (x.dim() - 1)
        out, hit = x.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
        live = torch.arange(len(x), device=x.device)
        x_k = self._start(x, gen) if random_start else x.clone()
        for _ in range(self.steps):
            tick()
            f, w, _ = self._boundary(model, x_k, y[live], target[live])
            origin = x[live]
            x_k = self._step(origin, x_k, f, w, shape)
            with torch.no_grad():
                fooled = model(x_k).float().argmax(1) != y[live]
            within = fooled & (self._size((x_k - origin).flatten(1)) <= self.eps)
            if bool(within.any()):  # positions once, then plain gathers (no wait per tensor)
                done, keep = within.nonzero().squeeze(1), (~within).nonzero().squeeze(1)
                out[live[done]], hit[live[done]] = x_k[done], True
                live, x_k, fooled, origin = (t.index_select(0, keep)
                                             for t in (live, x_k, fooled, origin))
                if not len(live):
                    break
            # past the boundary: step back towards the original
            x_k = torch.where(fooled.view(shape), (1 - self.beta) * origin + self.beta * x_k,
                              x_k)
        return out, hit

    def _start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            step = rand(x.shape, x, gen) * 2 - 1
            step = step / step.flatten(1).abs().max(1).values.clamp_min(1e-12).view(-1, 1, 1, 1)
        else:
            step = rand(x.shape, x, gen, "normal")
            step = step / flat_norm(step)
        return (x + 0.5 * self.eps * step).clamp(0, 1)


@dataclass
class FABMinimumSettings(MinimumNormSettings):
    """FAB in its minimum-norm form: ``steps`` iterations towards each of ``targets`` classes
    (those with the highest clean logits after the true one), step bias ``alpha_max``,
    overshoot ``eta`` and backward step ``beta`` as FAB-T's."""

    name: ClassVar[str] = "fab"
    # the curve's budget: with FMN's 100 steps a curve costs less than the sweep's 6-point
    # PGD-40 grid (benchmarks/curves.py); a third target moved no MNIST figure by a point
    steps: int = 30
    targets: int = 2
    alpha_max: float = 0.1
    eta: float = 1.05
    beta: float = 0.9

    def validate(self) -> None:
        super().validate()
        check_positive("steps", self.steps)
        check_positive("targets", self.targets)
        check_step(self)

    def gradients_per_image(self) -> int:
        return self.steps * self.targets * 4 // 3  # a gradient and a forward per iteration

    def iterations(self) -> int:
        return self.steps * self.targets


@dataclass
class FABMinimum(FABMinimumSettings, FABGeometry, MinimumNorm):
    """FAB (Croce & Hein 2020) as a minimum-norm attack: FAB-T's steps with no budget, every
    point kept going for all its steps (each success is followed by a step back towards the
    original, which is what shrinks the perturbation); returns the smallest adversarial point
    found over the targets and steps."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (x.dim() - 1)
        with torch.no_grad():
            logits = model(x).float()
        order = logits.sort(dim=1, descending=True).indices
        wrong = logits.argmax(1) != y
        best = x.clone()
        best_norm = torch.where(wrong, 0.0, float("inf"))
        for rank in range(1, min(self.targets, order.shape[1] - 1) + 1):
            x_k = x.clone()
            for _ in range(self.steps):
                tick()
                f, w, _ = self._boundary(model, x_k, y, order[:, rank])
                x_k = self._step(x, x_k, f, w, shape)
                with torch.no_grad():
                    fooled = model(x_k).float().argmax(1) != y
                size = self._size((x_k - x).flatten(1))
                better = fooled & (size < best_norm)
                best_norm = torch.where(better, size, best_norm)
                best = torch.where(better.view(shape), x_k, best)
                x_k = torch.where(fooled.view(shape), (1 - self.beta) * x + self.beta * x_k, x_k)
        return best
