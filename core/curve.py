"""A robustness curve: from each example's smallest adversarial norm (found by minimum-norm
attacks), the robust accuracy at every epsilon at once. An example counts as robust at epsilon
when it was classified correctly and its smallest adversarial norm is above epsilon, so a
misclassified example has norm 0 and one no attack broke has norm infinity. Plain Python (no
torch): the dashboard reads curves without loading a model."""
from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass

from core import confidence

FLOAT32_ROUNDING = 2.0 ** -22  # two float32 units in the last place, relative


@dataclass(frozen=True)
class RobustnessCurve:
    """The smallest adversarial norms of ``n`` examples in one norm (``linf`` or ``l2``)."""

    norm: str
    norms: tuple[float, ...]

    def __post_init__(self) -> None:
        if any(v < 0 or math.isnan(v) for v in self.norms):
            raise ValueError("a smallest norm is a number >= 0 (infinity: never broken)")
        object.__setattr__(self, "_sorted", tuple(sorted(self.norms)))

    @classmethod
    def of(cls, norm: str, norms: Sequence[float]) -> "RobustnessCurve":
        """A curve from any sequence of norms."""
        return cls(norm, tuple(float(v) for v in norms))

    @property
    def n(self) -> int:
        """How many examples."""
        return len(self.norms)

    def robust(self, eps: float) -> int:
        """How many examples are robust at ``eps`` (smallest norm strictly above it). Norms are
        float32 measurements: one within float32 rounding of ``eps`` (a point projected onto
        the ball, such as an audit's) is at ``eps``, not above it."""
        return self.n - bisect.bisect_right(self._sorted, eps * (1 + FLOAT32_ROUNDING))

    def accuracy(self, eps: float) -> float:
        """Robust accuracy at ``eps``; at 0 it is the clean accuracy."""
        return self.robust(eps) / self.n if self.n else 0.0

    def interval(self, eps: float) -> tuple[float, float]:
        """The 95% interval of the robust accuracy at ``eps`` (closed-form Wilson)."""
        low, high = confidence.wilson(self.robust(eps), self.n)
        return float(low), float(high)

    def clean_accuracy(self) -> float:
        """The share classified correctly (norm above 0)."""
        return self.accuracy(0.0)

    def median(self) -> float:
        """The median smallest norm of the correctly classified examples (infinity when most
        of them were never broken; nan when none was correct)."""
        broken = [v for v in self._sorted if v > 0]
        if not broken:
            return math.nan
        mid = len(broken) // 2
        return broken[mid] if len(broken) % 2 else (broken[mid - 1] + broken[mid]) / 2

    def steps(self, top: float | None = None) -> list[tuple[float, float]]:
        """The curve as (epsilon, accuracy) corners of its step function, from 0 to ``top``
        (default: the largest finite norm): the accuracy holds up to each epsilon listed and
        drops just after it."""
        finite = [v for v in self._sorted if math.isfinite(v) and v > 0]
        top = max(finite, default=0.0) if top is None else top
        points = [(0.0, self.accuracy(0.0))]
        for v in sorted(set(finite)):
            if v > top:
                break
            points += [(v, points[-1][1]), (v, self.accuracy(v))]
        points.append((top, self.accuracy(top)))
        return points

    def band(self, top: float | None = None) -> list[tuple[float, float, float, float]]:
        """:meth:`steps` with the 95% interval of each corner's own accuracy: (epsilon,
        accuracy, low, high), so the line never leaves its band. Closed-form Wilson for all
        corners at once, cached per ``top`` (a slider move redraws without recomputing it)."""
        cache = self.__dict__.setdefault("_bands", {})
        if top not in cache:
            points = self.steps(top)
            counts = [round(a * self.n) for _, a in points]
            low, high = confidence.wilson(counts, self.n)
            cache[top] = [(e, a, float(lo), float(hi))
                          for (e, a), lo, hi in zip(points, low, high)]
        return cache[top]

    def drawn(self, top: float | None = None, points: int = 1500
              ) -> list[tuple[float, float, float, float]]:
        """The curve as a chart draws it (a step after each point, "hv"): (epsilon, accuracy,
        low, high) at 0 and at each distinct norm up to ``top``, or, past ``points`` distinct
        norms, at ``points`` evenly spaced epsilons (finer than a screen's pixels: a 10,000-image
        curve redraws in milliseconds, and each point is the exact curve's value there).
        Cached per ``top``."""
        cache = self.__dict__.setdefault("_drawn", {})
        key = (top, points)
        if key not in cache:
            finite = sorted({v for v in self._sorted if math.isfinite(v) and v > 0})
            last = max(finite, default=0.0) if top is None else top
            xs = [0.0] + [v for v in finite if v <= last]
            if len(xs) > points:
                xs = [last * k / (points - 1) for k in range(points)]
            elif xs[-1] < last:
                xs.append(last)
            counts = [self.robust(e) for e in xs]
            low, high = confidence.wilson(counts, self.n)
            cache[key] = [(e, c / self.n if self.n else 0.0, float(lo), float(hi))
                          for e, c, lo, hi in zip(xs, counts, low, high)]
        return cache[key]

