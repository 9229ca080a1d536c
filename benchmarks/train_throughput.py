"""Training throughput of seed-resnet on CIFAR-10: RobustLab's loop (``fit``) against a plain
PyTorch baseline (torchvision ImageFolder + PIL transforms through a DataLoader, default memory
format, textbook loop), measured side by side in one run.

    python benchmarks/train_throughput.py [--images 12800]
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common import machine, matmul_peak_gflops

from core import data
from core.models import build_model, flops_per_image
from core.paths import data_dir
from core.jobs.specs import TrainSpec
from core.training.loop import fit


def baseline(images: int, batch: int, workers: int) -> float:
    """Images/s of the textbook loop."""
    import torchvision.transforms as T
    from torchvision.datasets import ImageFolder

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor()])
    ds = ImageFolder(str(data_dir() / "cifar10-subset" / "train"), transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         drop_last=True)
    torch.manual_seed(0)
    model = build_model("seed-resnet", (3, 32, 32), 10, mean=(0.49, 0.48, 0.45),
                        std=(0.25, 0.24, 0.26))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    steps, seen, start = images // batch, 0, None
    for i, (x, y) in enumerate(loader):
        if i == 3:  # after warm-up (worker start, allocator)
            start, seen = time.perf_counter(), 0
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        seen += len(y)
        if i + 1 >= steps + 3:
            break
    return seen / (time.perf_counter() - start)


def ours(images: int, batch: int, precision: str = "fp32") -> float:
    """Images/s of ``fit`` (one epoch on ``images`` examples; evaluation on 100 excluded)."""
    cfg = TrainSpec(dataset="cifar10", epochs=1, batch_size=batch, lr=0.05,
                    train_subset=images, test_subset=100, precision=precision)
    data.load("cifar10", "train")  # decode/cache outside the timed region
    start = time.perf_counter()
    fit(cfg)
    return images / (time.perf_counter() - start)


def main() -> None:
    """Print images/s of the textbook loop and of fit, side by side."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12800)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    model = build_model("seed-resnet", (3, 32, 32), 10)
    flops = 3 * flops_per_image(model, (3, 32, 32))  # forward + backward ~ 3x forward
    results = {}
    for workers in (0, 2):
        results[f"baseline (DataLoader, {workers} workers)"] = baseline(args.images, args.batch,
                                                                        workers)
    results["robustlab fit"] = ours(args.images, args.batch)
    results["robustlab fit, bf16 autocast"] = ours(args.images, args.batch, "bf16")
    peak = matmul_peak_gflops()
    best_base = max(v for k, v in results.items() if k.startswith("baseline"))
    for name, ips in results.items():
        print(f"{name:36s} {ips:8.0f} img/s  {ips * flops / 1e9:6.1f} GFLOP/s")
    for name in ("robustlab fit", "robustlab fit, bf16 autocast"):
        print(f"ratio {name} / best baseline: {results[name] / best_base:.2f}x")
    print(f"fp32 matmul peak {peak:.0f} GFLOP/s; our fp32 loop reaches "
          f"{results['robustlab fit'] * flops / 1e9 / peak:.1%} of it")


if __name__ == "__main__":
    main()
