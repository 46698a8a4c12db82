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

**Logs that know only the chosen propensity** (``meta["logging_pmf"] ==
"chosen_only"``, the Open Bandit Dataset's "bts" campaign): sum_i p_ia is
not computable, but a Horvitz-Thompson (1952) check is. With p_i = mu_{i,a_i}
the logged propensity of the chosen action and

    S_a = sum_i 1[a_i = a] / p_i,        n_a = #{i : a is a candidate in event i},

E[1[a_i = a] / p_i] = mu_ia / mu_ia = 1 for every event where mu_ia > 0, so
E[S_a] = n_a when the propensities are right and every candidate had positive
probability. Each term has Var = mu_ia (1 / mu_ia)^2 - 1 = 1/mu_ia - 1, so

    Var[S_a] = sum_i (1/mu_ia - 1)                      (mu_ia unknown unless chosen),
    V_a = sum_{i: a_i = a} (1 - p_i) / p_i^2             (its HT estimate: E[V_a] = Var[S_a]),
    z_a = (S_a - n_a) / sqrt(n_a V_a / S_a).

The variance used is the ratio (Hajek) form n_a V_a / S_a, not V_a itself:
it estimates the same quantity (V_a / S_a estimates the average of
1/mu_ia - 1 per candidate event), is not pulled towards 0 when an action
happens to be chosen rarely, and for a propensity that is constant per action
it is exact, n_a (1 - p) / p, so that z_a is then *identical* to the full-pmf
z above ((c - n_a p) / sqrt(n_a p (1 - p)) with c choices). The row reports the
check in choice units: observed = c, expected = c n_a / S_a (the choices the
logged propensities imply), variance = c^2 n_a V_a / S_a^3, and
z = (observed - expected) / sqrt(variance) equals z_a. Logged propensities
that are too small (e.g. halved) make S_a too large and the row is flagged;
too large, the reverse. A deficit also appears when a candidate had
probability 0 in some events (the check then also tests positivity, which
IPS needs anyway). An action never chosen gives no information on its
propensities: its row has observed = expected = z = 0. Verified by seeded
simulation in ``tests/analysis/test_health_compare.py`` (z ~ N(0, 1) with
context-dependent pmfs; halved propensities flagged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from analysis.estimators import EstimatorError, action_codes
from analysis.log import BanditLog

__all__ = ["HealthRow", "LoggingHealth", "check_logging"]


@dataclass(frozen=True)
class HealthRow:
    """Observed vs expected choices of one action (within one arm; arm "" = whole log).

    ``check`` is ``"pmf"`` (expected = sum of the logged probabilities) or
    ``"inverse_propensity"`` (chosen-only logs: the Horvitz-Thompson check of the
    module docstring, expressed in choice units).
    """

    arm: str
    action: str
    observed: int
    expected: float
    variance: float
    z: float
    flagged: bool
    check: Literal["pmf", "inverse_propensity"] = "pmf"


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


def _inverse_propensity_rows(
    arm: str, codes: np.ndarray, propensity: np.ndarray, chosen_codes: np.ndarray, names: list[object],
    threshold: float,
) -> list[HealthRow]:
    """Horvitz-Thompson rows for chosen-only logs (module docstring)."""
    k = len(names)
    candidates = np.bincount(codes[codes >= 0], minlength=k).astype(np.float64)  # n_a
    inverse = 1.0 / propensity
    chosen = np.bincount(chosen_codes, minlength=k)  # c
    total = np.bincount(chosen_codes, weights=inverse, minlength=k)  # S_a = sum 1[a_i = a] / p_i
    spread = np.bincount(chosen_codes, weights=(1.0 - propensity) * inverse * inverse, minlength=k)  # V_a
    rows = []
    for a in np.flatnonzero(candidates > 0):
        c, n_a, s_a, v_a = int(chosen[a]), float(candidates[a]), float(total[a]), float(spread[a])
        if c == 0:  # never chosen: nothing is known of its propensities
            rows.append(HealthRow(arm, str(names[a]), 0, 0.0, 0.0, 0.0, False, "inverse_propensity"))
            continue
        expected = c * n_a / s_a  # choices implied by the logged propensities
        variance = c * c * n_a * v_a / s_a**3  # Hajek variance n_a V_a / S_a in choice units
        diff = s_a - n_a
        if v_a > 0:
            z = diff / math.sqrt(n_a * v_a / s_a)  # z_a = (S_a - n_a) / sqrt(n_a V_a / S_a)
        else:  # every choice had p = 1
            z = 0.0 if abs(diff) < 1e-9 else math.copysign(math.inf, diff)
        rows.append(
            HealthRow(arm, str(names[a]), c, expected, variance, z, abs(z) > threshold, "inverse_propensity")
        )
    return rows


def check_logging(log: BanditLog, threshold: float = 4.0, by_arm: bool = True) -> LoggingHealth:
    """Observed vs expected choice counts per action (and per (arm, action) pair).

    For logs with ``meta["logging_pmf"] == "chosen_only"`` the rows are the
    inverse-propensity (Horvitz-Thompson) check of the module docstring.

    Args:
        log: the logged decisions.
        threshold: flag rows with |z| above it.
        by_arm: also check each arm of the log separately (when arms are named).
    """
    if not (math.isfinite(threshold) and threshold > 0):
        raise EstimatorError(f"threshold must be positive, got {threshold!r}", field="threshold")
    codes, names = action_codes(log.action_ids, log.action_mask)
    chosen_codes = codes[np.arange(log.n), log.chosen]
    chosen_only = log.meta.get("logging_pmf") == "chosen_only"
    propensity = log.propensity
    if chosen_only:
        rows = _inverse_propensity_rows("", codes, propensity, chosen_codes, names, threshold)
    else:
        rows = _rows("", codes, log.logging_pmf, chosen_codes, names, threshold)
    if by_arm and log.n:
        arms = np.asarray(log.arms).astype(str)
        distinct = sorted(set(arms.tolist()) - {""})
        if len(distinct) > 1 or (len(distinct) == 1 and (arms == "").any()):
            for arm in distinct:
                rows_in = arms == arm
                if chosen_only:
                    rows += _inverse_propensity_rows(
                        arm, codes[rows_in], propensity[rows_in], chosen_codes[rows_in], names, threshold
                    )
                else:
                    rows += _rows(
                        arm, codes[rows_in], log.logging_pmf[rows_in], chosen_codes[rows_in], names, threshold
                    )
    return LoggingHealth(tuple(rows), float(threshold), log.n)
