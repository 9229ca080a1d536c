"""Defenses: training objectives plugged into ``fit``. Each is called as
``objective(model, x, y) -> loss`` with the model in train mode. Adversarial examples are
crafted with frozen parameters: the PGD-based defenses (PGD-AT, TRADES, IAT) against the model
with BatchNorm's running statistics (``craft_mode="eval"``, the default) or the batch's own
(``"train"``); the single-step ones (FGSM-AT, fast-AT) against the model in train mode, as
Wong et al.'s reference code does. Their settings live in :mod:`core.training.settings`."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.attacks import APGD, PGD
from core.attacks.contract import attack_mode, input_grad
from core.attacks.speed import folded
from core.paths import InputError
from core.training.settings import (COLLAPSE_DROP, DefenseSettings, FastATSettings,
                                    FGSMTrainingSettings, IATSettings, MultiStepSettings,
                                    PGDTrainingSettings, TRADESSettings, defense_settings)


def _inner(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper: crafting must not run DDP's
    forward, which expects exactly one backward through the parameters per forward."""
    return getattr(model, "module", model)


def _ce(logits: torch.Tensor, y: torch.Tensor, smoothing: float) -> torch.Tensor:
    return F.cross_entropy(logits, y, label_smoothing=smoothing)


class Objective(DefenseSettings):
    """Plain cross-entropy (with optional label smoothing): the undefended objective.
    Defenses are called as ``objective(model, x, y) -> loss`` with the model in train mode."""

    def begin_epoch(self, epoch: int) -> None:
        """Epsilon ramp: grow the budget linearly over the first ``eps_ramp_epochs`` epochs."""
        if self.eps_ramp_epochs:
            self.current_eps = self.eps * min(1.0, (epoch + 1) / self.eps_ramp_epochs)

    def end_epoch(self, model: nn.Module, clean_batches: Callable[[], Iterable[torch.Tensor]]
                  ) -> None:
        """Called after an epoch's last step, before the epoch is evaluated and saved."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return _ce(model(x), y, self.label_smoothing)


class BatchStatistics(nn.Module):
    """A model whose BatchNorm layers normalize by each batch's own statistics, as in
    training, while their running statistics stay as they are: crafting in train mode
    (``craft_mode="train"``) without the crafting passes counting as training batches. An
    attack's switch to eval mode does not reach the model inside, and the attack contract's
    BatchNorm folding (which uses the running statistics) does not apply."""

    fold_batchnorm = False  # folding would normalize by the running statistics

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def train(self, mode: bool = True) -> "BatchStatistics":
        self.training = mode  # the model inside stays in train mode
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        kept = [(m, m.momentum, m.training) for m in norms]
        try:
            for m in norms:
                m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged
                m.train(True)
            return self.model(x)
        finally:
            for m, momentum, training in kept:
                m.momentum = momentum
                m.train(training)


class _Adversarial(MultiStepSettings, Objective):
    """Shared crafting of PGD-based defenses."""

    def craft(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """PGD examples at the current epsilon, seeded from the global (per-epoch) RNG, against
        the model with running (``craft_mode="eval"``) or batch (``"train"``) statistics."""
        target = _inner(model)
        if self.craft_mode == "train":
            target = BatchStatistics(target)
        return PGD(eps=self.current_eps, steps=self.steps, step_size=self.step_size,
                   seed=None, best_iterate=False)(target, x, y)


def clean_and_adversarial(model: nn.Module, x: torch.Tensor, adv: torch.Tensor,
                          batchnorm: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of the clean and the adversarial batch: one forward of both (``shared``: one
    set of BatchNorm batch statistics over the mixed batch) or two (``separate``, as the
    reference implementations of FGSM-AT and TRADES do)."""
    if batchnorm == "separate":
        return model(x), model(adv)
    logits = model(torch.cat([x, adv]))
    return logits[: len(x)], logits[len(x):]


def single_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float,
                random_start: bool, noise: float = 1.0, project: bool = True) -> torch.Tensor:
    """One signed-gradient step of size ``alpha``, crafted against the model in its current
    (training) mode. Early in training BatchNorm's running statistics lag behind the batch
    statistics, and examples crafted in eval mode are too weak to train on; Wong et al.'s
    reference code crafts in train mode too. Only the input's gradient is computed. With
    ``random_start`` the step starts from uniform noise of ``noise`` * eps; ``project=False``
    keeps the perturbation unprojected (N-FGSM, de Jorge et al. 2022), else it is clipped to
    the eps-ball."""
    delta = torch.zeros_like(x)
    if random_start:
        delta = ((torch.rand_like(x) * 2 - 1) * noise * eps + x).clamp(0, 1) - x
    delta.requires_grad_(True)
    with torch.autocast(x.device.type, enabled=False):  # the step's gradient in float32
        loss = F.cross_entropy(_inner(model)(x + delta), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, delta)
    delta = delta.detach() + alpha * grad.sign()
    if project:
        delta = delta.clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


@dataclass
class FGSMTraining(FGSMTrainingSettings, Objective):
    """FGSM adversarial training, Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples": loss = (1 - weight) * CE(clean) + weight * CE(FGSM(x)). With
    ``random_start`` the step starts from a random point of the ball, as R+FGSM (Tramèr et al.
    2018, "Ensemble Adversarial Training") and fast-AT do; with ``noise_ratio`` 2 and
    ``project`` false it is N-FGSM (de Jorge et al. 2022, "Make Some Noise: Reliable and
    Efficient Single-Step Adversarial Training")."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        eps = self.current_eps
        adv = single_step(model, x, y, eps, self.alpha_ratio * eps, self.random_start,
                          self.noise_ratio, self.project)
        clean, adv_logits = clean_and_adversarial(model, x, adv, self.batchnorm)
        return ((1 - self.weight) * _ce(clean, y, self.label_smoothing)
                + self.weight * _ce(adv_logits, y, self.label_smoothing))


@dataclass
class FastAT(FastATSettings, Objective):
    """"Fast is better than free", Wong, Rice & Kolter 2020: FGSM from a uniform random start
    in the eps-ball with step ``alpha_ratio`` * eps (1.25 by default), projected; train on it."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        eps = self.current_eps
        adv = single_step(model, x, y, eps, self.alpha_ratio * eps, random_start=True)
        return _ce(model(adv), y, self.label_smoothing)


@dataclass
class PGDTraining(PGDTrainingSettings, _Adversarial):
    """PGD adversarial training, Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks": minimize CE on PGD examples (random start) of the current batch."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        return _ce(model(self.craft(model, x, y)), y, self.label_smoothing)


@dataclass
class TRADES(TRADESSettings, _Adversarial):
    """TRADES, Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
    Accuracy": CE(f(x), y) + beta * KL(f(x) || f(x')), x' maximizing that KL by PGD from
    x + 0.001 * N(0, 1) inside the L-inf eps-ball."""

    def craft_kl(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Adversary of TRADES: maximize KL between clean and perturbed predictions."""
        eps, alpha = self.current_eps, self.step_size or 2.5 * self.current_eps / self.steps
        inner = _inner(model)
        if self.craft_mode == "train":
            inner = BatchStatistics(inner)
        with attack_mode(inner):
            model = folded(inner)
            with torch.no_grad():
                target = F.softmax(model(x).float(), dim=1)
            adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
            for _ in range(self.steps):
                grad, _ = input_grad(model, adv, target, lambda z, p: F.kl_div(
                    F.log_softmax(z, dim=1), p, reduction="sum"))
                adv = torch.min(torch.max(adv + alpha * grad.sign(), x - eps), x + eps).clamp(0, 1)
        return adv.detach()

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        if self.beta == 0:
            return Objective.__call__(self, model, x, y)
        adv = self.craft_kl(model, x)
        clean, adv_logits = clean_and_adversarial(model, x, adv, self.batchnorm)
        kl = F.kl_div(F.log_softmax(adv_logits, dim=1), F.softmax(clean, dim=1),
                      reduction="batchmean")
        return _ce(clean, y, self.label_smoothing) + self.beta * kl


@dataclass
class IAT(IATSettings, _Adversarial):
    """Interpolated Adversarial Training, Lamb et al. 2019, "Interpolated Adversarial Training:
    Achieving Robust Neural Networks without Sacrificing Too Much Accuracy": craft PGD examples
    from the clean batch, apply mixup (lambda ~ Beta(alpha, alpha), a random pairing) separately
    to the clean and to the adversarial batch, loss = ``loss_factor`` (mixup CE clean + mixup CE
    adv), 1/2 by default. ``lam`` fixes lambda (for tests and ablations)."""

    def _lambda(self) -> float:
        if self.lam is not None:
            return self.lam
        return float(torch.distributions.Beta(self.alpha, self.alpha).sample())

    def mixup(self, x: torch.Tensor) -> tuple[torch.Tensor, float, torch.Tensor]:
        """Mixup of Zhang et al. 2018: the mixed batch, its lambda and its pairing."""
        lam, perm = self._lambda(), torch.randperm(len(x), device=x.device)
        return lam * x + (1 - lam) * x[perm], lam, perm

    def mixup_loss(self, logits: torch.Tensor, y: torch.Tensor, lam: float,
                   perm: torch.Tensor) -> torch.Tensor:
        """Mixup cross-entropy of one mixed batch's logits."""
        return (lam * _ce(logits, y, self.label_smoothing)
                + (1 - lam) * _ce(logits, y[perm], self.label_smoothing))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        adv = self.craft(model, x, y)
        mixed, lam, perm = self.mixup(x)
        mixed_adv, lam_adv, perm_adv = self.mixup(adv)
        clean, adv_logits = clean_and_adversarial(model, mixed, mixed_adv, self.batchnorm)
        return self.loss_factor * (self.mixup_loss(clean, y, lam, perm)
                                   + self.mixup_loss(adv_logits, y, lam_adv, perm_adv))

    def end_epoch(self, model: nn.Module, clean_batches: Callable[[], Iterable[torch.Tensor]]
                  ) -> None:
        if self.recalibrate:
            recalibrate_batchnorm(_inner(model), clean_batches())


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Recompute every BatchNorm layer's running statistics as the plain average over
    ``batches`` (clean images), as SWA's ``update_bn`` does: crafting and testing then see
    clean statistics instead of a blend of clean and adversarial batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    kept = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in zip(norms, kept):
            m.momentum = momentum
        model.train(was_training)


DEFENSES: dict[str, type[Objective]] = {
    "none": Objective, "fgsm-at": FGSMTraining, "fast-at": FastAT, "pgd-at": PGDTraining,
    "trades": TRADES, "iat": IAT,
}
SINGLE_STEP = ("fgsm-at", "fast-at")


def build_defense(name: str, **params) -> Objective:
    """Build a registered defense objective; unknown names or parameters list the valid ones."""
    settings = defense_settings(name, **params)
    return DEFENSES[name](**settings.params())


class RobustGuard:
    """Per-epoch robust accuracy under APGD-CE (Croce & Hein 2020; a short budget, 10 steps by
    default) on fixed held-out training images (never trained on, never test images); flags
    catastrophic overfitting (Wong et al. 2020) when it collapses and tracks the best epoch by
    robust accuracy (selection on a validation split, as Rice et al. 2020). APGD-CE, not PGD:
    the audit showed PGD fooled by IAT's models, and a guard must not select the epoch that
    fools its own attack best."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, attack: APGD,
                 collapse_drop: float = COLLAPSE_DROP) -> None:
        self.x, self.y, self.attack, self.collapse_drop = x, y, attack, collapse_drop
        self.best_acc = -math.inf
        self.best_epoch: int | None = None
        self.collapsed = False

    @classmethod
    def for_config(cls, cfg, held_out) -> "RobustGuard":
        """Guard for a TrainConfig on its held-out images: ``robust_eval`` may set eps, steps,
        n, collapse_drop."""
        opts = dict(cfg.robust_eval)
        eps = float(opts.pop("eps", cfg.defense_args.get("eps", 0.1)))
        opts.pop("n", None)  # the size of held_out (core.training.loop.held_out_size)
        steps = int(opts.pop("steps", 10))
        drop = float(opts.pop("collapse_drop", COLLAPSE_DROP))
        if opts:
            raise InputError(f"unknown robust_eval options {sorted(opts)}; valid: eps, steps, n, "
                             "collapse_drop")
        return cls(held_out.floats(), held_out.labels,
                   APGD(eps=eps, steps=steps, loss="ce", seed=0), drop)

    def measure(self, model: nn.Module) -> dict:
        """Robust accuracy of ``model`` under the guard's attack on the held-out images
        (correct before and after; and the eps used)."""
        device = next(model.parameters()).device
        correct = 0
        for start in range(0, len(self.x), 250):
            xb = self.x[start:start + 250].to(device)
            yb = self.y[start:start + 250].to(device)
            adv = self.attack(model, xb, yb)
            with torch.no_grad(), attack_mode(model):
                correct += (model(adv).argmax(1) == yb).sum().item()
        return {"robust_acc": correct / max(len(self.x), 1), "robust_eps": self.attack.eps}

    def update(self, history: dict, epoch: int) -> tuple[str | None, bool]:
        """Record an epoch's robust accuracy; return (collapse warning or None, is_best). A
        collapse is reported once, at its first epoch; it is reported again only after the
        accuracy came back within ``collapse_drop`` of the best and fell once more."""
        acc = history["robust_acc"]
        warning = None
        below = self.best_epoch is not None and acc < self.best_acc - self.collapse_drop
        if below and not self.collapsed:
            warning = (f"catastrophic overfitting suspected at epoch {epoch + 1}: held-out APGD-CE "
                       f"accuracy fell from {self.best_acc:.1%} (epoch {self.best_epoch}) to "
                       f"{acc:.1%}; the best checkpoint by robust accuracy is kept "
                       "(best.safetensors)")
        self.collapsed = below
        is_best = acc >= self.best_acc
        if is_best:
            self.best_acc, self.best_epoch = acc, epoch + 1
        return warning, is_best
