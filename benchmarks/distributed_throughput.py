"""Training throughput with 1 and 2 processes (DDP, gloo on CPU) on this machine, in one run:
seed-resnet on 12,000 MNIST images, one epoch, through the real CLI (``torchrun -m core``).
On 2 cores little gain is expected; the point is the same code path as a GPU cluster.

    python benchmarks/distributed_throughput.py [--images 12000]
"""
from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

from common import ROOT, machine


def run(nproc: int, images: int) -> float:
    args = ["-m", "core", "train", "--dataset", "mnist", "--epochs", "1", "--train-subset",
            str(images), "--test-subset", "500", "--batch-size", "128", "--name",
            f"benchmark ddp x{nproc}"]
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, 2 // nproc)))
    if nproc > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        args = ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                "--master_addr=127.0.0.1", f"--master_port={port}"] + args
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    line = next(l for l in proc.stdout.splitlines() if "completed" in l)
    print(f"  {nproc} process(es): {line.split('completed: ')[1]}")
    return images / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12000)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    one = run(1, args.images)
    two = run(2, args.images)
    print(f"1 process : {one:7.0f} img/s (whole command, start-up included)")
    print(f"2 processes: {two:7.0f} img/s  ratio {two / one:.2f}x")


if __name__ == "__main__":
    main()
