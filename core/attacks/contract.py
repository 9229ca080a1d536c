"""The attack contract, shared by every attack. An attack is a dataclass of hyperparameters
(its settings class, checked on construction without torch) called as
``attack(model, x, y) -> x_adv`` with ``x`` in [0, 1] (B, C, H, W): gradients with respect to
the input only (parameters frozen for the call, so their ``.grad`` is untouched), eval mode
with the previous mode restored, the model with BatchNorm folded, and a result that is
detached, of the input's shape, dtype and device, inside [0, 1] and, for norm-bounded attacks,
inside the epsilon-ball. Random attacks take a ``seed``; ``seed=None`` draws from torch's
global generator (training). Here too: projections onto the balls, seeded randomness, and the
checks on inputs and outputs."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Iterator

from core.cancellation import STATE as STOP
from core.checks import check_range
from core.lazy import F, torch
from core.paths import InputError
from core.threat import ThreatModel

if TYPE_CHECKING:
    import torch.nn as nn

NORMS = ("linf", "l2")
SUCCESS = 1e6  # added to a restart's score when it fooled the model: success beats any loss


@dataclass
class AttackSettings:
    """Base of attack hyperparameters. ``kind`` is ``adversarial`` or ``corruption`` (random
    noise, never part of a worst case); ``budget`` names the field a sweep varies; ``strong``
    is the stronger setting that ``--strong`` selects."""

    name: ClassVar[str] = "attack"
    kind: ClassVar[str] = "adversarial"
    budget: ClassVar[str | None] = None
    strong: ClassVar[dict] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise InputError for out-of-range hyperparameters."""

    def params(self) -> dict:
        """Hyperparameters as a JSON-able dict."""
        return asdict(self)

    def threat(self) -> ThreatModel | None:
        """The threat model this attack works in (None for a corruption)."""
        return ThreatModel("none")

    def gradients_per_image(self) -> int:
        """Forward-backward passes per image (for cost estimates before a run starts)."""
        return 1

    def iterations(self) -> int:
        """The iterations one call reports through :func:`tick` (its progress's whole)."""
        return self.gradients_per_image()


class _Watch:
    """Counts an attack call's iterations for :func:`watching`."""

    def __init__(self, attack: "AttackSettings", on_fraction: Callable[[float], None]) -> None:
        self.total = max(attack.iterations(), 1)
        self.on_fraction, self.done, self.told = on_fraction, 0, 0.0

    def tick(self) -> None:
        self.done += 1
        fraction = min(self.done / self.total, 1.0)
        if fraction - self.told >= 0.01:  # a hundred reports per call at most
            self.told = fraction
            self.on_fraction(fraction)


_WATCH: list[_Watch] = []  # the innermost watched call last (jobs run attacks in one thread)


@contextmanager
def watching(attack: "AttackSettings", on_fraction: Callable[[float], None]) -> Iterator[None]:
    """Within the block, ``on_fraction(f)`` hears how far the attack's current call is (f in
    [0, 1], by its iterations): progress that moves inside one long batch."""
    _WATCH.append(_Watch(attack, on_fraction))
    try:
        yield
    finally:
        _WATCH.pop()


def tick() -> None:
    """An attack's loop finished an iteration: a stop lost on its way is raised here, and a
    watched call reports its progress."""
    STOP.raise_pending()
    if _WATCH:
        _WATCH[-1].tick()


@dataclass
class BallSettings(AttackSettings):
    """Base of attacks bounded by an L-inf or L2 ball of radius ``eps`` (pixel units)."""

    budget: ClassVar[str | None] = "eps"
    eps: float = 0.1
    norm: str = "linf"

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid norms: linf, l2")
        check_range("eps", self.eps, 0.0, 1.0 if self.norm == "linf" else 1e4)

    def threat(self) -> ThreatModel | None:
        return ThreatModel(self.norm, self.eps)


@dataclass
class MinimumNormSettings(AttackSettings):
    """Base of minimum-norm attacks: no budget; per example, the smallest perturbation in
    ``norm`` that fools the model (the robustness curve's attacks)."""

    norm: str = "linf"

    def validate(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid norms: linf, l2")


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


def ce_sum(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def goal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, targeted: bool,
          target: int | None) -> tuple[torch.Tensor, float]:
    """Labels the loss is computed against and the ascent sign (+1 untargeted, -1 targeted)."""
    if not targeted:
        return y, 1.0
    if target is not None:
        return torch.full_like(y, int(target)), -1.0
    with torch.no_grad():
        classes = model(x[:1]).shape[1]
    return (y + 1) % classes, -1.0  # "next class" target when none is given


def succeeded(logits: torch.Tensor, labels: torch.Tensor, sign: float) -> torch.Tensor:
    """Misclassified (untargeted, ``sign`` 1) or classified as the target (``sign`` -1)."""
    return logits.argmax(1) != labels if sign > 0 else logits.argmax(1) == labels


def rand(shape: torch.Size, like: torch.Tensor, gen: torch.Generator | None,
          kind: str = "uniform") -> torch.Tensor:
    draw = torch.rand if kind == "uniform" else torch.randn
    return draw(shape, generator=gen, device="cpu", dtype=torch.float32).to(like)


def generator(seed: int | None) -> torch.Generator | None:
    return None if seed is None else torch.Generator().manual_seed(int(seed))


def flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{i != y} z_i per example: negative once the point is misclassified. Unlike
    cross-entropy it never saturates, so its gradient survives confident softmaxes."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(),
                                -float("inf"))
    return own - others.max(1).values


def outputs_are_probabilities(out: torch.Tensor) -> bool:
    """Whether a model's outputs look like softmax probabilities rather than logits."""
    return bool(out.min() >= 0 and out.max() <= 1 and torch.allclose(
        out.sum(1), torch.ones(len(out), device=out.device), atol=1e-3))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the L-inf or L2 ball of radius ``eps``."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    factor = (eps / flat_norm(delta)).clamp(max=1.0)
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
    model, and the output contract. Each attack inherits its settings class (defined beside it)
    and this, and implements ``perturb``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _check_input(x, y)
        if x.shape[0] == 0:
            return x.detach().clone()
        from core.attacks.speed import folded  # torch loads with the first attack, not before

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


def perturbation_size(delta: torch.Tensor, norm: str) -> torch.Tensor:
    """Each example's L-inf or L2 norm (rows of the first dimension)."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


class MinimumNorm(Attack):
    """Base of minimum-norm attack computations: the attack returns each example's adversarial
    point of smallest norm found (the input itself where none was), and :meth:`minimal` adds
    that norm, infinity where the point does not fool the model (0 for an image misclassified
    already)."""

    def size(self, delta: torch.Tensor) -> torch.Tensor:
        """Each example's norm of ``delta``, in this attack's norm."""
        return perturbation_size(delta, self.norm)

    def minimal(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                verdict: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The points and their norms, each checked: a norm is finite only where the verdict
        model (``verdict``, else the one searched: the float32 model) misclassifies the point
        returned."""
        x_adv = self(model, x, y)
        judge = verdict if verdict is not None else model
        with torch.no_grad(), attack_mode(judge):
            fooled = judge(x_adv).float().argmax(1) != y
        sizes = perturbation_size((x_adv - x).float(), self.norm)
        return x_adv, torch.where(fooled, sizes, torch.full_like(sizes, float("inf")))
