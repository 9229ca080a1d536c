"""Auto-PGD, Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks": PGD with momentum and a step size that halves
at checkpoints when progress stalls, with the cross-entropy or the DLR loss, untargeted
(APGD) or targeted at the classes with the highest clean logits (APGD-T). L-inf and L2."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from core.attacks.contract import (Attack, BallSettings, flat_norm, generator, margin, project,
                                   rand, tick)
from core.checks import check_choice, check_positive
from core.lazy import F, torch

if TYPE_CHECKING:
    import torch.nn as nn


@dataclass
class APGDSettings(BallSettings):
    """APGD: ``steps`` iterations (100, the reference's), the ce or dlr loss, ``restarts``."""

    name: ClassVar[str] = "apgd-ce"
    strong: ClassVar[dict] = {"restarts": 5}
    steps: int = 100
    loss: str = "ce"
    restarts: int = 1
    seed: int | None = 0
    losses: ClassVar[tuple] = ("ce", "dlr")

    def validate(self) -> None:
        super().validate()
        check_positive("steps", self.steps)
        check_positive("restarts", self.restarts)
        check_choice(f"{self.name} loss", self.loss, self.losses)

    def gradients_per_image(self) -> int:
        return self.steps * self.restarts


@dataclass
class APGDTSettings(APGDSettings):
    """APGD-T: the targeted DLR loss against each of the ``targets`` most likely other classes."""

    name: ClassVar[str] = "apgd-t"
    strong: ClassVar[dict] = {}
    losses: ClassVar[tuple] = ("dlr-targeted",)
    loss: str = "dlr-targeted"
    targets: int = 9

    def validate(self) -> None:
        super().validate()
        check_positive("targets", self.targets)

    def gradients_per_image(self) -> int:
        return self.steps * self.restarts * self.targets


MOMENTUM = 0.75
RHO = 0.75


def checkpoints(steps: int) -> list[int]:
    """Iterations at which the step size may halve: the first after 0.22 N, then gaps that
    shrink by 0.03 N down to 0.06 N (in whole iterations)."""
    gap, shrink, floor = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), \
        max(int(0.06 * steps), 1)
    marks, at = [], gap
    while at < steps:
        marks.append(at)
        gap = max(gap - shrink, floor)
        at += gap
    return marks


def dlr_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
             ) -> torch.Tensor:
    """Difference of Logits Ratio per example (to be maximized): untargeted
    -(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3); targeted -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4)/2).
    Invariant to shifting and rescaling the logits, so saturated softmaxes do not hide a point."""
    ordered = logits.sort(dim=1, descending=True).values
    if target is None:
        return -margin(logits, y) / (ordered[:, 0] - ordered[:, 2] + 1e-12)
    own = logits.gather(1, y[:, None]).squeeze(1)
    aimed = logits.gather(1, target[:, None]).squeeze(1)
    scale = ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2 + 1e-12
    return -(own - aimed) / scale


# DLR's denominator needs the 3rd (untargeted) or the 3rd and 4th (targeted) largest logit;
# with fewer classes AutoAttack's own rule applies: cross-entropy, or targeted cross-entropy
DLR_CLASSES = {"dlr": 3, "dlr-targeted": 4}
FALLBACK = {"dlr": "ce", "dlr-targeted": "ce-targeted"}


def effective_loss(kind: str, classes: int) -> str:
    """The loss actually used for ``kind`` on a model with ``classes`` outputs."""
    return FALLBACK[kind] if classes < DLR_CLASSES.get(kind, 0) else kind


def _loss(logits: torch.Tensor, y: torch.Tensor, kind: str,
          target: torch.Tensor | None) -> torch.Tensor:
    kind = effective_loss(kind, logits.shape[1])
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    if kind == "ce-targeted":  # maximized: pull the point towards the target class
        return -F.cross_entropy(logits, target, reduction="none")
    return dlr_loss(logits, y, target)


@dataclass
class APGD(APGDSettings, Attack):
    """APGD (Croce & Hein 2020): ``steps`` iterations from a random start, initial step 2 eps,
    momentum 0.75, the step halved at checkpoints when the loss rose in at most 75% of the steps
    since the last one or when nothing improved; restarts only on still-robust points; per
    example the misclassified iterate found (else the best-loss point) is returned. ``trace``
    holds, per iteration of the first run of the last call, how many points were broken so far
    (the audit checks that the optimisation had converged)."""

    trace: list = field(default_factory=list, init=False, repr=False, compare=False)
    broken: list = field(default_factory=list, init=False, repr=False, compare=False)
    found_any: torch.Tensor | None = field(default=None, init=False, repr=False, compare=False)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = generator(self.seed)
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        self.found_any = torch.zeros_like(robust)
        for restart in range(self.restarts):
            idx = robust.nonzero().squeeze(1)
            if not len(idx):
                break
            adv, fooled = self.run_once(model, x[idx], y[idx], None, gen)
            if restart == 0:
                self.trace = self.broken
            best[idx] = adv
            robust[idx[fooled]] = False
            self.found_any[idx[fooled]] = True
        return best

    def run_once(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 target: torch.Tensor | None, gen: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """One APGD run; returns the points and which of them are misclassified. A point is
        settled at its first misclassified iterate (its verdict cannot change) and leaves the
        batch: on a CPU at once (every row costs arithmetic), on a GPU once half the rows are
        settled (there a small batch costs little more than a smaller one, while every new
        batch size makes cuDNN plan each convolution anew)."""
        n, shape = len(x), (-1,) + (1,) * (x.dim() - 1)
        out, fooled = x.clone(), torch.zeros(n, dtype=torch.bool, device=x.device)
        x_k = (x + self._start(x, gen)).clamp(0, 1)
        loss, grad, logits = self._loss_grad(model, x_k, y, target)
        s = {"live": torch.arange(n, device=x.device), "x": x, "y": y, "x_k": x_k,
             "x_prev": x_k.clone(), "eta": torch.full((n,), 2 * self.eps, device=x.device),
             "loss": loss, "grad": grad, "loss_best": loss.clone(), "x_best": x_k.clone(),
             "grad_best": grad.clone(), "rises": torch.zeros(n, device=x.device),
             "halved_last": torch.zeros(n, dtype=torch.bool, device=x.device),
             "settled": torch.zeros(n, dtype=torch.bool, device=x.device)}
        if target is not None:
            s["target"] = target
        s["eta_at_mark"], s["best_at_mark"] = s["eta"].clone(), s["loss_best"].clone()
        lazy = self._settle_lazily(x)
        s = self._retire(s, self._hit(logits, s["y"]), out, fooled, lazy)
        broken, marks, last_mark = [int(fooled.sum())], set(checkpoints(self.steps)), 0
        for k in range(self.steps):
            tick()
            if not len(s["live"]):
                broken += [broken[-1]] * (self.steps - k)
                for _ in range(self.steps - k - 1):  # every point settled: the rest is done
                    tick()
                break
            eta = s["eta"].view(shape)
            z = self._project(s["x"], s["x_k"] + eta * self._direction(s["grad"]))
            step = (s["x_k"] + MOMENTUM * (z - s["x_k"]) + (1 - MOMENTUM)
                    * (s["x_k"] - s["x_prev"])) if k else z  # no momentum on the first step
            s["x_prev"], s["x_k"] = s["x_k"], self._project(s["x"], step)
            new_loss, s["grad"], logits = self._loss_grad(model, s["x_k"], s["y"],
                                                          s.get("target"))
            s["rises"] += (new_loss > s["loss"]).float()
            s["loss"] = new_loss
            better = new_loss > s["loss_best"]
            s["loss_best"] = torch.where(better, new_loss, s["loss_best"])
            s["x_best"] = torch.where(better.view(shape), s["x_k"], s["x_best"])
            s["grad_best"] = torch.where(better.view(shape), s["grad"], s["grad_best"])
            s = self._retire(s, self._hit(logits, s["y"]), out, fooled, lazy)
            broken.append(int(fooled.sum()))
            if k + 1 in marks:
                self._checkpoint(s, k + 1 - last_mark, shape)
                last_mark = k + 1
        rest = (~s["settled"]).nonzero().squeeze(1)
        out[s["live"].index_select(0, rest)] = s["x_best"].index_select(0, rest)
        self.broken = broken
        return out, fooled

    @staticmethod
    def _checkpoint(s: dict, since: int, shape: tuple) -> None:
        """Halve the step where the loss rose in at most 75% of the steps since the last
        checkpoint, or where nothing improved and the step was not halved last time; restart
        those from their best point."""
        stalled = s["rises"] <= RHO * since
        flat = ~s["halved_last"] & (s["eta_at_mark"] == s["eta"]) & (
            s["best_at_mark"] == s["loss_best"])
        halve = stalled | flat
        s["eta"] = torch.where(halve, s["eta"] / 2, s["eta"])
        s["x_k"] = torch.where(halve.view(shape), s["x_best"], s["x_k"])
        s["grad"] = torch.where(halve.view(shape), s["grad_best"], s["grad"])
        s["halved_last"], s["rises"] = halve, torch.zeros_like(s["rises"])
        s["eta_at_mark"], s["best_at_mark"] = s["eta"].clone(), s["loss_best"].clone()

    @staticmethod
    def _settle_lazily(x: torch.Tensor) -> bool:
        return x.device.type == "cuda"

    @staticmethod
    def _retire(s: dict, hit: torch.Tensor, out: torch.Tensor, fooled: torch.Tensor,
                lazy: bool) -> dict:
        """Write newly misclassified iterates out and settle those points; drop the settled
        points from the batch (with ``lazy``, only once they are half of it)."""
        new = hit & ~s["settled"]
        # positions once, then plain gathers: a boolean index would wait for the device
        # once per tensor
        gone = new.nonzero().squeeze(1)
        if not len(gone):
            return s
        where = s["live"].index_select(0, gone)
        out[where] = s["x_k"].index_select(0, gone)
        fooled[where] = True
        s["settled"] = s["settled"] | new
        settled = int(s["settled"].sum()) if lazy else len(s["settled"])
        if lazy and 2 * settled < len(s["settled"]):
            return s
        keep = (~s["settled"]).nonzero().squeeze(1)
        return {key: value.index_select(0, keep) for key, value in s.items()}

    def _start(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            return (rand(x.shape, x, gen) * 2 - 1) * self.eps
        direction = rand(x.shape, x, gen, "normal")
        return direction / flat_norm(direction) * self.eps * 0.5

    def _direction(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign() if self.norm == "linf" else grad / flat_norm(grad)

    def _project(self, x: torch.Tensor, point: torch.Tensor) -> torch.Tensor:
        return (x + project(point - x, self.eps, self.norm)).clamp(0, 1)

    def _loss_grad(self, model: nn.Module, x_k: torch.Tensor, y: torch.Tensor,
                   target: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        point = x_k.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(point).float()
            losses = _loss(logits, y, self.loss, target)
            (grad,) = torch.autograd.grad(losses.sum(), point)
        return losses.detach(), grad, logits.detach()

    @staticmethod
    def _hit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) != y  # a targeted run succeeds once the point is misclassified


@dataclass
class APGDT(APGDTSettings, APGD):
    """APGD-T (Croce & Hein 2020): APGD with the targeted DLR loss, one run per target class,
    the targets being the classes with the 2nd to (k+1)-th highest clean logits; each run only
    on the points still robust."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = generator(self.seed)
        with torch.no_grad():
            logits = model(x).float()
        classes = logits.shape[1]
        order = logits.sort(dim=1, descending=True).indices
        best = x.clone()
        robust = torch.ones(len(x), dtype=torch.bool, device=x.device)
        self.found_any = torch.zeros_like(robust)
        for rank in range(1, min(self.targets, classes - 1) + 1):
            for _ in range(self.restarts):
                idx = robust.nonzero().squeeze(1)
                if not len(idx):
                    return best
                adv, fooled = self.run_once(model, x[idx], y[idx], order[idx, rank], gen)
                best[idx] = adv
                robust[idx[fooled]] = False
                self.found_any[idx[fooled]] = True
        return best
