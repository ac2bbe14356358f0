"""Intervals and verdicts for comparing the two families across seeds (numpy-free, stdlib only but
for the Student-t quantile shared with the scaling fits).

* :func:`mean_interval` — mean of repeated runs (seeds) with its t-interval.
* :func:`paired_difference` — RedLLM - DecLLM per seed (same seed, same data order, same tokens
  scored), so the seed-to-seed variation common to both families cancels; t-interval with n - 1 dof.
* :func:`verdict` — "reproduced" only when the interval excludes zero in the study's direction,
  "opposite" when it excludes zero the other way, "not resolved" otherwise.
* :func:`slope_difference` — difference of two fitted scaling exponents with a Welch interval.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

from .scaling import PowerLawFit, student_t_ppf

VERDICTS = ("reproduced", "opposite", "not resolved")


@dataclass(frozen=True)
class Interval:
    """``mean`` with its ``confidence`` interval [lo, hi]; ``se`` and ``dof`` as used (None: n < 2)."""

    mean: float
    lo: Optional[float]
    hi: Optional[float]
    se: Optional[float]
    n: int
    dof: Optional[float]
    confidence: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        if self.lo is None:
            return f"{self.mean:.4g} (n={self.n}, no interval)"
        return f"{self.mean:.4g} [{self.lo:.4g}, {self.hi:.4g}]"


def _interval(mean: float, se: Optional[float], n: int, dof: Optional[float], confidence: float) -> Interval:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if se is None or dof is None or dof <= 0:
        return Interval(mean, None, None, se, n, dof, confidence)
    t = student_t_ppf(0.5 + confidence / 2.0, dof)
    return Interval(mean, mean - t * se, mean + t * se, se, n, dof, confidence)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean of ``values`` (e.g. one per seed) with a two-sided t-interval (n - 1 dof)."""
    xs = [float(v) for v in values]
    if not xs or not all(math.isfinite(x) for x in xs):
        raise ValueError(f"mean_interval needs finite values, got {values!r}")
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return _interval(mean, None, n, None, confidence)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return _interval(mean, math.sqrt(var / n), n, n - 1, confidence)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """``a[i] - b[i]`` over pairs that share a seed, with its t-interval."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference needs pairs: {len(a)} values vs {len(b)}")
    return mean_interval([float(x) - float(y) for x, y in zip(a, b)], confidence)


def verdict(interval: Interval, expected_sign: int) -> str:
    """Against the study's direction (``expected_sign`` +1: the difference should be positive, -1:
    negative): reproduced / opposite only when the interval excludes zero."""
    if expected_sign not in (1, -1):
        raise ValueError(f"expected_sign must be +1 or -1, got {expected_sign}")
    if interval.lo is None:
        return "not resolved"
    if interval.lo > 0 or interval.hi < 0:
        return "reproduced" if (interval.lo > 0) == (expected_sign > 0) else "opposite"
    return "not resolved"


def slope_difference(first: PowerLawFit, second: PowerLawFit, confidence: float = 0.95) -> Interval:
    """``first.b - second.b`` of two independent fits; Welch-Satterthwaite degrees of freedom."""
    diff = first.b - second.b
    if first.b_se is None or second.b_se is None:
        return _interval(diff, None, first.n + second.n, None, confidence)
    v1, v2 = first.b_se ** 2, second.b_se ** 2
    d1, d2 = first.n - 2, second.n - 2
    se = math.sqrt(v1 + v2)
    dof = (v1 + v2) ** 2 / (v1 ** 2 / d1 + v2 ** 2 / d2) if v1 + v2 > 0 else float(d1 + d2)
    return _interval(diff, se, first.n + second.n, dof, confidence)
