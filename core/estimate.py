"""How long a job will take, stated before it starts: one forward-backward pass of the model on
a real batch is timed on this machine, and the job's work is counted in such passes."""
from __future__ import annotations

import copy
import time
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from core.attacks import AttackSettings
from core.progress import fmt_duration

if TYPE_CHECKING:
    from core.training.settings import DefenseSettings

# An attack step takes gradients for the input only (frozen weights, BatchNorm folded): about
# this share of a training pass, measured on seed-resnet on 2 CPU cores.
ATTACK_PASS = 0.7
FORWARD_PASS = 0.35


def _timed(one_pass, x: torch.Tensor, repeats: int) -> float:
    """Seconds per image of ``one_pass``: one untimed warm-up, then the median of
    ``repeats - 1`` timed passes (the device synchronised after each)."""
    times = []
    for k in range(max(repeats, 2)):
        began = time.perf_counter()
        one_pass()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if k:
            times.append(time.perf_counter() - began)
    return sorted(times)[len(times) // 2] / max(len(x), 1)


def seconds_per_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     repeats: int = 2) -> float:
    """Seconds per image of one training forward-backward pass (timed on a copy of the model,
    under whatever autocast the caller set; random state untouched)."""
    probe = copy.deepcopy(model).train()
    with torch.random.fork_rng(devices=[]):
        return _timed(lambda: F.cross_entropy(probe(x), y).backward(), x, repeats)


def seconds_per_attack_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            repeats: int = 2) -> float:
    """Seconds per image of one attack gradient pass (eval mode, BatchNorm folded, gradient
    with respect to the input only)."""
    from core.attacks.contract import attack_mode, input_grad
    from core.attacks.speed import folded

    with attack_mode(model):
        fast = folded(model)
        return _timed(lambda: input_grad(fast, x, y, F.cross_entropy), x, repeats)


def training_seconds(defense: DefenseSettings, epochs: int, n_train: int, n_test: int,
                     n_held_out: int, guard_steps: int, per_pass: float) -> float:
    """Estimated seconds of a training run."""
    per_image = 1 + ATTACK_PASS * defense.attack_steps()
    per_epoch = (n_train * per_image + n_test * FORWARD_PASS
                 + n_held_out * ATTACK_PASS * guard_steps)
    return epochs * per_epoch * per_pass


def attack_seconds(settings: AttackSettings, n: int, per_pass: float) -> float:
    """Estimated seconds of one attack on ``n`` images."""
    passes = ATTACK_PASS * settings.gradients_per_image() + 2 * FORWARD_PASS
    return n * passes * per_pass


def line(seconds: float, what: str) -> str:
    """'estimated time: about 3 min 10 s (…)'."""
    return f"estimated time: about {fmt_duration(seconds)} ({what}, timed on this machine)"
