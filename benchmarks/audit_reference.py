"""APGD-CE and APGD-T against the reference implementation in torchattacks (a dev-only
dependency: `pip install --no-deps torchattacks==3.5.1`; its own pin of requests~=2.25 would
break Streamlit), with the same iterations, restarts and images, on seed-resnet trained here for
one epoch on 6,000 real MNIST images.

    python benchmarks/audit_reference.py [--n 1000] [--eps 0.1] [--steps 100] [--seeds 0,1]
"""
from __future__ import annotations

import argparse
import time

from small_model import small_mnist_model


def main() -> None:
    """Print robust accuracy of ours and the reference's APGD-CE and APGD-T, and seconds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    _, _, model = small_mnist_model("robustlab-ref-")
    import torch
    import torchattacks

    from core import data
    from core.attacks.apgd import APGD, APGDT
    from core.evaluation import run_attack

    split = data.load("mnist", "test").subset(args.n, seed=21)
    x, y = split.floats(), split.labels
    print(f"{args.n} MNIST test images, L-inf eps {args.eps}, {args.steps} iterations, 1 restart")
    print("| attack | seed | RobustLab | torchattacks | difference | seconds (ours / theirs) |")
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        pairs = (("APGD-CE", APGD(eps=args.eps, steps=args.steps, seed=seed),
                  torchattacks.APGD(model, norm="Linf", eps=args.eps, steps=args.steps,
                                    n_restarts=1, loss="ce", seed=seed)),
                 ("APGD-T", APGDT(eps=args.eps, steps=args.steps, targets=9, seed=seed),
                  torchattacks.APGDT(model, norm="Linf", eps=args.eps, steps=args.steps,
                                     n_restarts=1, n_classes=10, seed=seed)))
        for name, ours, theirs in pairs:
            began = time.perf_counter()
            acc = run_attack(model, split, ours).summary()["adv_acc"]
            mid = time.perf_counter()
            adv = theirs(x, y)
            with torch.no_grad():
                ref = float((model(adv).argmax(1) == y).float().mean())
            end = time.perf_counter()
            print(f"| {name} | {seed} | {acc:.2%} | {ref:.2%} | {(acc - ref) * 100:+.2f} pp | "
                  f"{mid - began:.0f} / {end - mid:.0f} |", flush=True)


if __name__ == "__main__":
    main()
