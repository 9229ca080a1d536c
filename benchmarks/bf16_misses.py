"""How often the audit's bfloat16 search misses a point that a float32 search breaks.

On a CPU with native bfloat16 the audit searches in bfloat16 (every verdict is still the
float32 model's, and a point the bfloat16 search breaks but float32 does not is searched again
in float32). What rounding can still do is hide a success: a point the float32 search would
have broken, the bfloat16 search does not. This trains three MNIST models (undefended, PGD-AT
and IAT, the seed's defense), runs the audit's cascade on the same ``-n`` test images with
both searches, and prints per model: robust accuracy of each with its 95% interval, the points
only float32 broke (misses), the points only bfloat16 broke, and the miss rate with its
interval. Issue 23's rule: keep bfloat16 only where the difference is inside the interval.

    python benchmarks/bf16_misses.py [-n 1000] [--eps 0.2] [--version fast]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.common import machine  # noqa: E402  (sets ROBUSTLAB_DATA like the others)

MODELS = {
    "undefended": {},
    "pgd-at": {"defense": "pgd-at", "defense_args": {"eps": "EPS", "steps": 10}},
    "iat": {"defense": "iat", "defense_args": {"eps": "EPS", "steps": 10}},
}


def train(store, name: str, eps: float, subset: int, epochs: int) -> str:
    """Train one of :data:`MODELS` on ``subset`` MNIST images; its run id."""
    from core.jobs.runner import create, execute
    from core.jobs.specs import TrainSpec

    extra = {k: ({a: eps if b == "EPS" else b for a, b in v.items()} if isinstance(v, dict)
                 else v) for k, v in MODELS[name].items()}
    spec = TrainSpec(dataset="mnist", epochs=epochs, train_subset=subset, test_subset=1000,
                     seed=0, **extra)
    run_id = create(store, spec)
    execute(store, run_id, echo=False)
    return run_id


def compare(model, data, plan) -> dict:
    """The cascade with a float32 and a bfloat16 search on the same images."""
    from core import audit

    out = {}
    for low in (False, True):
        began = time.perf_counter()
        result = audit.cascade(model, data, plan, low_precision=low)
        out["bf16" if low else "fp32"] = (result, time.perf_counter() - began)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="test images (default 1000)")
    parser.add_argument("--eps", type=float, default=0.2, help="L-inf budget (default 0.2)")
    parser.add_argument("--version", default="fast", choices=["fast", "standard"])
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=2)
    opts = parser.parse_args()
    os.environ.setdefault("ROBUSTLAB_ARTIFACTS", tempfile.mkdtemp(prefix="robustlab-bf16-"))
    from core import audit, confidence, data
    from core.jobs.store import RunStore
    from core.prediction import load_model, run_model_path
    from core.threat import ThreatModel

    print(f"bf16 vs float32 audit search, MNIST L-inf {opts.eps}, {opts.version} cascade, "
          f"n={opts.n}; {machine()}", flush=True)
    store = RunStore()
    split = data.load("mnist", "test").subset(opts.n, seed=0)
    plan = audit.stages(opts.version, ThreatModel("linf", opts.eps))
    for name in MODELS:
        began = time.perf_counter()
        run_id = train(store, name, opts.eps, opts.train_subset, opts.epochs)
        model, _ = load_model(run_model_path(run_id))
        trained = time.perf_counter() - began
        both = compare(model, split, plan)
        (f32, t32), (b16, t16) = both["fp32"], both["bf16"]
        robust32 = [b is None for b in f32["broken_by"]]
        robust16 = [b is None for b in b16["broken_by"]]
        misses = sum(r16 and not r32 for r32, r16 in zip(robust32, robust16))
        extra = sum(r32 and not r16 for r32, r16 in zip(robust32, robust16))
        n = len(robust32)
        print(f"{name:10} (trained in {trained:.0f} s, clean {f32['clean_acc']:.1%}): robust "
              f"fp32 {confidence.text(f32['robust_acc'], n)} in {t32:.0f} s, bf16 "
              f"{confidence.text(b16['robust_acc'], n)} in {t16:.0f} s; broken only by fp32 "
              f"(bf16 misses): {misses} = {confidence.text(misses / n, n)}, only by bf16: "
              f"{extra}; difference inside fp32's interval: "
              f"{_inside(b16['robust_acc'], f32['robust_acc'], n)}", flush=True)


def _inside(value: float, reference: float, n: int) -> bool:
    from core import confidence

    low, high = confidence.interval(round(reference * n), n)
    return low <= value <= high


if __name__ == "__main__":
    main()
