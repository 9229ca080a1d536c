"""Import plus a fast audit of a WideResNet-28-10 checkpoint in RobustBench's format, beside
torchattacks' APGD-CE then APGD-T on the same wrapped model and images, in one run.

The checkpoint is what a RobustBench CIFAR-10 WRN-28-10 file holds (TRADES' parameter names,
a ``module.`` prefix, nested under ``state_dict``, normalization outside the model), with
randomly initialized weights: no trained file can be downloaded here, so the clean accuracy is
chance and only the images it happens to classify correctly are attacked. The timings are of
the import and of attacking those images, with both tools on the same ones.

    python benchmarks/import_audit.py [--n 100] [--eps 0.0314] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

from common import machine  # noqa: E402 (the repository on the path, the shared data found)


def main() -> None:
    """Print the import's time, each fast audit's (bf16, fp32) and torchattacks'."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--eps", type=float, default=8 / 255)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("ROBUSTLAB_ARTIFACTS", tempfile.mkdtemp(prefix="robustlab-import-"))
    import torch
    import torchattacks

    from core import data
    from core.jobs.runner import create, execute
    from core.jobs.specs import AuditSpec, ImportSpec
    from core.jobs.store import RunStore
    from core.prediction import load_model, run_model_path
    from core.zoo import build_zoo

    torch.manual_seed(0)
    folder = tempfile.mkdtemp(prefix="wrn-")
    path = os.path.join(folder, "Carmon2019Unlabeled-like.pt")
    net = build_zoo("wrn-28-10", 10, 3)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    print(f"{machine()}, device {args.device}; {os.path.getsize(path) / 2**20:.0f} MB "
          f"checkpoint, {sum(p.numel() for p in net.parameters()) / 1e6:.1f}M parameters")
    store = RunStore()
    began = time.perf_counter()
    spec = ImportSpec(file=path, dataset="cifar10", arch="wrn-28-10", n_check=args.n,
                      mean=[0.4914, 0.4822, 0.4465], std=[0.2471, 0.2435, 0.2616],
                      device=args.device)
    run = create(store, spec)
    summary = execute(store, run, echo=False)
    print(f"import: {time.perf_counter() - began:.1f} s (read, build, checks, clean accuracy "
          f"{summary['clean_acc']:.1%} on {summary['n']} test images)")
    print(f"| what | robust accuracy on {args.n} CIFAR-10 test images, L-inf {args.eps:.4f} | "
          "seconds |")
    print("|---|---|---|")
    for precision in ("bf16", "fp32"):
        audit = AuditSpec(model_run=run, norm="linf", eps=args.eps, version="fast", n=args.n,
                          precision=precision, device=args.device)
        began = time.perf_counter()
        result = execute(store, create(store, audit), echo=False)
        print(f"| RobustLab fast audit ({precision} search, float32 verdicts) | "
              f"{result['robust_acc']:.2%} | {time.perf_counter() - began:.1f} |", flush=True)
    model, _ = load_model(run_model_path(run), args.device)
    split = data.load("cifar10", "test").subset(args.n, seed=0)
    x, y = split.floats().to(args.device), split.labels.to(args.device)
    began = time.perf_counter()
    with torch.no_grad():
        robust = model(x).argmax(1) == y
    for attack in (torchattacks.APGD(model, eps=args.eps, steps=100, loss="ce", seed=0),
                   torchattacks.APGDT(model, eps=args.eps, steps=100, n_classes=10, seed=0)):
        keep = robust.nonzero().flatten()
        if len(keep):
            adv = attack(x[keep], y[keep])
            with torch.no_grad():
                robust[keep] = model(adv).argmax(1) == y[keep]
    print(f"| torchattacks APGD-CE then APGD-T (float32) | {robust.float().mean():.2%} | "
          f"{time.perf_counter() - began:.1f} |")


if __name__ == "__main__":
    main()
