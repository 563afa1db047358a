"""Small exact statistics used by the report: Wilson intervals and paired exact tests, and the
one percent format (``fmt_pct``) every table and finding prints estimates with.

Everything here works on counts (numpy/scipy only), so the tests can check it by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom

#: Two-sided 95% normal quantile.
Z95 = 1.959963984540054
#: Significance level used for the bold marking and the gradient-masking flag.
ALPHA = 0.05


def wilson_interval(k: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n (k may be fractional, see ``Estimate``).

    Returns (nan, nan) when n == 0.
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_interval: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if k == 0 else max(0.0, center - half)
    high = 1.0 if k == n else min(1.0, center + half)
    return (low, high)


@dataclass(frozen=True)
class Estimate:
    """An accuracy measured on ``n`` inputs with ``k`` successes and its Wilson 95% interval.

    ``k`` is fractional for the average accuracy (the sum over inputs of the fraction of
    families each input is robust to); its interval uses the number of inputs as n, which is
    conservative for a mean of per-input scores in [0, 1] (their variance is at most p(1-p)).
    """

    k: float
    n: int

    @property
    def value(self) -> float:
        return self.k / self.n if self.n else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.k, self.n)

    @property
    def low(self) -> float:
        return self.interval[0]

    @property
    def high(self) -> float:
        return self.interval[1]

    @property
    def percent(self) -> float:
        return 100.0 * self.value


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """A percentage for tables: ``digits`` decimals; "—" when there is no number."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.{digits}f}"


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the two discordant counts b and c.

    Under H0 the discordant pairs split Binomial(b + c, 1/2). p = 1 when there are none.
    """
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact: discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def binomial_one_sided(b: int, c: int) -> float:
    """One-sided exact p-value that b is larger than c among b + c discordant pairs: P(X >= b)."""
    if b < 0 or c < 0:
        raise ValueError(f"binomial_one_sided: counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    return float(binom.sf(b - 1, n, 0.5))


def paired_sign_test(a: ArrayLike, b: ArrayLike) -> float:
    """Two-sided exact sign test on paired per-input scores (ties dropped).

    For boolean scores this is exactly McNemar's exact test; for the per-input fraction of
    families (the average column) it is its natural generalisation.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired_sign_test: shapes differ, {a.shape} vs {b.shape}")
    diff = a - b
    return mcnemar_exact(int((diff > 0).sum()), int((diff < 0).sum()))
