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
# Fixed costs outside the timed passes, measured on 2 CPU cores (benchmarks/estimates.py):
# the optimizer's first step (torch imports its compiler support) and a job's report, whose
# figures load matplotlib.
SETUP_S = 1.5
REPORT_S = 2.5


PROBE_S = 0.3  # timed passes continue until they took this long (a fresh process is noisy)


def _timed(one_pass, x: torch.Tensor, repeats: int) -> float:
    """Seconds per image of ``one_pass``: one untimed warm-up, then the median of at least
    ``repeats - 1`` timed passes, more (up to 20) until they took :data:`PROBE_S` (the device
    synchronised after each)."""
    times: list[float] = []
    k = 0
    while k < max(repeats, 2) or (sum(times) < PROBE_S and k <= 20):
        began = time.perf_counter()
        one_pass()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        if k:
            times.append(time.perf_counter() - began)
        k += 1
    return sorted(times)[len(times) // 2] / max(len(x), 1)


# Timings already taken in this process: a process that runs many jobs (a study, reproduce,
# the tests) times each kind of pass of each architecture once, not once per job.
_TIMED: dict[tuple, float] = {}


def _remembered(kind: str, model: nn.Module, x: torch.Tensor, repeats: int, measure) -> float:
    """``measure()``, or what it gave before in this process for the same kind of pass, the
    same architecture (class and parameter count), batch shape, device, autocast and threads."""
    key = (kind, type(model).__name__, sum(p.numel() for p in model.parameters()),
           tuple(x.shape), str(x.device), x.dtype, torch.is_autocast_enabled(x.device.type),
           torch.get_num_threads(), repeats)
    if key not in _TIMED:
        _TIMED[key] = measure()
    return _TIMED[key]


def seconds_per_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                     repeats: int = 2) -> float:
    """Seconds per image of one training forward-backward pass (timed on a copy of the model,
    under whatever autocast the caller set; random state untouched; once per process for an
    architecture and batch shape)."""
    def measure() -> float:
        probe = copy.deepcopy(model).train()
        with torch.random.fork_rng(devices=[]):
            return _timed(lambda: F.cross_entropy(probe(x), y).backward(), x, repeats)

    return _remembered("train", model, x, repeats, measure)


def seconds_per_attack_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                            repeats: int = 4) -> float:
    """Seconds per image of one attack gradient pass (eval mode, BatchNorm folded, gradient
    with respect to the input only; once per process for an architecture and batch shape)."""
    from core.attacks.contract import attack_mode, input_grad
    from core.attacks.speed import folded

    def measure() -> float:
        with attack_mode(model):
            fast = folded(model)
            return _timed(lambda: input_grad(fast, x, y, F.cross_entropy), x, repeats)

    return _remembered("attack", model, x, repeats, measure)


def training_seconds(defense: DefenseSettings, epochs: int, n_train: int, n_test: int,
                     n_held_out: int, guard_steps: int, per_pass: float) -> float:
    """Estimated seconds of a training run."""
    # crafting in train mode (the single-step defenses) is a full training pass per step
    craft = 1.0 if defense.crafts_in_train_mode() else ATTACK_PASS
    per_image = defense.training_passes() + craft * defense.attack_steps()
    per_epoch = (n_train * per_image + n_test * FORWARD_PASS
                 + n_held_out * ATTACK_PASS * guard_steps)
    return SETUP_S + epochs * per_epoch * per_pass


def attack_run_seconds(settings: AttackSettings, n: int, per_attack_pass: float) -> float:
    """Estimated seconds of one attack on ``n`` images, ``per_attack_pass`` being one timed
    attack gradient pass (:func:`seconds_per_attack_pass`); a clean and an adversarial
    forward per image, about half a pass each."""
    return n * (settings.gradients_per_image() + 1) * per_attack_pass


def evaluation_seconds(n: int, per_pass: float) -> float:
    """Estimated seconds of a clean evaluation of ``n`` images (forward passes only) and its
    report."""
    return n * FORWARD_PASS * per_pass + REPORT_S


# A point broken during an APGD run leaves it at once: on average after this share of its
# iterations (measured on MNIST and CIFAR-10 models, undefended and adversarially trained).
BROKEN_SHARE = 0.15
# The full APGD-CE and the later stages break more than the 10-step probe: of the probe's
# survivors about this share survive into the later stages (benchmarks/estimates.py).
SURVIVING_SHARE = 0.7


def audit_seconds(plan: list, n: int, correct: float, broken: float, per_attack_pass: float,
                  steps: int, per_float32_pass: float | None = None,
                  per_call: float = 0.0, done: float = 0.0) -> float:
    """Estimated seconds of an audit of ``n`` images, ``per_attack_pass`` being one timed
    attack gradient pass per image of its search (:func:`seconds_per_attack_pass`),
    ``per_float32_pass`` one of the float32 model (the indicators') and ``per_call`` one pass
    of a single image (the floor of a pass over a few points): the first stage sees the
    ``correct`` share, of which a short probe broke ``broken`` (those leave early); every
    later stage and the indicators' longer APGD see only the survivors; the indicators'
    probes (128 images) come on top. ``done``: the cascade's stages already behind a resume
    (1.5: the first stage and half of the second), whose time is not counted again."""
    entering = n * correct
    survivors = entering * (1 - broken) * SURVIVING_SHARE

    def stage_passes(points: float, g: float, per_pass: float) -> float:
        # a pass over a handful of points costs about what a pass over one does
        return g * max(points * per_pass, per_call) if points >= 0.5 else 0.0

    f32 = per_float32_pass or per_attack_pass
    seconds = 0.0
    for k, stage in enumerate(plan):
        g = stage.attack.gradients_per_image()
        cost = stage_passes(survivors, g, per_attack_pass)
        if k == 0:
            cost += (entering - survivors) * BROKEN_SHARE * g * per_attack_pass
        seconds += cost * min(max(k + 1 - done, 0.0), 1.0)  # the share of it still to do
    seconds += stage_passes(survivors, 2 * steps, f32)
    seconds += 128 * (20 + 3 * max(10, steps // 5) + 2) * f32
    return seconds + n * per_attack_pass + REPORT_S  # n: the clean and verdict forwards


def line(seconds: float, what: str) -> str:
    """'estimated time: about 3 min 10 s (…)'."""
    return f"estimated time: about {fmt_duration(seconds)} ({what}, timed on this machine)"
