r"""Logging-health check: are the logged propensities the probabilities actually used?

Every off-policy estimate divides by the logged propensity, so a logger that
records the wrong probability (a pmf computed before a filter, a stale model
version, a sampling bug) silently biases every offline result. Agarwal et al.
(2016, "Making Contextual Decisions with Low Technical Debt", the Decision
Service paper, §4) list wrong propensities among the most common and most
damaging failures of deployed bandit loops and recommend checking them
continuously.

The check: for an action a (a block id), the number of times it was chosen is
a sum of independent Bernoulli(p_ia) draws, one per event where it was a
candidate, so

    E[obs_a] = sum_i p_ia,     Var[obs_a] = sum_i p_ia (1 - p_ia),
    z_a = (obs_a - E[obs_a]) / sqrt(Var[obs_a])

is approximately standard normal when the logged pmfs are right (Lyapunov
CLT). A row is flagged when |z| > ``threshold`` (default 4: two-sided
p = 6e-5 per row, so a few hundred rows rarely raise a false alarm). Rows are
computed for every action over the whole log and, when the log has arms, for
every (arm, action) pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from analysis.estimators import EstimatorError, action_codes
from analysis.log import BanditLog

__all__ = ["HealthRow", "LoggingHealth", "check_logging"]


@dataclass(frozen=True)
class HealthRow:
    """Observed vs expected choices of one action (within one arm; arm "" = whole log)."""

    arm: str
    action: str
    observed: int
    expected: float
    variance: float
    z: float
    flagged: bool


@dataclass(frozen=True)
class LoggingHealth:
    """Result of :func:`check_logging`."""

    rows: tuple[HealthRow, ...]
    threshold: float
    n: int

    @property
    def flagged(self) -> tuple[HealthRow, ...]:
        return tuple(row for row in self.rows if row.flagged)

    @property
    def ok(self) -> bool:
        return not self.flagged

    @property
    def max_abs_z(self) -> float:
        return max((abs(row.z) for row in self.rows), default=0.0)


def _rows(
    arm: str, codes: np.ndarray, pmf: np.ndarray, chosen_codes: np.ndarray, names: list[object], threshold: float
) -> list[HealthRow]:
    k = len(names)
    valid = codes >= 0
    flat = codes[valid]
    p = pmf[valid]
    expected = np.bincount(flat, weights=p, minlength=k)
    variance = np.bincount(flat, weights=p * (1.0 - p), minlength=k)
    observed = np.bincount(chosen_codes, minlength=k)
    present = np.bincount(flat, minlength=k) > 0
    rows = []
    for a in np.flatnonzero(present):
        diff = float(observed[a] - expected[a])
        if variance[a] > 0:
            z = diff / math.sqrt(variance[a])  # z = (obs - E) / sqrt(sum p (1 - p))
        else:
            z = 0.0 if abs(diff) < 1e-9 else math.copysign(math.inf, diff)
        rows.append(
            HealthRow(arm, str(names[a]), int(observed[a]), float(expected[a]), float(variance[a]), z, abs(z) > threshold)
        )
    return rows


def check_logging(log: BanditLog, threshold: float = 4.0, by_arm: bool = True) -> LoggingHealth:
    """Observed vs expected choice counts per action (and per (arm, action) pair).

    Args:
        log: the logged decisions.
        threshold: flag rows with |z| above it.
        by_arm: also check each arm of the log separately (when arms are named).
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise EstimatorError(f"threshold must be positive, got {threshold!r}", field="threshold")
    codes, names = action_codes(log.action_ids, log.action_mask)
    chosen_codes = codes[np.arange(log.n), log.chosen]
    rows = _rows("", codes, log.logging_pmf, chosen_codes, names, threshold)
    if by_arm and log.n:
        arms = np.asarray(log.arms).astype(str)
        distinct = sorted(set(arms.tolist()) - {""})
        if len(distinct) > 1 or (len(distinct) == 1 and (arms == "").any()):
            for arm in distinct:
                rows_in = arms == arm
                rows += _rows(arm, codes[rows_in], log.logging_pmf[rows_in], chosen_codes[rows_in], names, threshold)
    return LoggingHealth(tuple(rows), float(threshold), log.n)
