"""The threat model: a norm and a budget in pixel units, as a value.

Adversarial numbers are only ever combined within one threat model: a worst case over attacks
is taken per (norm, eps), never across norms. Unbounded attacks (Carlini-Wagner, semantic) have
norm ``none``. Random noise is not a threat model but a corruption with its own sigma axis.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from core.paths import InputError

NORMS = ("linf", "l2", "none")
_SYMBOL = {"linf": "L∞", "l2": "L2", "none": "unbounded"}


@dataclass(frozen=True, order=True)
class ThreatModel:
    """A norm (``linf``, ``l2`` or ``none``) and epsilon in pixel units (None when unbounded)."""

    norm: str
    eps: float | None = None

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise InputError(f"unknown norm {self.norm!r}; valid norms: {', '.join(NORMS)}")
        if self.norm == "none":
            if self.eps is not None:
                raise InputError("an unbounded threat model has no epsilon")
            return
        limit = 1.0 if self.norm == "linf" else 1e4
        if (not isinstance(self.eps, (int, float)) or isinstance(self.eps, bool)
                or not math.isfinite(self.eps) or not 0 <= self.eps <= limit):
            raise InputError(f"eps must be a number in [0, {limit:g}] for norm {self.norm}, "
                             f"got {self.eps!r}")

    @property
    def key(self) -> str:
        """A stable text key, e.g. ``linf:0.1``, ``none``."""
        return self.norm if self.eps is None else f"{self.norm}:{self.eps:g}"

    def label(self) -> str:
        """Human label with the k/255 form beside L-inf budgets, e.g. ``L∞ ε=0.0314 (8/255)``."""
        if self.eps is None:
            return _SYMBOL[self.norm]
        text = f"{_SYMBOL[self.norm]} ε={self.eps:.4g}"
        return text + (f" ({self.eps * 255:.3g}/255)" if self.norm == "linf" else "")

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return {"norm": self.norm, "eps": self.eps}

    @classmethod
    def parse(cls, text: str) -> "ThreatModel":
        """``linf:0.1``, ``l2:0.5`` or ``none``."""
        norm, _, eps = text.partition(":")
        if norm == "none":
            return cls("none")
        try:
            return cls(norm, float(eps))
        except ValueError as err:
            raise InputError(f"threat model must look like linf:0.1, l2:0.5 or none, "
                             f"got {text!r}") from err


# The budgets the field reports: MNIST L-inf 0.3 (Madry et al. 2018), CIFAR-10 L-inf 8/255 and
# L2 0.5 (RobustBench), MNIST L2 2.0 (Croce & Hein 2020). A user's own images get CIFAR-10's.
_STANDARD_EPS = {("mnist", "linf"): 0.3, ("mnist", "l2"): 2.0,
                 ("cifar10", "linf"): 8 / 255, ("cifar10", "l2"): 0.5}


def standard_threat(dataset: str, norm: str = "linf") -> ThreatModel:
    """The threat model usually reported for ``dataset`` under ``norm`` (``linf`` or ``l2``)."""
    if norm not in ("linf", "l2"):
        raise InputError(f"a standard budget needs a bounded norm; valid: linf, l2 (got {norm!r})")
    known = dataset if dataset in ("mnist", "cifar10") else "cifar10"
    return ThreatModel(norm, _STANDARD_EPS[(known, norm)])
