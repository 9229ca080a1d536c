"""Helpers shared by the benchmark scripts (not part of the library)."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHARED = ROOT.parent / "shared" / "datasets"
if "ROBUSTLAB_DATA" not in os.environ and SHARED.is_dir():
    os.environ["ROBUSTLAB_DATA"] = str(SHARED)


def machine() -> str:
    """One line describing this machine."""
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, python {platform.python_version()}")


def matmul_peak_gflops(n: int = 2048, reps: int = 6) -> float:
    """Achievable float32 GFLOP/s of this CPU, measured with a large matrix multiply."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - start) / 1e9
