"""Confidence intervals for accuracies (Wilson, per run) and for means over seeds (Student t).

Pure Python (``math`` only): scipy is not a dependency, and ``torch.distributions.StudentT.icdf``
is not implemented in torch 2.x, so the t quantile is computed here from the regularised incomplete
beta function (continued fraction, Numerical Recipes ``betacf``) and bisection.
"""

from __future__ import annotations

import math

Z95 = 1.959964  # standard normal 97.5% quantile


def wilson_ci(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` trials, as fractions in [0, 1].

    ``n == 0`` -> ``(0.0, 1.0)`` (no information). Unlike the normal approximation it never leaves
    [0, 1] and is not degenerate at k = 0 or k = n (e.g. 95/100 -> (0.888, 0.978)).
    """
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"wilson_ci: need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, center - half)  # exact ends: lo is 0 iff k = 0, hi is 1 iff k = n
    hi = 1.0 if k == n else min(1.0, center + half)
    return (lo, hi)


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction for the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """CDF of Student's t distribution with ``df`` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
    """Quantile (inverse CDF) of Student's t, by bisection on :func:`t_cdf` (|error| < 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"t_ppf: q must be in (0, 1), got {q}")
    if df <= 0:
        raise ValueError(f"t_ppf: df must be > 0, got {df}")
    if q == 0.5:
        return 0.0
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean over seeds and its two-sided Student-t confidence interval: ``(mean, lo, hi)``.

    ``lo/hi = mean -/+ t_{(1+confidence)/2, n-1} * s / sqrt(n)`` with the sample standard deviation
    ``s`` (n - 1 in the denominator). With a single value the interval is undefined and is returned
    as NaN: ``(v, nan, nan)`` -- tables must show "no CI" rather than a zero-width interval that
    would look like certainty. An empty list raises ValueError.
    """
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("mean_ci: no values")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"mean_ci: confidence must be in (0, 1), got {confidence}")
    n = len(vals)
    mean = math.fsum(vals) / n
    if n == 1:
        return (mean, math.nan, math.nan)
    var = math.fsum((v - mean) ** 2 for v in vals) / (n - 1)
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * math.sqrt(var / n)
    return (mean, mean - half, mean + half)


__all__ = ["Z95", "mean_ci", "t_cdf", "t_ppf", "wilson_ci"]
