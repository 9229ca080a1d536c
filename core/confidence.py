"""How sure a measured accuracy is: the 95% Wilson interval of a count (Wilson 1927, "Probable
inference, the law of succession, and statistical inference"), and the chance of a count under a
tolerated rate (a one-sided binomial test), computed with SciPy.

An accuracy on n images is a count k of n; 34.5% on 200 images is 28.3-41.2% at 95%. Every
robustness figure RobustLab shows carries this interval, and every indicator that compares two
counts decides with :func:`chance`, not with a point difference."""
from __future__ import annotations

from core.lazy import scipy_stats

LEVEL = 0.95


def interval(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` trials ((0, 1) when n is 0)."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"a count must lie in 0..n, got {k} of {n}")
    ci = scipy_stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


Z95 = 1.959963984540054  # the standard normal's 97.5% point: a two-sided 95% interval


def wilson(k, n: int, z: float = Z95):
    """The Wilson score interval in closed form for one count or an array of counts of ``n``
    (NumPy, vectorised; the same bounds as :func:`interval` at 95%): (low, high)."""
    import numpy as np

    k = np.asarray(k, dtype=float)
    if n <= 0:
        return np.zeros_like(k), np.ones_like(k)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def count(share: float, n: int) -> int:
    """The whole count behind an accuracy ``share`` of ``n`` images."""
    return int(round(share * n))


def accuracy_interval(share: float, n: int, level: float = LEVEL) -> list[float]:
    """The interval of an accuracy given as a share of ``n`` images, as a JSON-ready pair."""
    return list(interval(count(share, n), n, level))


def text(share: float, n: int) -> str:
    """'34.5% (28.3-41.2)': an accuracy with its 95% interval, in percent."""
    low, high = interval(count(share, n), n)
    return f"{share:.1%} ({low * 100:.1f}-{high * 100:.1f})"


def interval_text(share: float | None, n: int | None) -> str | None:
    """'28.3-41.3%': the 95% interval alone (None when there is no figure)."""
    if share is None or not n:
        return None
    low, high = interval(count(share, n), n)
    return f"{low * 100:.1f}-{high * 100:.1f}%"


def success_counts(success_rate: float, clean_acc: float, n: int) -> tuple[int, int]:
    """An attack's successes and the images it could succeed on (those classified correctly)."""
    correct = count(clean_acc, n)
    return count(success_rate, correct), correct


def success_interval_text(success_rate: float, clean_acc: float, n: int) -> str | None:
    """'10.4-14.5% of 950 correct images': a success rate's 95% interval and its denominator
    (None when no image was classified correctly)."""
    k, correct = success_counts(success_rate, clean_acc, n)
    if not correct:
        return None
    low, high = interval(k, correct)
    return f"{low * 100:.1f}-{high * 100:.1f}% of {correct:,} correct images"


def success_text(success_rate: float, clean_acc: float, n: int) -> str:
    """'12.3% (10.4-14.5) of 950 correct': a success rate, its 95% interval and its
    denominator (the images classified correctly before the attack)."""
    k, correct = success_counts(success_rate, clean_acc, n)
    if not correct:
        return "— (no image classified correctly)"
    low, high = interval(k, correct)
    return f"{success_rate:.1%} ({low * 100:.1f}-{high * 100:.1f}) of {correct:,} correct"


def chance(k: int, n: int, rate: float) -> float:
    """P(at least ``k`` of ``n``) if each example did so independently at ``rate``: how likely
    the count is by chance alone (1.0 when k is 0)."""
    if k <= 0:
        return 1.0
    return float(scipy_stats.binom.sf(k - 1, n, rate))


def overstates(high_share: float, high_n: int, low_share: float, low_n: int) -> bool:
    """Whether the first accuracy lies above the second beyond both intervals: the first's lower
    bound above the second's upper bound."""
    return interval(count(high_share, high_n), high_n)[0] > \
        interval(count(low_share, low_n), low_n)[1]
