"""Confidence intervals computed from per-event contribution arrays.

Every estimator in :mod:`analysis.estimators` reduces a log to an (n,) array
of per-event contributions whose mean is the estimate. This module turns such
an array (or, for ratio statistics and refitted models, a resampling of it)
into an interval.

Three families:

* ``normal``: mean ± z·s/√n (central limit theorem). Cheap and accurate for
  large samples with moderate weights; under-covers when a few events carry
  huge importance weights (the sample variance under-estimates the variance).
* ``bootstrap``: percentile interval over ``n_resamples`` Poisson(1)-weighted
  resamples (Efron 1979; the Poisson bootstrap of Hanley & MacGibbon 2006 /
  Chamandy et al. 2012 replaces multinomial counts by independent Poisson(1)
  weights, which is what makes it vectorisable in chunks). 1,000 resamples of
  1,000,000 events take about 3 s on one core (``benchmarks/estimators.py``):
  a (resamples x events) weight block times the contributions, via BLAS.
* ``bernstein``: the empirical Bernstein bound of Maurer & Pontil (2009,
  Theorem 4) for a mean of i.i.d. variables with a known a-priori range
  ``[lo, hi]``. Finite-sample valid: it keeps coverage >= level for bounded
  rewards on small or heavy-weighted samples, at the price of width.

Errors: :class:`EstimatorError` (a ``ValueError``) names the offending input
in ``field``; it is the root of every error raised by the estimators.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from scipy import stats

from analysis.errors import EstimatorError

__all__ = [
    "EstimatorError",
    "Interval",
    "bernstein_interval",
    "bootstrap_interval",
    "check_level",
    "normal_interval",
    "poisson_weight_chunks",
    "resample_statistic",
]


@dataclass(frozen=True)
class Interval:
    """A two-sided confidence interval for a mean-like quantity."""

    low: float
    high: float
    stderr: float
    level: float
    method: str


def check_level(level: float) -> float:
    """``level`` as a float strictly inside (0, 1), else :class:`EstimatorError`."""
    value = float(level)
    if not (math.isfinite(value) and 0.0 < value < 1.0):
        raise EstimatorError(f"level must be in (0, 1), got {level!r}", field="level")
    return value


def _stderr(values: np.ndarray) -> float:
    n = values.shape[0]
    if n < 2:
        return float("nan")
    # unbiased sample variance; standard error of the mean = s / sqrt(n)
    return float(np.std(values, ddof=1) / math.sqrt(n))


def normal_interval(values: np.ndarray, level: float = 0.95) -> Interval:
    """mean ± z_{(1+level)/2} · s/√n over the contribution array ``values``."""
    level = check_level(level)
    mean = float(np.mean(values))
    se = _stderr(values)
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return Interval(mean - z * se, mean + z * se, se, level, "normal")


# Poisson(1) quantile table: a uniform 16-bit integer u maps to the Poisson(1)
# quantile at (u + 0.5) / 65536. The probabilities are exact to 1/65536, far
# below bootstrap Monte-Carlo error, and a table lookup is ~10x cheaper than
# numpy's Poisson sampler.
_POISSON_TABLE = stats.poisson.ppf((np.arange(65536) + 0.5) / 65536.0, 1.0).astype(np.float32)
_CHUNK = 4096  # events per weight matrix (part of the random stream's layout: fixed)
_BLOCK = 16  # resamples per block in resample_statistic (multiple of 4: same stream)


def poisson_weight_chunks(
    n: int, n_resamples: int, seed: int, chunk: int = _CHUNK
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(events, W)`` with ``W`` a (n_resamples, len(events)) float32 matrix of
    independent Poisson(1) bootstrap weights for the events in the slice ``events``.

    The whole (n_resamples, n) matrix is never held: chunks over events keep it
    in cache. Deterministic for a given ``(n, n_resamples, seed, chunk)``.
    """
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        size = n_resamples * (stop - start)
        raw = rng.bit_generator.random_raw((size + 3) // 4).view(np.uint16)[:size]
        yield slice(start, stop), np.take(_POISSON_TABLE, raw).reshape(n_resamples, stop - start)


def resample_statistic(
    columns: np.ndarray,
    statistic: Callable[[np.ndarray], np.ndarray],
    n_resamples: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """Bootstrap replicates of ``statistic(means)`` where ``means`` are the
    Poisson-weighted column means of ``columns`` (n, k).

    ``statistic`` maps a (B, k) array of resampled column means to (B,) values
    (identity for a plain mean, a ratio for SNIPS...). Columns are centred
    before the float32 products so that rounding touches only the deviations.
    """
    if n_resamples < 10:
        raise EstimatorError("n_resamples must be at least 10", field="n_resamples")
    cols = np.asarray(columns, dtype=np.float64)
    if cols.ndim == 1:
        cols = cols[:, None]
    n, k = cols.shape
    centre = cols.mean(axis=0)
    # one extra column of ones gives the resample size sum(W) in the same product
    work = np.empty((n, k + 1), dtype=np.float32)
    work[:, :k] = cols - centre
    work[:, k] = 1.0
    acc = np.zeros((n_resamples, k + 1), dtype=np.float64)
    # The weights of poisson_weight_chunks, drawn and multiplied in blocks of _BLOCK
    # resamples (rows of its (n_resamples, chunk) matrix): the same random stream and
    # the same numbers, but every block stays in cache between the table lookup and
    # the matmul, and each matmul is small enough for OpenBLAS to run it on one thread
    # (its threads only contend with each other on a loaded 2-core machine).
    rng = np.random.default_rng(seed)
    draw = rng.bit_generator.random_raw
    buffer = np.empty(_BLOCK * _CHUNK, dtype=np.float32)
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        width = stop - start
        columns = work[start:stop]
        for first in range(0, n_resamples, _BLOCK):
            last = min(n_resamples, first + _BLOCK)
            size = (last - first) * width  # a multiple of 4 except in the chunk's last block
            raw = draw((size + 3) // 4).view(np.uint16)[:size]
            weights = np.take(_POISSON_TABLE, raw, out=buffer[:size]).reshape(last - first, width)
            acc[first:last] += weights @ columns  # resample means via BLAS: W @ values
    total = np.maximum(acc[:, k:], 1.0)
    means = centre + acc[:, :k] / total
    return np.asarray(statistic(means), dtype=np.float64)


def bootstrap_interval(
    replicates: np.ndarray, estimate: float, stderr: float, level: float, method: str = "bootstrap"
) -> Interval:
    """Percentile interval of bootstrap ``replicates`` (Efron & Tibshirani 1993, §13.3)."""
    level = check_level(level)
    alpha = 1.0 - level
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return Interval(float("nan"), float("nan"), stderr, level, method)
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(float(low), float(high), stderr, level, method)


def bernstein_radius(values: np.ndarray, bounds: tuple[float, float], delta: float) -> float:
    """One-sided empirical Bernstein radius at confidence 1 - ``delta``.

    Maurer & Pontil (2009), Theorem 4, for X in [0, 1]:
    E X - mean <= sqrt(2 V_n ln(2/δ) / n) + 7 ln(2/δ) / (3 (n - 1)),
    V_n the unbiased sample variance; rescaled here to the range R = hi - lo.
    (Their ln(2/δ) already covers both the mean and the variance deviation.)
    """
    n = int(values.shape[0])
    lo, hi = bounds
    span = hi - lo
    if n < 2 or span <= 0:
        return float("inf") if span > 0 else 0.0
    var = float(np.var(values, ddof=1))
    log_term = math.log(2.0 / delta)
    # Theorem 4 (Maurer & Pontil 2009), variance and range in original units
    return math.sqrt(2.0 * var * log_term / n) + 7.0 * span * log_term / (3.0 * (n - 1))


def bernstein_interval(
    values: np.ndarray, bounds: tuple[float, float], level: float = 0.95
) -> Interval:
    """Two-sided empirical-Bernstein interval (δ/2 on each side), intersected with ``bounds``.

    ``bounds`` must be an a-priori range of every contribution (not the observed
    one): for IPS with rewards in [a, b] and weights <= w_max it is
    [min(0, w_max·a), max(0, w_max·b)].
    """
    level = check_level(level)
    lo, hi = bounds
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise EstimatorError(f"bernstein needs a finite range, got {bounds!r}", field="bounds")
    if values.size and (values.min() < lo - 1e-9 * (1 + abs(lo)) or values.max() > hi + 1e-9 * (1 + abs(hi))):
        raise EstimatorError("contributions fall outside the declared range", field="bounds")
    mean = float(np.mean(values))
    radius = bernstein_radius(values, bounds, (1.0 - level) / 2.0)
    return Interval(max(lo, mean - radius), min(hi, mean + radius), _stderr(values), level, "bernstein")
