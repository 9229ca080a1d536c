"""Adversarial attacks. Each is a dataclass of hyperparameters called as
``attack(model, x, y) -> x_adv`` with ``x`` in [0, 1] (B, C, H, W).

Contract: gradients are taken with respect to the input only (parameters are frozen for the
call, so their ``.grad`` is untouched and no weight gradients are computed); the model runs in
eval mode and its previous mode is restored; the result is detached, of the input's shape,
dtype and device, inside [0, 1] and, for norm-bounded attacks, inside the epsilon-ball.
Random attacks take a ``seed``; ``seed=None`` draws from torch's global generator (training).
Hyperparameters, their defaults and checks live in :mod:`core.hyperparams`; each class here adds
only the computation.
"""
from __future__ import annotations

import math
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import hyperparams as hp
from .paths import InputError

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


class _Folded:
    """A model's graph traced once with every Conv2d -> BatchNorm2d pair replaced by one
    convolution whose weights are refolded only when the original weights or running statistics
    change (exact in eval mode). The other layers are the model's own modules, shared."""

    def __init__(self, model: nn.Module) -> None:
        from torch.fx import symbolic_trace

        module = symbolic_trace(model)
        found = dict(module.named_modules())
        self.pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d, nn.Conv2d]] = []
        for node in list(module.graph.nodes):
            conv_node = node.args[0] if node.op == "call_module" and node.args else None
            bn = found.get(node.target) if node.op == "call_module" else None
            if not (isinstance(bn, nn.BatchNorm2d) and bn.running_mean is not None
                    and getattr(conv_node, "op", None) == "call_module"
                    and isinstance(found.get(conv_node.target), nn.Conv2d)
                    and len(conv_node.users) == 1):
                continue
            conv = found[conv_node.target]
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                              conv.padding, conv.dilation, conv.groups, bias=True,
                              padding_mode=conv.padding_mode).to(conv.weight.device)
            fused.requires_grad_(False)
            name = f"folded_{len(self.pairs)}"
            module.add_submodule(name, fused.to(memory_format=torch.channels_last))
            conv_node.target = name
            node.replace_all_uses_with(conv_node)
            module.graph.erase_node(node)
            self.pairs.append((conv, bn, fused))
        module.graph.lint()
        module.recompile()
        self.module = module
        self.stamp: tuple = ()

    def refresh(self) -> nn.Module:
        """Refold the pairs whose weights or statistics changed since the last call."""
        from torch.nn.utils.fusion import fuse_conv_bn_weights

        stamp = tuple((t._version, t.data_ptr()) for conv, bn, _ in self.pairs
                      for t in (conv.weight, bn.weight, bn.bias, bn.running_mean,
                                bn.running_var) if t is not None)
        if stamp != self.stamp:
            with torch.no_grad():
                for conv, bn, fused in self.pairs:
                    w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                bn.running_var, bn.eps, bn.weight, bn.bias)
                    fused.weight.copy_(w)
                    fused.bias.copy_(b)
            self.stamp = stamp
        return self.module


_FOLDED: "weakref.WeakKeyDictionary[nn.Module, _Folded | None]" = weakref.WeakKeyDictionary()


def folded(model: nn.Module) -> nn.Module:
    """The model with BatchNorm folded into its convolutions, for attacking in eval mode.
    Small convolutions are bound by memory traffic, so the BatchNorm passes are a large share
    of every attack step. The graph is traced once per model; later calls only refold the
    weights when an optimizer step or a BatchNorm update changed them. Models torch.fx cannot
    trace are used as they are."""
    if model not in _FOLDED:
        from torch.fx.proxy import TraceError

        entry = None
        if any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
            try:
                entry = _Folded(model)
            except (TraceError, TypeError, RuntimeError, NotImplementedError, AttributeError):
                entry = None  # dynamic control flow: attack the model as it is
        _FOLDED[model] = entry
    entry = _FOLDED[model]
    return model if entry is None else entry.refresh()


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


class Attack:
    """Base of attack computations: input checks, eval mode with frozen parameters, the folded
    model, and the output contract. Subclasses inherit their hyperparameters from
    :mod:`core.hyperparams` and implement ``perturb``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_input(x, y)
        if x.shape[0] == 0:
            return x.detach().clone()
        with attack_mode(model):
            fast = folded(model)
            out = self.perturb(fast, x.detach().contiguous(memory_format=torch.channels_last),
                               y.detach())
        layout = (torch.channels_last if x.dim() == 4 and x.is_contiguous(
            memory_format=torch.channels_last) and not x.is_contiguous() else
            torch.contiguous_format)  # the input's layout: a training forward needs no reorder
        return out.detach().clamp(0.0, 1.0).to(dtype=x.dtype).contiguous(memory_format=layout)

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The attack itself; called with the model in eval mode and parameters frozen."""
        raise NotImplementedError


@dataclass
class Noise(hp.NoiseSettings, Attack):
    """Random noise baseline (not an adversarial attack): additive Gaussian noise of standard
    deviation ``sigma`` (or uniform in [-sigma, sigma]), clipped to [0, 1]. Threat model:
    random corruption. Used as the noise row of the seed study's table."""

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        gen = _generator(self.seed)
        if self.distribution == "gaussian":
            noise = _rand(x.shape, x, gen, "normal") * self.sigma
        else:
            noise = (_rand(x.shape, x, gen) * 2 - 1) * self.sigma
        return x + noise


@dataclass
class FGSM(hp.FGSMSettings, Attack):
    """Fast Gradient Sign Method, Goodfellow, Shlens & Szegedy 2015, "Explaining and Harnessing
    Adversarial Examples". Threat model: white-box, L-infinity ball of radius ``eps``."""

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
class PGD(hp.PGDSettings, Attack):
    """Projected Gradient Descent, Madry et al. 2018, "Towards Deep Learning Models Resistant to
    Adversarial Attacks". Threat model: white-box, L-infinity or L2 ball of radius ``eps``.
    Random start, ``steps`` steps of size ``step_size`` (default 2.5 * eps / steps), and
    ``restarts`` keeping the worst case per example; optionally targeted."""

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
class Semantic(hp.SemanticSettings, Attack):
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
class CarliniWagner(hp.CWSettings, Attack):
    """Carlini & Wagner 2017, "Towards Evaluating the Robustness of Neural Networks", L2 attack.
    Threat model: white-box, minimal L2 perturbation. Optimizes w in tanh space with Adam on
    ||x' - x||^2 + c * max(Z_y - max_{i != y} Z_i, -kappa), binary-searching c per example
    (``search_steps`` rounds from ``initial_const``), aborting early when the loss stalls, and
    keeping the smallest successful perturbation; unsuccessful examples are returned unchanged."""

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


ATTACKS: dict[str, type] = {
    "noise": Noise, "fgsm": FGSM, "pgd": PGD, "semantic": Semantic, "cw": CarliniWagner,
}


def build_attack(name: str, strong: bool = False, **params) -> Attack:
    """Build a registered attack (its strong setting with ``strong``); unknown names or
    parameters get an error listing the valid ones."""
    settings = hp.attack_settings(name, params, strong)
    return ATTACKS[name](**settings.params())


def with_budget(attack: Attack, value: float) -> Attack:
    """A copy of ``attack`` with its budget (eps or sigma) set to ``value``."""
    if attack.budget is None:
        return attack
    return build_attack(attack.name, **hp.with_budget(attack, value))
