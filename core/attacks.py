"""Adversarial attacks. Each is a dataclass of hyperparameters called as
``attack(model, x, y) -> x_adv`` with ``x`` in [0, 1] (B, C, H, W).

Contract: gradients are taken with respect to the input only (parameters are frozen for the
call, so their ``.grad`` is untouched and no weight gradients are computed); the model runs in
eval mode and its previous mode is restored; the result is detached, of the input's shape,
dtype and device, inside [0, 1] and, for norm-bounded attacks, inside the epsilon-ball.
Random attacks take a ``seed``; ``seed=None`` draws from torch's global generator (training).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .paths import InputError, build_registered

NORMS = ("linf", "l2")


@contextmanager
def attack_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters for the duration of an attack, then restore both."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    device = flags[0][0].device.type if flags else "cpu"
    try:
        # Attack gradients in float32 even inside a mixed-precision training step.
        with torch.autocast(device, enabled=False):
            yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def fast_copy(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model for attacking: BatchNorm folded into the convolutions
    (exact in eval mode) and weights in channels-last layout. Small convolutions are bound by
    memory traffic, so the folded BatchNorm passes are a large share of every PGD step. Models
    torch.fx cannot trace are used as they are."""
    import copy

    from torch.fx.experimental.optimization import fuse
    from torch.fx.proxy import TraceError

    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model
    try:
        fused = fuse(copy.deepcopy(model))
    except (TraceError, TypeError, RuntimeError, NotImplementedError, AttributeError):
        return model  # dynamic control flow: attack the model as it is
    for p in fused.parameters():
        p.requires_grad_(False)
    return fused.to(memory_format=torch.channels_last)


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of ``loss_fn(model(x), y)`` (summed) with respect to ``x`` only; also the logits."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits.float(), y)
        (grad,) = torch.autograd.grad(loss, x)
    return grad, logits.detach()


def _ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _rand(shape: torch.Size, like: torch.Tensor, gen: torch.Generator | None,
          kind: str = "uniform") -> torch.Tensor:
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(shape, generator=gen, device="cpu", dtype=torch.float32).to(like)


def _generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the L-inf or L2 ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = (eps / _flat_norm(delta)).clamp(max=1.0)
    return delta * factor


def _check_input(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4:
        raise InputError(f"attack input must have shape (B, C, H, W), got {tuple(x.shape)}")
    if y.shape != (x.shape[0],):
        raise InputError(f"labels must have shape ({x.shape[0]},), got {tuple(y.shape)}")
    if not x.is_floating_point():
        raise InputError(f"attack input must be a float tensor in [0, 1], got {x.dtype}")
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise InputError("attack input must lie in [0, 1] (normalization belongs in the model)")


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not low <= value <= high:
        raise InputError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name} must be a positive whole number, got {value!r}")


@dataclass
class Attack:
    """Base class: validation, eval-mode/frozen-parameter handling and the output contract."""

    name: ClassVar[str] = "attack"
    budget: ClassVar[str | None] = None  # the field a sweep varies (eps or sigma)
    norm_bounded: ClassVar[bool] = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError for out-of-range hyperparameters."""

    def params(self) -> dict:
        """Hyperparameters as a JSON-able dict."""
        return asdict(self)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_input(x, y)
        if x.shape[0] == 0:
            return x.detach().clone()
        with attack_mode(model):
            fast = fast_copy(model)
            out = self.perturb(fast, x.detach().contiguous(memory_format=torch.channels_last),
                               y.detach())
        return out.detach().clamp(0.0, 1.0).to(dtype=x.dtype).contiguous()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself; called with the model in eval mode and parameters frozen."""
        raise NotImplementedError


@dataclass
class Noise(Attack):
    """Random noise baseline (not an adversarial attack): additive Gaussian noise of standard
    deviation ``sigma`` (or uniform in [-sigma, sigma]), clipped to [0, 1]. Threat model:
    random corruption. Used as the noise row of the seed study's table."""

    name: ClassVar[str] = "noise"
    budget: ClassVar[str | None] = "sigma"
    sigma: float = 0.1
    distribution: str = "gaussian"
    seed: int | None = 0

    def validate(self) -> None:
        _check_range("sigma", self.sigma, 0.0, 1.0)
        if self.distribution not in ("gaussian", "uniform"):
            raise InputError(f"noise distribution must be gaussian or uniform, got "
                             f"{self.distribution!r}")

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = _generator(self.seed)
        if self.distribution == "gaussian":
            noise = _rand(x.shape, x, gen, "normal") * self.sigma
        else:
            noise = (_rand(x.shape, x, gen) * 2 - 1) * self.sigma
        return x + noise


@dataclass
class FGSM(Attack):
    """Fast Gradient Sign Method, Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples". Threat model: white-box, L-infinity ball of radius ``eps``."""

    name: ClassVar[str] = "fgsm"
    budget: ClassVar[str | None] = "eps"
    norm_bounded: ClassVar[bool] = True
    eps: float = 0.1
    targeted: bool = False
    target: int | None = None

    def validate(self) -> None:
        _check_range("eps", self.eps, 0.0, 1.0)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = _goal(model, x, y, self.targeted, self.target)
        grad, _ = input_grad(model, x, labels, _ce_sum)
        return (x + sign * self.eps * grad.sign()).clamp(0, 1)


def _goal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool,
          target: int | None) -> tuple[torch.Tensor, float]:
    """Labels the loss is computed against and the ascent sign (+1 untargeted, -1 targeted)."""
    if not targeted:
        return y, 1.0
    if target is not None:
        return torch.full_like(y, int(target)), -1.0
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    return (y + 1) % classes, -1.0  # "next class" target when none is given


@dataclass
class PGD(Attack):
    """Projected Gradient Descent, Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks". Threat model: white-box, L-infinity or L2 ball of radius ``eps``.
    Random start, ``steps`` steps of size ``step_size`` (default 2.5 * eps / steps), and
    ``restarts`` keeping the worst case per example; optionally targeted."""

    name: ClassVar[str] = "pgd"
    budget: ClassVar[str | None] = "eps"
    norm_bounded: ClassVar[bool] = True
    eps: float = 0.1
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False
    target: int | None = None
    seed: int | None = 0

    def validate(self) -> None:
        _check_range("eps", self.eps, 0.0, 1.0 if self.norm == "linf" else 1e4)
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        _check_positive("steps", self.steps)
        _check_positive("restarts", self.restarts)
        if self.step_size is not None:
            _check_range("step size", self.step_size, 0.0, 1e4)

    @property
    def alpha(self) -> float:
        """Step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = _goal(model, x, y, self.targeted, self.target)
        gen = _generator(self.seed)
        if self.restarts == 1:  # nothing to choose between: skip the scoring pass
            return self._one_run(model, x, labels, sign, gen)
        best, best_score = x.clone(), torch.full((len(x),), -math.inf, device=x.device)
        for _ in range(self.restarts):
            adv = self._one_run(model, x, labels, sign, gen)
            score = self._score(model, adv, labels, sign)
            better = score > best_score
            best[better], best_score[better] = adv[better], score[better]
        return best

    def _one_run(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, sign: float,
                 gen: torch.Generator | None) -> torch.Tensor:
        delta = torch.zeros_like(x)
        if self.random_start and self.eps > 0:
            delta = self._random_delta(x, gen)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(self.steps):
            grad, _ = input_grad(model, x + delta, labels, _ce_sum)
            if self.norm == "linf":
                step = grad.sign()
            else:
                step = grad / _flat_norm(grad)
            delta = project(delta + sign * self.alpha * step, self.eps, self.norm)
            delta = (x + delta).clamp(0, 1) - x
        return x + delta

    def _random_delta(self, x: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        if self.norm == "linf":
            return (_rand(x.shape, x, gen) * 2 - 1) * self.eps
        direction = _rand(x.shape, x, gen, "normal")
        radius = _rand(torch.Size([len(x)]), x, gen).view(-1, 1, 1, 1) * self.eps
        return direction / _flat_norm(direction) * radius

    @staticmethod
    def _score(model: nn.Module, adv: torch.Tensor, labels: torch.Tensor, sign: float
               ) -> torch.Tensor:
        """Per-example attack quality: success first, then loss (higher is worse for the model)."""
        with torch.no_grad():
            logits = model(adv).float()
        loss = sign * F.cross_entropy(logits, labels, reduction="none")
        hit = logits.argmax(1) != labels if sign > 0 else logits.argmax(1) == labels
        return loss + hit.float() * 1e6


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
class Semantic(Attack):
    """Semantic attacks without an epsilon. ``mode='negative'``: x' = 1 - x (Hosseini et al.
    2017, "On the Limitation of Convolutional Neural Networks in Recognizing Negative Images").
    ``mode='hsv'``: Hosseini & Poovendran 2018, "Semantic Adversarial Examples": per trial a
    random hue shift and a saturation shift whose range grows with the trial number, up to
    ``trials``, keeping per example the first shift that is misclassified (unfooled examples are returned
    unchanged; RGB inputs only).
    Threat model: large, semantics-preserving colour changes, not a norm ball."""

    name: ClassVar[str] = "semantic"
    mode: str = "negative"
    trials: int = 100
    seed: int | None = 0

    def validate(self) -> None:
        if self.mode not in ("negative", "hsv"):
            raise InputError(f"semantic mode must be 'negative' or 'hsv', got {self.mode!r}")
        _check_positive("trials", self.trials)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "negative":
            return 1.0 - x
        if x.shape[1] != 3:
            raise InputError(f"the hsv semantic attack needs 3-channel RGB images, got "
                             f"{x.shape[1]} channel(s); use mode='negative' for grayscale")
        gen = _generator(self.seed)
        hsv = rgb_to_hsv(x)
        best = x.clone()
        open_ = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for trial in range(1, self.trials + 1):
            dh = _rand(torch.Size([len(x), 1, 1]), x, gen)
            ds = (_rand(torch.Size([len(x), 1, 1]), x, gen) * 2 - 1) * trial / self.trials
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


@dataclass
class CarliniWagner(Attack):
    """Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks", L2 attack.
    Threat model: white-box, minimal L2 perturbation. Optimizes w in tanh space with Adam on
    ||x' - x||^2 + c * max(Z_y - max_{i != y} Z_i, -kappa), binary-searching c per example
    (``search_steps`` rounds from ``initial_const``), aborting early when the loss stalls, and
    keeping the smallest successful perturbation; unsuccessful examples are returned unchanged."""

    name: ClassVar[str] = "cw"
    confidence: float = 0.0
    initial_const: float = 1e-3
    search_steps: int = 9
    steps: int = 1000
    lr: float = 1e-2
    abort_early: bool = True
    targeted: bool = False
    target: int | None = None

    def validate(self) -> None:
        _check_positive("search steps", self.search_steps)
        _check_positive("steps", self.steps)
        _check_range("learning rate", self.lr, 1e-8, 10.0)
        _check_range("initial const", self.initial_const, 1e-10, 1e10)
        _check_range("confidence", self.confidence, 0.0, 1e4)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        labels, sign = _goal(model, x, y, self.targeted, self.target)
        targeted = sign < 0
        n = len(x)
        const = torch.full((n,), self.initial_const, device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), 1e10, device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best = x.clone()
        for _ in range(self.search_steps):
            found, l2, adv = self._optimize(model, x, labels, const, targeted)
            improve = found & (l2 < best_l2)
            best_l2[improve], best[improve] = l2[improve], adv[improve]
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(upper < 1e9, (lower + upper) / 2,
                                torch.where(found, const, const * 10))
        return best

    def _optimize(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                  const: torch.Tensor, targeted: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        w = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
        opt = torch.optim.Adam([w], lr=self.lr)
        n = len(x)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        best_l2 = torch.full((n,), math.inf, device=x.device)
        best = x.clone()
        previous = math.inf
        for it in range(self.steps):
            with torch.enable_grad():
                adv = (torch.tanh(w) + 1) / 2
                logits = model(adv).float()
                l2 = (adv - x).flatten(1).pow(2).sum(1)
                margin = self._margin(logits, labels, targeted)
                loss = (l2 + const * margin.clamp_min(-self.confidence)).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            with torch.no_grad():
                success = margin <= -self.confidence if self.confidence > 0 else margin < 0
                dist = l2.detach().sqrt()
                improve = success & (dist < best_l2)
                best_l2[improve], best[improve] = dist[improve], adv.detach()[improve]
                found |= success
            if self.abort_early and it % max(self.steps // 10, 1) == 0:
                if loss.item() > previous * 0.9999:
                    break
                previous = loss.item()
        return found, best_l2, best

    @staticmethod
    def _margin(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
        own = logits.gather(1, labels[:, None]).squeeze(1)
        others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf)
        best_other = others.max(1).values
        return best_other - own if targeted else own - best_other


ATTACKS: dict[str, type[Attack]] = {
    "noise": Noise, "fgsm": FGSM, "pgd": PGD, "semantic": Semantic, "cw": CarliniWagner,
}


def build_attack(name: str, **params) -> Attack:
    """Build a registered attack; unknown names or parameters get an error listing valid ones."""
    return build_registered("attack", ATTACKS, name, params)


def with_budget(attack: Attack, value: float) -> Attack:
    """A copy of ``attack`` with its budget (eps or sigma) set to ``value``."""
    if attack.budget is None:
        return attack
    return build_attack(attack.name, **dict(attack.params(), **{attack.budget: value}))
