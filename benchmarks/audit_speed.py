"""The audit's cascade against a reference cascade built from torchattacks' parts (a dev-only
dependency: `pip install --no-deps torchattacks==3.5.1`), with the same stages, iterations,
queries and images, on the same model, in one run: APGD-CE (100 iterations) -> APGD-T (9
targets) -> FAB-T (9 targets) -> Square (5,000 queries) for `standard`, the first two for
`fast`; each stage only on the points still robust. torchattacks' own AutoAttack wrapper runs
10 iterations, so the reference is built from its parts with explicit settings.

    python benchmarks/audit_speed.py [--n 200] [--eps 0.1] [--norm linf] [--versions standard,fast]
"""
from __future__ import annotations

import argparse
import time

from small_model import small_mnist_model


def reference_stages(model, version: str, norm: str, eps: float, steps: int, queries: int):
    """torchattacks' attacks in AutoAttack's order and settings."""
    import torchattacks as ta

    name = {"linf": "Linf", "l2": "L2"}[norm]
    stages = [("apgd-ce", ta.APGD(model, norm=name, eps=eps, steps=steps, n_restarts=1,
                                  loss="ce", seed=0)),
              ("apgd-t", ta.APGDT(model, norm=name, eps=eps, steps=steps, n_restarts=1,
                                  n_classes=10, seed=0))]
    if version == "standard":
        stages += [("fab-t", ta.FAB(model, norm=name, eps=eps, steps=steps, n_restarts=1,
                                    multi_targeted=True, n_classes=10, seed=0)),
                   ("square", ta.Square(model, norm=name, eps=eps, n_queries=queries,
                                        n_restarts=1, p_init=0.8, seed=0))]
    return stages


def reference_cascade(model, x, y, stages, batch_size: int) -> tuple[list, float]:
    """Each stage on the points still robust, batch by batch; per-stage robust accuracy."""
    import torch

    with torch.no_grad():
        robust = torch.cat([model(x[s:s + batch_size]).argmax(1) for s in
                            range(0, len(x), batch_size)]) == y
    rows = []
    for name, attack in stages:
        began = time.perf_counter()
        idx = robust.nonzero().squeeze(1)
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            adv = attack(x[part], y[part])
            with torch.no_grad():
                robust[part[model(adv).argmax(1) != y[part]]] = False
        rows.append((name, float(robust.float().mean()), time.perf_counter() - began))
    return rows, float(robust.float().mean())


def main() -> None:
    """Print per-stage robust accuracy and seconds of ours and the reference's cascades."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--norm", default="linf", choices=("linf", "l2"))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--versions", default="standard,fast")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--precisions", default="bf16,fp32",
                        help="our search's arithmetic (verdicts are float32 either way)")
    args = parser.parse_args()
    _, _, model = small_mnist_model("robustlab-audit-")
    from core import audit
    from core import data
    from core.threat import ThreatModel

    split = data.load("mnist", "test").subset(args.n, seed=21)
    x, y = split.floats(), split.labels
    threat = ThreatModel(args.norm, args.eps)
    print(f"seed-resnet, 1 epoch on 6,000 MNIST images; {args.n} test images; {threat.label()};"
          f" {args.steps} iterations, {args.queries} Square queries, batches of {args.batch_size}")
    for version in args.versions.split(","):
        plan = audit.stages(version, threat, args.steps, args.queries)
        runs = {}
        for precision in args.precisions.split(","):
            began = time.perf_counter()
            ours = audit.cascade(model, split, plan, args.batch_size,
                                 low_precision=precision == "bf16")
            mid = time.perf_counter()
            checks = audit.indicators(model, split, threat, ours, plan, args.steps)
            runs[precision] = (ours, checks, mid - began, time.perf_counter() - mid)
        ref_rows, ref_acc = reference_cascade(
            model, x, y, reference_stages(model, version, args.norm, args.eps, args.steps,
                                          args.queries), args.batch_size)
        ref_s = sum(r[2] for r in ref_rows)
        for precision, (ours, checks, cascade_s, checks_s) in runs.items():
            print(f"\n{version}, our search in {precision}: cascade {cascade_s:.0f} s (ours) vs "
                  f"{ref_s:.0f} s (torchattacks): {ref_s / cascade_s:.2f}x faster; indicators "
                  f"{checks_s:.0f} s more, whole audit {ref_s / (cascade_s + checks_s):.2f}x; "
                  f"robust accuracy {ours['robust_acc']:.2%} vs {ref_acc:.2%} "
                  f"({(ours['robust_acc'] - ref_acc) * 100:+.2f} pp); silent {ours['silent']}; "
                  f"verdict {audit.verdict(checks)}")
            for c in checks:
                if c["status"] != "pass":
                    print(f"  [{c['status']}] {c['name']}: {c['detail']}")
            print("| stage | ours: robust acc | seconds | torchattacks: robust acc | seconds |")
            print("|---|---|---|---|---|")
            for mine, ref in zip(ours["stages"], ref_rows):
                print(f"| {mine['attack']} | {mine['robust_acc']:.2%} | {mine['seconds']:.1f} | "
                      f"{ref[1]:.2%} | {ref[2]:.1f} |", flush=True)

if __name__ == "__main__":
    main()
