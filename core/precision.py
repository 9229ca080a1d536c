"""Which arithmetic ``--precision auto`` uses, chosen by measurement rather than assumption.

On a GPU ``auto`` times a few passes of this model at this batch size in both arithmetics,
picks the faster, and caches the choice per (device, model, input shape, purpose) in
``artifacts/cache/precision.json``: there a small model is bound by kernel launches and memory
traffic, and on one H200 the audit's bf16 search was 1.8-2.4x slower than float32 while bf16
training was faster at batch 512 and slower at 128. On a CPU with native bfloat16 the search is
bf16 by a rule backed by the audit benchmark (a whole audit 2-3x faster there,
``benchmarks/RESULTS.md``): a probe on clean images cannot see the cost of the float32 pass on
rows near the boundary, which differs between a trained and an untrained model. Where the device
has no native bfloat16 it is float32.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from core import checkpoint
from core import estimate
from core.paths import cache_dir

PASSES = 4  # timed passes per arithmetic, after one untimed warm-up of each


@dataclass
class Choice:
    """The arithmetic chosen and why, as printed and stored with the run."""

    bf16: bool
    reason: str

    @property
    def name(self) -> str:
        """'bf16' or 'fp32'."""
        return "bf16" if self.bf16 else "fp32"


def choose(requested: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
           purpose: str) -> Choice:
    """The arithmetic for ``purpose`` (``train``: a training step under autocast; ``search``:
    an attack's input-gradient pass) of ``model`` on batches like ``x``: as requested, else the
    faster one measured here (cached)."""
    from core.attacks.speed import bf16_native

    if requested != "auto":
        return Choice(requested == "bf16", f"--precision {requested}")
    device = x.device
    if not bf16_native(device):
        return Choice(False, f"auto: float32 ({_device_name(device)} has no native bfloat16)")
    if device.type == "cpu":
        if purpose == "search":
            return Choice(True, "auto: bf16 search on a CPU with native bfloat16, where a whole "
                                "audit runs 2-3x faster than in float32")
        return Choice(False, "auto: float32 training on a CPU (--precision bf16 to change)")
    return measured(model, x, y, purpose)


def measured(model: nn.Module, x: torch.Tensor, y: torch.Tensor, purpose: str) -> Choice:
    """The faster arithmetic for ``purpose``, timed here once and cached."""
    device = x.device
    key = _key(model, x, purpose)
    cache = _read_cache()
    if key not in cache:
        cache[key] = {"fp32_ms": _time(model, x, y, purpose, False) * 1e3,
                      "bf16_ms": _time(model, x, y, purpose, True) * 1e3}
        _write_cache(cache)
    fp32, bf16 = cache[key]["fp32_ms"], cache[key]["bf16_ms"]
    faster = bf16 < fp32
    return Choice(faster, f"auto: {'bf16' if faster else 'fp32'} measured faster for this model "
                          f"on {_device_name(device)} (bf16 {bf16:.1f} ms, fp32 {fp32:.1f} ms "
                          f"per {purpose} pass of {len(x)} images)")


def _time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, purpose: str, bf16: bool) -> float:
    """Median seconds of one pass of a batch like ``x``, timed as the estimates are
    (:mod:`core.estimate`; no statistics or weights of ``model`` change)."""
    from core.attacks.speed import LowPrecision

    if purpose == "search":
        net = LowPrecision(model) if bf16 else model
        return estimate.seconds_per_attack_pass(net, x, y, PASSES + 1) * len(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
        return estimate.seconds_per_pass(model, x, y, PASSES + 1) * len(x)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"this {os.cpu_count()}-core CPU"


def _key(model: nn.Module, x: torch.Tensor, purpose: str) -> str:
    params = sum(p.numel() for p in model.parameters())
    return (f"{_device_name(x.device)}|torch {torch.__version__}|{type(model).__name__}"
            f"|{params}|{tuple(x.shape)}|{purpose}")


def _path():
    return cache_dir() / "precision.json"


def _read_cache() -> dict:
    try:
        return json.loads(_path().read_text())
    except (OSError, ValueError):
        return {}  # no cache yet, or a damaged one: measure again


def _write_cache(cache: dict) -> None:
    _path().parent.mkdir(parents=True, exist_ok=True)
    checkpoint.atomic_write_text(_path(), json.dumps(cache, indent=1))
