"""Attack throughput (images/s) of RobustLab's attacks against textbook loops, side by side:
FGSM, PGD-10, PGD-40 and CW (fixed iterations, no early abort) on the seed MNIST and CIFAR-10
models. The textbook loops use the default memory format, parameters that require grad, and
``loss.backward()``, as most tutorials and notebooks do.

    python benchmarks/attack_throughput.py [--batch 250]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import machine

from core.attacks import FGSM, PGD, CarliniWagner
from core.models import build_model


def textbook_pgd(model, x, y, eps, steps, alpha, random_start=True):
    """The loop found in most notebooks."""
    model.eval()
    adv = x.clone()
    if random_start:
        adv = (adv + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), y)
        model.zero_grad()
        loss.backward()
        adv = adv.detach() + alpha * adv.grad.sign()
        adv = torch.min(torch.max(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


def textbook_cw(model, x, y, steps, c=1.0, lr=0.01):
    """CW-L2 inner loop (one constant) written the textbook way."""
    model.eval()
    w = torch.atanh((x * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    onehot = F.one_hot(y, 10).bool()
    for _ in range(steps):
        adv = (torch.tanh(w) + 1) / 2
        logits = model(adv)
        real = logits[onehot]
        other = logits.masked_fill(onehot, -1e9).max(1).values
        loss = ((adv - x) ** 2).flatten(1).sum(1).sum() + c * (real - other).clamp_min(0).sum()
        opt.zero_grad()
        model.zero_grad()
        loss.backward()
        opt.step()
    return ((torch.tanh(w) + 1) / 2).detach()


def rate(fn, n, reps=2):
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    return n * reps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--cw-steps", type=int, default=20)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"{'model':8s} {'attack':7s} {'textbook img/s':>15s} {'robustlab img/s':>16s} {'ratio':>6s}")
    for name, shape in (("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))):
        torch.manual_seed(0)
        plain = build_model("seed-resnet", shape, 10)
        ours_model = build_model("seed-resnet", shape, 10)
        ours_model.load_state_dict(plain.state_dict())
        ours_model = ours_model.to(memory_format=torch.channels_last).eval()
        x = torch.rand(args.batch, *shape)
        y = torch.randint(0, 10, (args.batch,))
        cases = {
            "fgsm": (lambda: textbook_pgd(plain, x, y, 0.1, 1, 0.1, False),
                     lambda: FGSM(eps=0.1)(ours_model, x, y)),
            "pgd-10": (lambda: textbook_pgd(plain, x, y, 0.1, 10, 0.025),
                       lambda: PGD(eps=0.1, steps=10)(ours_model, x, y)),
            "pgd-40": (lambda: textbook_pgd(plain, x, y, 0.1, 40, 0.00625),
                       lambda: PGD(eps=0.1, steps=40)(ours_model, x, y)),
            "cw": (lambda: textbook_cw(plain, x, y, args.cw_steps),
                   lambda: CarliniWagner(steps=args.cw_steps, search_steps=1,
                                         abort_early=False)(ours_model, x, y)),
        }
        for attack, (base, ours) in cases.items():
            reps = 1 if attack in ("pgd-40", "cw") else 2
            b, o = rate(base, args.batch, reps), rate(ours, args.batch, reps)
            print(f"{name:8s} {attack:7s} {b:15.0f} {o:16.0f} {o / b:5.2f}x")


if __name__ == "__main__":
    main()
