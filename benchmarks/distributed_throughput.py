"""Throughput with 1 and 2 processes (gloo on CPU, nccl on GPUs) on this machine, in one run,
through the real CLI (``torchrun -m core``): training (seed-resnet on 12,000 MNIST images, one
epoch, DDP) and sharded evaluation (PGD-10 on 1,000 MNIST test images with ``attack``, whose
results must be identical for 1 and 2 processes). On 2 CPU cores little gain is expected; the
point is the same code path as a GPU cluster.

    python benchmarks/distributed_throughput.py [--images 12000] [--attack-images 1000]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

import torch

from common import ROOT, machine


def core(nproc: int, *args: str) -> tuple[str, float]:
    """Run ``python -m core ARGS`` on ``nproc`` processes; return its output and wall time."""
    cmd = ["-m", "core", *args]
    threads = max(1, (os.cpu_count() or 2) // nproc)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_addr=127.0.0.1", f"--master_port={port}"] + cmd
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    return proc.stdout, wall


def train(nproc: int, images: int) -> tuple[float, str]:
    out, wall = core(nproc, "train", "--dataset", "mnist", "--epochs", "1", "--train-subset",
                     str(images), "--test-subset", "500", "--batch-size", "128", "--name",
                     f"benchmark ddp x{nproc}")
    line = next(l for l in out.splitlines() if "completed" in l)
    print(f"  train, {nproc} process(es): {line.split('completed: ')[1]}")
    return images / wall, line.split()[1].rstrip(":")


def attack(nproc: int, model_run: str, images: int) -> tuple[float, str]:
    out, wall = core(nproc, "attack", model_run, "--attack", "pgd", "--eps", "0.1", "--steps",
                     "10", "-n", str(images))
    line = next(l for l in out.splitlines() if "clean accuracy" in l)
    print(f"  PGD-10, {nproc} process(es): {line.strip()}")
    return images / wall, line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--attack-images", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(f"GPUs: {torch.cuda.device_count()} ({'nccl' if torch.cuda.is_available() else 'gloo'})")
    one, model_run = train(1, args.images)
    two, _ = train(2, args.images)
    print(f"train   1 process : {one:7.0f} img/s (whole command, start-up included)")
    print(f"train   2 processes: {two:7.0f} img/s  ratio {two / one:.2f}x")
    one, single = attack(1, model_run, args.attack_images)
    two, double = attack(2, model_run, args.attack_images)
    print(f"PGD-10  1 process : {one:7.0f} img/s (whole command, start-up included)")
    print(f"PGD-10  2 processes: {two:7.0f} img/s  ratio {two / one:.2f}x; results "
          f"{'identical' if single == double else 'DIFFER'}")


if __name__ == "__main__":
    main()
