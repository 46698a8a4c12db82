r"""Anytime-valid off-policy confidence sequences: look at an evaluation every day, stop when you like.

A confidence interval at level 1 - alpha covers the target's value at *one* sample
size fixed in advance. Looked at after every day's traffic (a scheduled
auto-optimize, a person refreshing a dashboard), "the first day its lower bound
clears the online policy" is a stopping rule the interval was never built for: with
20 looks the chance that some look is a false win is several times alpha
(``tests/analysis/test_sequences.py`` measures it). A *confidence sequence* (C_t)
covers the value at every t simultaneously: P(exists t: V not in C_t) <= alpha.

**Construction** (Waudby-Smith, Wu, Ramdas, Karampatziakis & Mineiro 2022,
"Anytime-valid off-policy inference for contextual bandits", their IPW betting
confidence sequence; the bet is the predictable plug-in of Waudby-Smith & Ramdas
2023, "Estimating means of bounded random variables by betting"). Rewards are rescaled
to [0, 1] with the declared ``reward_range``; phi_i = w_i r_i >= 0 has conditional mean
nu (the target's value) whatever the logging policy did before (it may adapt: the
propensity of event i is known when it is decided). For a candidate value m,

    K_t(m) = prod_{i <= t} (1 + lambda_i(m) (phi_i - m)),        (their eq. 8)
    lambda_i(m) = min(sqrt(2 log(2/alpha) / (s^2_{i-1} i log(i + 1))), c / m),  c = 1/2

with s^2_{i-1} a running variance of phi (predictable: it uses events before i). Each
factor is >= 1 - c > 0, and under m = nu K_t is a non-negative martingale, so by Ville's
inequality P(exists t: K_t(nu) >= 2 / alpha) <= alpha / 2. The lower bound L_t is the
smallest m with K_t(m) < 2/alpha (K_t decreases in m, so the rejected set is [0, L_t)).
The upper bound is one minus the lower bound of the value of 1 - r (phi_i = w_i (1 - r_i),
mean 1 - nu when the target's mass is all on logged-supported candidates). Bounds are
intersected over time (running max of L_t, min of U_t): still valid, never widening.
m runs on a grid of ``grid`` points of [0, 1]; each bound is rounded outwards to it.

The width shrinks like sqrt(log log t / t) (law of the iterated logarithm) instead of
1 / sqrt(t): wider than a fixed-n interval at any one t (about 1.5-2x at a few thousand
events), the price of being allowed to look at all of them.

Cost: O(n x grid) per bound (two (n, grid) passes), fine for the logs one looks at daily.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.estimators import (
    EstimatorError,
    EventData,
    _as_data,
    _check_reward_range,
    _check_target,
    _weights,
)
from analysis.intervals import check_level
from analysis.log import BanditLog

__all__ = ["ConfidenceSequence", "confidence_sequence"]

_TRUNCATION = 0.5  # c in lambda <= c / m: every factor of K_t stays >= 1 - c


@dataclass(frozen=True, eq=False)
class ConfidenceSequence:
    """Anytime-valid bounds on the target's value after each event, in log order.

    Attributes:
        lower: (n,) running lower bounds, non-decreasing (reward units).
        upper: (n,) running upper bounds, non-increasing.
        estimate: (n,) the IPS estimate after each event (the centre one reads).
        level: 1 - alpha: the probability that *every* bound covers the value.
        method: ``betting-ipw``.
    """

    lower: np.ndarray
    upper: np.ndarray
    estimate: np.ndarray
    level: float
    method: str = "betting-ipw"

    @property
    def n(self) -> int:
        return int(self.lower.shape[0])

    def at(self, t: int) -> tuple[float, float]:
        """(lower, upper) after the first ``t`` events (1 <= t <= n)."""
        if not 1 <= t <= self.n:
            raise EstimatorError(f"t must be in [1, {self.n}], got {t}", field="t")
        return float(self.lower[t - 1]), float(self.upper[t - 1])


def _lower_bounds(phi: np.ndarray, alpha_side: float, grid: np.ndarray) -> np.ndarray:
    """(n,) L_t of the betting confidence sequence for the mean of phi >= 0 (module docstring)."""
    n = phi.shape[0]
    t = np.arange(1, n + 1, dtype=np.float64)
    # predictable running mean and variance (Waudby-Smith & Ramdas 2023, eq. 26-27): prior 1/2, 1/4
    mean = (0.5 + np.cumsum(phi)) / (t + 1.0)
    var = (0.25 + np.cumsum((phi - mean) ** 2)) / (t + 1.0)
    var_before = np.concatenate([[0.25], var[:-1]])
    lam = np.sqrt(2.0 * math.log(1.0 / alpha_side) / (var_before * t * np.log(t + 1.0)))  # (n,)
    m = grid[None, :]  # (1, G), m > 0
    lam_m = np.minimum(lam[:, None], _TRUNCATION / m)  # (n, G)
    log_k = np.cumsum(np.log1p(lam_m * (phi[:, None] - m)), axis=0)  # log K_t(m)
    rejected = log_k >= math.log(1.0 / alpha_side)  # Ville: reject m
    # K_t(m) decreases in m: the rejected m form a prefix of the grid; L_t is the last
    # rejected grid point (the bound is rounded down to the grid), 0 when none is
    first_kept = np.where(rejected.all(axis=1), grid.size, np.argmin(rejected, axis=1))
    lower = np.where(first_kept > 0, grid[np.maximum(first_kept - 1, 0)], 0.0)
    return np.maximum.accumulate(lower)


def confidence_sequence(
    log: BanditLog | EventData,
    target_pmf: np.ndarray,
    level: float = 0.95,
    *,
    reward_range: tuple[float, float] = (0.0, 1.0),
    grid: int = 1000,
) -> ConfidenceSequence:
    """The anytime-valid IPW betting confidence sequence of ``target_pmf`` on ``log``, in
    log order (module docstring). Needs rewards inside ``reward_range`` (a-priori bounds)."""
    level = check_level(level)
    if not isinstance(grid, int) or grid < 10:
        raise EstimatorError("grid must be an integer >= 10", field="grid")
    data = _as_data(log, None)
    pi = _check_target(data, target_pmf)
    lo, hi = _check_reward_range(reward_range)
    if data.reward.min() < lo or data.reward.max() > hi:
        raise EstimatorError("a confidence sequence needs every reward inside reward_range", field="reward_range")
    if not data.chosen_only and bool((data.mask & (pi > 0) & (data.logging_pmf <= 0)).any()):
        raise EstimatorError(
            "the target puts mass on candidates the logger never could choose: the upper bound would be "
            "invalid (it needs E[w (1 - r)] = 1 - V)", field="target_pmf",
        )
    r = (data.reward - lo) / (hi - lo)
    w = _weights(data, pi)
    alpha_side = (1.0 - level) / 2.0
    points = (np.arange(1, grid + 1, dtype=np.float64)) / grid  # (0, 1]
    lower = _lower_bounds(w * r, alpha_side, points)
    upper = 1.0 - _lower_bounds(w * (1.0 - r), alpha_side, points)
    upper = np.minimum.accumulate(np.maximum(upper, lower))
    estimate = np.cumsum(w * r) / np.arange(1, data.n + 1)
    return ConfidenceSequence(lo + (hi - lo) * lower, lo + (hi - lo) * upper, lo + (hi - lo) * estimate, level)
