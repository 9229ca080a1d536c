"""Modules imported on first use. An attack's settings live beside its computation, and a job
spec validates them before anything heavy loads: the attack modules name torch through these
stand-ins, so importing them costs nothing until an attack actually runs."""
from __future__ import annotations

import importlib
from typing import Any


class LazyModule:
    """Stands for module ``name`` until one of its attributes is first read; then imports it
    and takes over its namespace, so every later read is a plain attribute read."""

    def __init__(self, name: str) -> None:
        self.__dict__["_lazy_name"] = name

    def __getattr__(self, attr: str) -> Any:
        module = importlib.import_module(self.__dict__["_lazy_name"])
        self.__dict__.update(vars(module))
        return getattr(module, attr)


torch: Any = LazyModule("torch")
F: Any = LazyModule("torch.nn.functional")
# scikit-learn, pandas and SciPy cost about a second to import: a worker or a CLI refusal that
# never writes a table or a metric should not pay it
sklearn_metrics: Any = LazyModule("sklearn.metrics")
pd: Any = LazyModule("pandas")
scipy_stats: Any = LazyModule("scipy.stats")
