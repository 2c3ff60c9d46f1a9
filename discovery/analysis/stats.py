"""The one statistics module of the project: confidence intervals by the t distribution, and paired differences.

Every interval the engine, the suites and the experiment scripts report comes from here, so a "95 % CI" means the
same thing everywhere: mean ± t_{(1+level)/2, n−1} · s/√n over n values (s the sample standard deviation). With
3 seeds the factor is t(0.975, 2) = 4.303, not the normal 1.96.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel


def t_quantile(level: float, df: int) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom: t_{(1+level)/2, df}."""
    from scipy.stats import t as student_t  # scipy ships with scikit-learn

    return float(student_t.ppf(0.5 + level / 2, df))


def _floats(values: Sequence[float] | Any) -> list[float]:
    """Plain floats from a sequence, a numpy array or a torch tensor."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().reshape(-1).tolist()
    elif hasattr(values, "tolist"):
        values = values.tolist()
    return [float(v) for v in values]


def mean_halfwidth(values: Sequence[float] | Any, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width of its ``level`` t-interval); the half-width is NaN for fewer than 2 values (the mean is
    NaN for none)."""
    xs = _floats(values)
    n = len(xs)
    if n == 0:
        return math.nan, math.nan
    mean = sum(xs) / n
    if n < 2:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in xs) / (n - 1)
    return mean, t_quantile(level, n - 1) * math.sqrt(var / n)


def t_interval(values: Sequence[float] | Any, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): mean ± t_{(1+level)/2, n−1} s/√n over the values (lo = hi = mean for one value)."""
    mean, half = mean_halfwidth(values, level)
    if math.isnan(half):
        return mean, mean, mean
    return mean, mean - half, mean + half


class PairedDifference(BaseModel):
    """Mean of a − b over paired values (the same episodes or seeds) with its t-interval."""

    delta: float
    ci95: list[float]
    n: int


def paired_difference(a: Sequence[float] | Any, b: Sequence[float] | Any, level: float = 0.95) -> PairedDifference:
    """The paired difference a − b (same length: value i of both comes from the same episode or seed)."""
    xs, ys = _floats(a), _floats(b)
    if len(xs) != len(ys):
        raise ValueError(f"paired values need the same length, got {len(xs)} and {len(ys)}")
    mean, lo, hi = t_interval([x - y for x, y in zip(xs, ys)], level)
    return PairedDifference(delta=mean, ci95=[lo, hi], n=len(xs))
