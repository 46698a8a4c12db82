"""Experiment statistics: per-arm results, lifts, corrections, SRM, power, sequential CIs.

The engine never touches a database (the gbstats design). The SQL layer in
``api`` hands over **per-unit sufficient statistics** for each arm (and per
segment, per time bucket) as :class:`ArmStats`; everything here is arithmetic
on those numbers and returns frozen dataclasses.

Unit of analysis
    Decisions of one unit (user or session key) are not independent, and units
    are what is randomised to arms. Every variance is therefore computed over
    units: with ``Y_i`` the reward total and ``X_i`` the decision count of unit
    ``i``,

    * ``reward_per_unit`` is the plain mean ``Ybar`` with sample variance
      ``s_Y^2``;
    * ``reward_per_decision`` is the ratio ``R = Ybar / Xbar``; its variance
      follows from the delta method (Deng, Knoblich & Lu 2018, "Applying the
      Delta Method in Metric Analytics: A Practical Guide with Novel Ideas",
      KDD, ratio metrics)::

          Var(R) ~= (s_Y^2 - 2 R s_XY + R^2 s_X^2) / (n Xbar^2)

      which is the cluster-robust (unit-clustered) variance of the
      decision-level mean. A decision-level test that treats every decision as
      independent is anti-conservative; ``tests/analysis/test_experiments_simulation.py``
      measures by how much.

Tests (two-sided, ``alpha = 1 - level``)
    * ``welch_t``: Welch's unequal-variance t-test on unit-level moments with
      Welch-Satterthwaite degrees of freedom (equals statsmodels
      ``ttest_ind(..., usevar="unequal")`` on the per-unit totals).
      For ``reward_per_decision`` the delta-method variances take the place of
      the sample variances (as gbstats does).
    * ``two_proportion_z``: binary rewards with exactly one decision per unit:
      the pooled two-proportion z-test (statsmodels ``proportions_ztest``);
      the interval of the difference uses the unpooled Wald standard error and
      per-arm intervals are Wilson score intervals.
    * ``sequential_cs``: always-valid inference, see below.

    Relative lift ``(mu_B - mu_A) / |mu_A|`` gets a delta-method variance
    (Deng et al. 2018; gbstats ``TTest.variance``)::

        Var ~= s_B^2 / (mu_A^2 n_B) + s_A^2 mu_B^2 / (mu_A^4 n_A)

    (divided by ``|mu_A|`` so that a positive lift means "higher than control"
    even for negative rewards). The p-value belongs to the absolute difference. Holm's step-down
    correction (Holm 1979) adjusts the p-values across the arms compared with
    control (:func:`holm`, equal to statsmodels ``multipletests(p,
    method="holm")``); intervals are not widened.

Sequential mode
    Asymptotic confidence sequences of Waudby-Smith, Arnold, Wu, Ramdas
    (2023), "Time-uniform central limit theory and asymptotic confidence
    sequences", arXiv:2103.06476v7, as GrowthBook uses them. With ``t`` the
    number of units in the comparison (both arms), ``s2 = t * SE^2`` the
    per-unit variance and ``N`` the planned number of units::

        rho   = sqrt((-2 ln a + ln(-2 ln a + 1)) / N)                           # eq 161
        half  = sqrt(s2) * sqrt(2 (t rho^2 + 1) ln(sqrt(t rho^2 + 1) / a) / (t rho)^2)   # eq 9
        E_t   = exp(rho^2 S_t^2 / (2 (t rho^2 + 1))) / sqrt(t rho^2 + 1),
                S_t^2 = t^2 (est - 0)^2 / s2                                     # eq 155
        p_t   = min(1, 1 / E_t)

    ``p_t < a`` exactly when 0 lies outside the sequence (the two are the same
    boundary). ``rho`` makes the sequence tightest at ``t = N``. No interval
    or p-value is shown before each arm has ``burn_in_units`` units
    (code ``"burn_in"``).

Sample ratio mismatch
    Pearson chi-square of unit counts against ``shares * total`` (scipy
    ``chisquare``), flagged when ``p < srm_threshold`` (0.001) and only once
    every arm has at least ``srm_min_units`` (8) units.

Power
    Normal approximation at the observed per-unit variances and sizes:
    ``MDE = (z_{1-a/2} + z_{power}) * SE``; power to detect ``delta`` is
    ``Phi(delta/SE - z_{1-a/2}) + Phi(-delta/SE - z_{1-a/2})`` (statsmodels
    ``NormalIndPower``); required units at the configured shares solve
    ``SE(M) = delta / (z_{1-a/2} + z_{power})``. Uncorrected alpha.

Guardrails (:func:`guardrail_checks`)
    A guardrail is a per-decision rate where higher is worse (the fallback
    rate: decisions that served the slot's default because the arm's policy
    failed). Per unit ``Y_i`` = its count of such decisions, ``X_i`` = its
    decisions, so the rate is a ratio metric with the delta-method variance
    above (binary per decision: the two-proportion z-test when every unit has
    one decision, else Welch's t). Each arm is tested against control
    **one-sided**, H1: the arm's rate is higher (``p = p_two_sided / 2`` when
    the arm is higher, ``1 - p_two_sided / 2`` otherwise), Holm-corrected
    across the arms like the primary metric; in sequential mode the
    always-valid two-sided p-value is used when the arm is higher
    (conservative). ``worsened`` when the adjusted p-value is below
    ``alpha``: a verdict line says so.

Degeneracy never raises: a result carries ``None`` in the undefined fields
and machine-readable ``codes`` (see :data:`CODES`). Invalid input raises::

    ExperimentError (AnalysisError)   root here (``analysis.errors``); ``field`` names the input
    ├── InvalidStatistics             negative counts, NaN/inf, impossible sums
    ├── InvalidConfig                 AnalysisConfig outside its documented range
    └── InvalidExperiment             shares not summing to 1, unknown control or arm

Time buckets and segments: ``ArmStats.__add__`` is exact when the unit sets
are disjoint. For a time series, bucket units by their **first exposure**
(gbstats does the same) with each unit's totals over the whole window, so
that adding buckets gives the cumulative analysis exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import special

from analysis.errors import ExperimentError, InvalidConfig, InvalidExperiment, InvalidStatistics

__all__ = [
    "CODES",
    "AnalysisConfig",
    "ArmResult",
    "ArmStats",
    "Comparison",
    "ExperimentError",
    "ExperimentResult",
    "GuardrailResult",
    "InvalidConfig",
    "InvalidExperiment",
    "InvalidStatistics",
    "PowerAnalysis",
    "RatioStatistic",
    "SampleMeanStatistic",
    "SampleRatioCheck",
    "SegmentBreakdown",
    "SeriesPoint",
    "TimeSeries",
    "analyze_experiment",
    "analyze_segments",
    "cumulative_series",
    "guardrail_checks",
    "holm",
    "power_analysis",
    "sample_ratio_check",
    "sequential_halfwidth",
    "sequential_p_value",
    "sequential_rho",
    "two_proportion_ztest",
    "welch_ttest",
]

Metric = Literal["reward_per_decision", "reward_per_unit"]

# ----------------------------------------------------------------------------- codes

NO_UNITS = "no_units"
TOO_FEW_UNITS = "too_few_units"
NO_DECISIONS = "no_decisions"
ZERO_VARIANCE = "zero_variance"
CONTROL_MEAN_ZERO = "control_mean_zero"
BURN_IN = "burn_in"
SRM_TOO_FEW_UNITS = "srm_too_few_units"
SAMPLE_RATIO_MISMATCH = "sample_ratio_mismatch"

CODES: Mapping[str, str] = {
    NO_UNITS: "an arm has no units: nothing to estimate",
    TOO_FEW_UNITS: "an arm has fewer than 2 units: no variance",
    NO_DECISIONS: "an arm has units but no decisions: reward per decision undefined",
    ZERO_VARIANCE: "the standard error is 0: no interval or p-value",
    CONTROL_MEAN_ZERO: "the control mean is 0: relative lift undefined",
    BURN_IN: "sequential mode: fewer than burn_in_units units per arm, intervals withheld",
    SRM_TOO_FEW_UNITS: "some arm has fewer than srm_min_units units: SRM not checked yet",
    SAMPLE_RATIO_MISMATCH: "unit counts disagree with the configured shares",
}
"""Every machine-readable code a result can carry, with its meaning."""

_SHARE_TOLERANCE = 1e-6

# ----------------------------------------------------------------------------- errors


def _finite(value: float, name: str, exc: type[ExperimentError]) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise exc(f"{name} must be a number, got {value!r}", field=name) from None
    if not math.isfinite(out):
        raise exc(f"{name} must be finite, got {value!r}", field=name)
    return out


def _count(value: float, name: str) -> int:
    number = _finite(value, name, InvalidStatistics)
    if number < 0:
        raise InvalidStatistics(f"{name} must be >= 0, got {value!r}", field=name)
    if number != int(number):
        raise InvalidStatistics(f"{name} must be a whole number, got {value!r}", field=name)
    return int(number)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class SampleMeanStatistic:
    """``n`` observations by their sum and sum of squares (gbstats ``SampleMeanStatistic``)."""

    n: int
    sum: float
    sum_squares: float

    @property
    def mean(self) -> float:
        return self.sum / self.n if self.n else 0.0

    @property
    def variance(self) -> float:
        """Sample variance ``(sum_squares - sum^2 / n) / (n - 1)``; 0 below 2 observations."""
        if self.n < 2:
            return 0.0
        raw = (self.sum_squares - self.sum * self.sum / self.n) / (self.n - 1)
        scale = self.sum_squares / self.n
        return raw if raw > 1e-12 * scale else 0.0

    def __add__(self, other: SampleMeanStatistic) -> SampleMeanStatistic:
        return SampleMeanStatistic(
            self.n + other.n, self.sum + other.sum, self.sum_squares + other.sum_squares
        )


@dataclass(frozen=True)
class RatioStatistic:
    """A ratio of unit-level sums ``sum(m_i) / sum(d_i)`` over ``n`` units (gbstats ``RatioStatistic``).

    ``variance`` is the per-unit delta-method variance, so that the variance of
    ``mean`` is ``variance / n`` (Deng et al. 2018, ratio metrics)::

        (s_m^2 - 2 R s_md + R^2 s_d^2) / dbar^2
    """

    n: int
    m_sum: float
    m_sum_squares: float
    d_sum: float
    d_sum_squares: float
    m_d_sum_of_products: float

    @property
    def mean(self) -> float:
        return self.m_sum / self.d_sum if self.d_sum else 0.0

    @property
    def variance(self) -> float:
        if self.n < 2 or self.d_sum <= 0:
            return 0.0
        n = self.n
        var_m = (self.m_sum_squares - self.m_sum**2 / n) / (n - 1)
        var_d = (self.d_sum_squares - self.d_sum**2 / n) / (n - 1)
        cov = (self.m_d_sum_of_products - self.m_sum * self.d_sum / n) / (n - 1)
        ratio = self.m_sum / self.d_sum
        mean_d = self.d_sum / n
        linear = var_m - 2.0 * ratio * cov + ratio * ratio * var_d  # Var(m - R d)
        scale = abs(var_m) + ratio * ratio * abs(var_d)
        if linear <= 1e-12 * scale or linear <= 0.0:
            return 0.0
        return linear / (mean_d * mean_d)

    def __add__(self, other: RatioStatistic) -> RatioStatistic:
        return RatioStatistic(
            self.n + other.n,
            self.m_sum + other.m_sum,
            self.m_sum_squares + other.m_sum_squares,
            self.d_sum + other.d_sum,
            self.d_sum_squares + other.d_sum_squares,
            self.m_d_sum_of_products + other.m_d_sum_of_products,
        )


@dataclass(frozen=True)
class ArmStats:
    """Per-unit sufficient statistics of one arm (or one arm in one segment / time bucket).

    With ``Y_i`` the total reward and ``X_i`` the number of decisions of unit ``i``
    (one row per unit exposed to the arm), the SQL layer computes::

        units = count(*), reward_sum = sum(Y), reward_sum_squares = sum(Y^2),
        decisions = sum(X), decisions_sum_squares = sum(X^2),
        reward_decisions_sum_products = sum(Y * X)

    Adding two ``ArmStats`` merges disjoint sets of units.
    """

    units: int
    """Number of units (the unit of analysis)."""
    reward_sum: float
    """Sum over units of the unit's total reward."""
    reward_sum_squares: float
    """Sum over units of the squared total reward."""
    decisions: int
    """Sum over units of the unit's number of decisions."""
    decisions_sum_squares: float
    """Sum over units of the squared number of decisions."""
    reward_decisions_sum_products: float
    """Sum over units of (total reward x number of decisions)."""

    def __post_init__(self) -> None:
        units = _count(self.units, "units")
        decisions = _count(self.decisions, "decisions")
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "decisions", decisions)
        for name in ("reward_sum", "reward_sum_squares", "decisions_sum_squares",
                     "reward_decisions_sum_products"):
            object.__setattr__(self, name, _finite(getattr(self, name), name, InvalidStatistics))
        for name in ("reward_sum_squares", "decisions_sum_squares"):
            if getattr(self, name) < 0:
                raise InvalidStatistics(f"{name} must be >= 0", field=name)
        if units == 0 and (decisions or self.reward_sum or self.reward_sum_squares
                           or self.decisions_sum_squares or self.reward_decisions_sum_products):
            raise InvalidStatistics("sums must be 0 when units is 0", field="units")
        if self.decisions_sum_squares < decisions * (1 - 1e-12):
            raise InvalidStatistics(
                "decisions_sum_squares must be >= decisions (counts are whole numbers)",
                field="decisions_sum_squares",
            )
        # Cauchy-Schwarz: (sum x)^2 <= n sum x^2, and (sum xy)^2 <= sum x^2 sum y^2
        slack = 1e-9
        if self.reward_sum**2 > units * self.reward_sum_squares * (1 + slack) + slack:
            raise InvalidStatistics(
                "reward_sum^2 exceeds units * reward_sum_squares: impossible", field="reward_sum_squares"
            )
        if decisions**2 > units * self.decisions_sum_squares * (1 + slack) + slack:
            raise InvalidStatistics(
                "decisions^2 exceeds units * decisions_sum_squares: impossible",
                field="decisions_sum_squares",
            )
        bound = self.reward_sum_squares * self.decisions_sum_squares
        if self.reward_decisions_sum_products**2 > bound * (1 + slack) + slack:
            raise InvalidStatistics(
                "reward_decisions_sum_products exceeds its Cauchy-Schwarz bound: impossible",
                field="reward_decisions_sum_products",
            )

    @classmethod
    def empty(cls) -> ArmStats:
        return cls(0, 0.0, 0.0, 0, 0.0, 0.0)

    @classmethod
    def from_unit_totals(cls, rewards: Any, decisions: Any) -> ArmStats:
        """Build from per-unit arrays: total reward and number of decisions of each unit."""
        y = np.asarray(rewards, dtype=np.float64)
        x = np.asarray(decisions, dtype=np.float64)
        if y.shape != x.shape or y.ndim != 1:
            raise InvalidStatistics("rewards and decisions must be 1-D arrays of equal length",
                                    field="rewards")
        return cls(
            units=int(y.size),
            reward_sum=float(y.sum()),
            reward_sum_squares=float(np.dot(y, y)),
            decisions=int(x.sum()),
            decisions_sum_squares=float(np.dot(x, x)),
            reward_decisions_sum_products=float(np.dot(y, x)),
        )

    def __add__(self, other: ArmStats) -> ArmStats:
        return ArmStats(
            self.units + other.units,
            self.reward_sum + other.reward_sum,
            self.reward_sum_squares + other.reward_sum_squares,
            self.decisions + other.decisions,
            self.decisions_sum_squares + other.decisions_sum_squares,
            self.reward_decisions_sum_products + other.reward_decisions_sum_products,
        )

    @property
    def per_unit(self) -> SampleMeanStatistic:
        """The reward-per-unit metric."""
        return SampleMeanStatistic(self.units, self.reward_sum, self.reward_sum_squares)

    @property
    def per_decision(self) -> RatioStatistic:
        """The reward-per-decision metric (ratio of unit sums)."""
        return RatioStatistic(
            self.units, self.reward_sum, self.reward_sum_squares, float(self.decisions),
            self.decisions_sum_squares, self.reward_decisions_sum_products,
        )

    @property
    def one_decision_per_unit(self) -> bool:
        return self.units > 0 and self.decisions == self.units and self.decisions_sum_squares == self.units


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AnalysisConfig:
    """How an experiment is analysed. Validated once, in ``__post_init__``."""

    metric: Metric = "reward_per_decision"
    """Primary metric: mean reward per decision (ratio, delta method) or per unit (plain mean)."""
    binary: bool = False
    """Rewards are 0/1 (clicks): two-proportion z-test when each unit has one decision,
    Wilson intervals, and lifts printed in percentage points."""
    level: float = 0.95
    """Confidence level of every interval; the test level is ``alpha = 1 - level``."""
    power: float = 0.8
    """Target power for the MDE and the required sample size."""
    target_relative_lift: float = 0.05
    """Relative lift (0.05 = 5%) whose power and required units are reported."""
    correction: Literal["holm", "none"] = "holm"
    """Multiple-testing correction across the comparisons with control."""
    srm_threshold: float = 0.001
    """Sample ratio mismatch is flagged below this chi-square p-value."""
    srm_min_units: int = 8
    """SRM is checked only once every arm has this many units."""
    sequential: bool = False
    """Always-valid confidence sequences and p-values (safe to peek)."""
    planned_units: int = 10_000
    """Sequential tuning: planned units in the whole experiment; each comparison's
    sequence is tightest when its two arms together reach their share of it."""
    burn_in_units: int = 100
    """Sequential mode: no interval or p-value before every compared arm has this many units."""

    def __post_init__(self) -> None:
        if self.metric not in ("reward_per_decision", "reward_per_unit"):
            raise InvalidConfig(f"unknown metric {self.metric!r}", field="metric")
        if self.correction not in ("holm", "none"):
            raise InvalidConfig(f"unknown correction {self.correction!r}", field="correction")
        for name in ("level", "power", "srm_threshold"):
            value = _finite(getattr(self, name), name, InvalidConfig)
            if not 0.0 < value < 1.0:
                raise InvalidConfig(f"{name} must be in (0, 1), got {value!r}", field=name)
        lift = _finite(self.target_relative_lift, "target_relative_lift", InvalidConfig)
        if lift <= 0:
            raise InvalidConfig("target_relative_lift must be > 0", field="target_relative_lift")
        if _finite(self.planned_units, "planned_units", InvalidConfig) < 1:
            raise InvalidConfig("planned_units must be >= 1", field="planned_units")
        for name in ("burn_in_units", "srm_min_units"):
            if _finite(getattr(self, name), name, InvalidConfig) < 0:
                raise InvalidConfig(f"{name} must be >= 0", field=name)

    @property
    def alpha(self) -> float:
        return 1.0 - self.level


# ----------------------------------------------------------------------------- primitive tests


def _norm_ppf(q: float) -> float:
    return float(special.ndtri(q))


def _norm_cdf(x: float) -> float:
    return float(special.ndtr(x))


def welch_ttest(
    mean_a: float, var_a: float, n_a: int, mean_b: float, var_b: float, n_b: int
) -> tuple[float, float, float]:
    """Welch's t-test of ``mean_b - mean_a``: returns ``(t, dof, two-sided p)``.

    ``var_*`` are per-unit variances (sample variances, or delta-method
    variances of a ratio). Welch-Satterthwaite degrees of freedom (Welch 1947)::

        dof = (v_a/n_a + v_b/n_b)^2 / ((v_a/n_a)^2/(n_a-1) + (v_b/n_b)^2/(n_b-1))

    Requires ``n >= 2`` per arm and a positive standard error.
    """
    qa, qb = var_a / n_a, var_b / n_b
    se = math.sqrt(qa + qb)
    t = (mean_b - mean_a) / se
    dof = (qa + qb) ** 2 / (qa * qa / (n_a - 1) + qb * qb / (n_b - 1))
    p = 2.0 * float(special.stdtr(dof, -abs(t)))
    return t, dof, p


def two_proportion_ztest(x_a: float, n_a: int, x_b: float, n_b: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of ``x_b/n_b - x_a/n_a``: ``(z, two-sided p)``.

    Same as statsmodels ``proportions_ztest([x_b, x_a], [n_b, n_a])``: the
    standard error under H0 uses the pooled proportion
    ``p = (x_a + x_b) / (n_a + n_b)``, ``SE0 = sqrt(p (1 - p) (1/n_a + 1/n_b))``.
    Valid only when the trials are independent (one decision per unit).
    """
    pooled = (x_a + x_b) / (n_a + n_b)
    se0 = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    if se0 <= 0.0:
        return 0.0, 1.0
    z = (x_b / n_b - x_a / n_a) / se0
    return z, 2.0 * _norm_cdf(-abs(z))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order.

    Sorted ascending, ``p_(i)`` becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``;
    equal to statsmodels ``multipletests(p, method="holm")[1]``.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def sequential_rho(alpha: float, planned_n: float) -> float:
    """Mixing parameter that makes the confidence sequence tightest at ``planned_n``.

    ``rho = sqrt((-2 ln a + ln(-2 ln a + 1)) / N)``  (eq 161 in Waudby-Smith et al. 2023).
    """
    log_alpha = math.log(alpha)
    return math.sqrt((-2.0 * log_alpha + math.log(-2.0 * log_alpha + 1.0)) / planned_n)


def sequential_halfwidth(s2: float, n: float, alpha: float, rho: float) -> float:
    """Half-width of the two-sided asymptotic confidence sequence at time ``n``.

    ``sqrt(s2) * sqrt(2 (n rho^2 + 1) ln(sqrt(n rho^2 + 1) / a) / (n rho)^2)``
    (eq 9 in Waudby-Smith et al. 2023); ``s2`` is the per-observation variance
    (``n * SE^2`` for an estimator with standard error ``SE``).
    """
    nr2 = n * rho * rho
    return math.sqrt(s2) * math.sqrt(
        2.0 * (nr2 + 1.0) * math.log(math.sqrt(nr2 + 1.0) / alpha) / (n * rho) ** 2
    )


def sequential_p_value(estimate: float, variance_of_estimate: float, n: float, rho: float) -> float:
    """Always-valid p-value ``min(1, 1/E_n)`` against 0 (eq 155 in Waudby-Smith et al. 2023).

    ``E_n = exp(rho^2 S^2 / (2 (n rho^2 + 1))) / sqrt(n rho^2 + 1)`` with
    ``S^2 = n estimate^2 / variance_of_estimate`` (= ``n^2 est^2 / s2``).
    ``p < a`` exactly when 0 is outside :func:`sequential_halfwidth`'s sequence.
    """
    nr2 = n * rho * rho
    s_squared = n * estimate * estimate / variance_of_estimate
    log_e = rho * rho * s_squared / (2.0 * (nr2 + 1.0)) - 0.5 * math.log(nr2 + 1.0)
    return 1.0 if log_e <= 0.0 else math.exp(-log_e)


# ----------------------------------------------------------------------------- results


Interval = tuple[float, float]


@dataclass(frozen=True)
class ArmResult:
    """One arm: size, both metrics' point values, and the primary metric with its interval."""

    arm: str
    units: int
    decisions: int
    share_configured: float
    share_observed: float | None
    reward_per_decision: float | None
    reward_per_unit: float | None
    mean: float | None
    """Primary metric (``AnalysisConfig.metric``)."""
    stderr: float | None
    ci: Interval | None
    method: str
    """"wilson", "t", or "sequential_cs"."""
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PowerAnalysis:
    """What the current sample can detect (normal approximation, uncorrected alpha)."""

    alpha: float
    target_power: float
    target_relative_lift: float
    mde_absolute: float | None
    mde_relative: float | None
    power_at_target: float | None
    """Power to detect ``target_relative_lift`` at the current sizes."""
    required_units_control: int | None
    required_units_arm: int | None
    additional_units_per_arm: int | None
    """max over the two arms of (required - current), never below 0."""
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Comparison:
    """One arm against control on the primary metric."""

    arm: str
    control: str
    method: str
    """"welch_t", "two_proportion_z" or "sequential_cs"."""
    absolute_lift: float | None
    absolute_ci: Interval | None
    relative_lift: float | None
    relative_ci: Interval | None
    stderr: float | None
    statistic: float | None
    dof: float | None
    p_value: float | None
    p_value_adjusted: float | None
    significant: bool
    power: PowerAnalysis
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleRatioCheck:
    """Chi-square of unit counts against the configured shares."""

    statistic: float | None
    p_value: float | None
    observed: Mapping[str, int]
    expected: Mapping[str, float]
    mismatch: bool
    codes: tuple[str, ...] = ()


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise TypeError(f"not JSON-ready: {type(value).__name__}")


@dataclass(frozen=True)
class ExperimentResult:
    """The analysis of one experiment (or one segment of it)."""

    control: str
    metric: Metric
    binary: bool
    level: float
    sequential: bool
    correction: str
    arms: tuple[ArmResult, ...]
    comparisons: tuple[Comparison, ...]
    srm: SampleRatioCheck
    verdicts: tuple[str, ...]
    """Plain-language lines for a growth team, most important first."""

    def comparison(self, arm: str) -> Comparison:
        for item in self.comparisons:
            if item.arm == arm:
                return item
        raise KeyError(arm)

    def arm(self, arm: str) -> ArmResult:
        for item in self.arms:
            if item.arm == arm:
                return item
        raise KeyError(arm)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain Python types only, ``None`` where a value is undefined."""
        out: dict[str, Any] = _jsonable(self)
        return out


# ----------------------------------------------------------------------------- analysis core


@dataclass(frozen=True)
class _Moments:
    mean: float
    variance: float  # per unit: Var(mean) = variance / n
    n: int


def _moments(stats: ArmStats, config: AnalysisConfig) -> _Moments:
    if config.metric == "reward_per_unit":
        s = stats.per_unit
        return _Moments(s.mean, s.variance, s.n)
    r = stats.per_decision
    return _Moments(r.mean, r.variance, r.n)


def _proportion_case(a: ArmStats, b: ArmStats, config: AnalysisConfig) -> bool:
    return config.binary and a.one_decision_per_unit and b.one_decision_per_unit


def _metric_codes(stats: ArmStats, config: AnalysisConfig) -> list[str]:
    if stats.units == 0:
        return [NO_UNITS]
    if config.metric == "reward_per_decision" and stats.decisions == 0:
        return [NO_DECISIONS]
    return []


def _t_quantile(level: float, dof: float) -> float:
    return float(special.stdtrit(dof, 0.5 + level / 2.0))


def _arm_result(
    name: str, stats: ArmStats, share: float, total_units: int, config: AnalysisConfig
) -> ArmResult:
    codes = _metric_codes(stats, config)
    base = ArmResult(
        arm=name, units=stats.units, decisions=stats.decisions, share_configured=share,
        share_observed=stats.units / total_units if total_units else None,
        reward_per_decision=stats.reward_sum / stats.decisions if stats.decisions else None,
        reward_per_unit=stats.reward_sum / stats.units if stats.units else None,
        mean=None, stderr=None, ci=None, method="sequential_cs" if config.sequential else "t",
    )
    if codes:
        return dataclasses.replace(base, codes=tuple(codes))
    m = _moments(stats, config)
    n = m.n
    stderr = math.sqrt(m.variance / n)
    base = dataclasses.replace(base, mean=m.mean, stderr=stderr)
    if config.sequential:
        if n < max(config.burn_in_units, 2):
            return dataclasses.replace(base, codes=(BURN_IN,))
        if m.variance <= 0:
            return dataclasses.replace(base, codes=(ZERO_VARIANCE,))
        rho = sequential_rho(config.alpha, config.planned_units * share)  # eq 161
        half = sequential_halfwidth(m.variance, n, config.alpha, rho)  # eq 9, one sample
        return dataclasses.replace(base, ci=(m.mean - half, m.mean + half))
    if config.binary and stats.one_decision_per_unit:
        # Wilson score interval (Wilson 1927), as proportion_confint(method="wilson")
        z = _norm_ppf(0.5 + config.level / 2.0)
        p = m.mean
        denom = 1.0 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        return dataclasses.replace(base, stderr=math.sqrt(p * (1 - p) / n),
                                   ci=(centre - half, centre + half), method="wilson")
    if n < 2:
        return dataclasses.replace(base, stderr=None, codes=(TOO_FEW_UNITS,))
    if m.variance <= 0:
        return dataclasses.replace(base, codes=(ZERO_VARIANCE,))
    half = _t_quantile(config.level, n - 1) * stderr
    return dataclasses.replace(base, ci=(m.mean - half, m.mean + half))


def _power(
    ma: _Moments, mb: _Moments, share_a: float, share_b: float, config: AnalysisConfig
) -> PowerAnalysis:
    alpha = config.alpha
    base = PowerAnalysis(alpha, config.power, config.target_relative_lift,
                         None, None, None, None, None, None)
    if ma.n < 2 or mb.n < 2:
        return dataclasses.replace(base, codes=(TOO_FEW_UNITS,))
    se = math.sqrt(ma.variance / ma.n + mb.variance / mb.n)
    if se <= 0:
        return dataclasses.replace(base, codes=(ZERO_VARIANCE,))
    z_alpha = _norm_ppf(1.0 - alpha / 2.0)
    z_power = _norm_ppf(config.power)
    mde = (z_alpha + z_power) * se
    if ma.mean == 0:
        return dataclasses.replace(base, mde_absolute=mde, codes=(CONTROL_MEAN_ZERO,))
    effect = config.target_relative_lift * abs(ma.mean)
    # two-sided power, normal approximation (as statsmodels NormalIndPower)
    power = _norm_cdf(effect / se - z_alpha) + _norm_cdf(-effect / se - z_alpha)
    q_a = share_a / (share_a + share_b)
    q_b = share_b / (share_a + share_b)
    # SE(M)^2 = v_a / (q_a M) + v_b / (q_b M) = (effect / (z_alpha + z_power))^2
    pair_total = (z_alpha + z_power) ** 2 * (ma.variance / q_a + mb.variance / q_b) / effect**2
    req_a = math.ceil(q_a * pair_total - 1e-9)
    req_b = math.ceil(q_b * pair_total - 1e-9)
    return dataclasses.replace(
        base, mde_absolute=mde, mde_relative=mde / abs(ma.mean), power_at_target=power,
        required_units_control=req_a, required_units_arm=req_b,
        additional_units_per_arm=max(0, req_a - ma.n, req_b - mb.n),
    )


def power_analysis(
    control: ArmStats,
    arm: ArmStats,
    *,
    control_share: float = 0.5,
    arm_share: float = 0.5,
    config: AnalysisConfig = AnalysisConfig(),  # noqa: B008 - frozen, immutable default
) -> PowerAnalysis:
    """MDE, power at ``config.target_relative_lift`` and required units for one comparison.

    The same numbers as ``Comparison.power``; call with
    ``dataclasses.replace(config, target_relative_lift=x)`` for another effect.
    Shares only set the allocation between the two arms (need not sum to 1).
    """
    for name, share in (("control_share", control_share), ("arm_share", arm_share)):
        if not _finite(share, name, InvalidExperiment) > 0:
            raise InvalidExperiment(f"{name} must be > 0", field=name)
    codes = sorted(set(_metric_codes(control, config) + _metric_codes(arm, config)))
    if codes:
        return PowerAnalysis(config.alpha, config.power, config.target_relative_lift,
                             None, None, None, None, None, None, tuple(codes))
    ma, mb = _moments(control, config), _moments(arm, config)
    if _proportion_case(control, arm, config):
        ma = _Moments(ma.mean, ma.mean * (1 - ma.mean), ma.n)
        mb = _Moments(mb.mean, mb.mean * (1 - mb.mean), mb.n)
    return _power(ma, mb, control_share, arm_share, config)


def _comparison(
    name: str, control: str, a: ArmStats, b: ArmStats, share_a: float, share_b: float,
    config: AnalysisConfig,
) -> Comparison:
    proportions = _proportion_case(a, b, config)
    method = "sequential_cs" if config.sequential else ("two_proportion_z" if proportions else "welch_t")
    codes = sorted(set(_metric_codes(a, config) + _metric_codes(b, config)))
    if codes:
        empty = PowerAnalysis(config.alpha, config.power, config.target_relative_lift,
                              None, None, None, None, None, None, tuple(codes))
        return Comparison(name, control, method, None, None, None, None, None, None, None,
                          None, None, False, empty, tuple(codes))
    ma, mb = _moments(a, config), _moments(b, config)
    if proportions:
        # Bernoulli variance p (1 - p) for the unpooled Wald interval
        ma = _Moments(ma.mean, ma.mean * (1 - ma.mean), ma.n)
        mb = _Moments(mb.mean, mb.mean * (1 - mb.mean), mb.n)
    power = _power(ma, mb, share_a, share_b, config)
    diff = mb.mean - ma.mean
    # relative to |control| so that a positive lift always means "arm higher than control"
    relative = diff / abs(ma.mean) if ma.mean != 0 else None
    if ma.mean == 0:
        codes.append(CONTROL_MEAN_ZERO)
    var_diff = ma.variance / ma.n + mb.variance / mb.n
    # delta method for the relative lift (Deng et al. 2018; gbstats TTest.variance)
    var_rel = (
        mb.variance / (ma.mean**2 * mb.n) + ma.variance * mb.mean**2 / (ma.mean**4 * ma.n)
        if ma.mean != 0 else None
    )

    def neutral(extra: str, stderr: float | None) -> Comparison:
        return Comparison(name, control, method, diff, None, relative, None, stderr, None,
                          None, None, None, False, power, tuple(sorted(set(codes + [extra]))))

    if ma.n < 2 or mb.n < 2:
        return neutral(TOO_FEW_UNITS, None)
    if config.sequential and min(ma.n, mb.n) < config.burn_in_units:
        return neutral(BURN_IN, math.sqrt(var_diff))
    if var_diff <= 0:
        return neutral(ZERO_VARIANCE, 0.0)
    se = math.sqrt(var_diff)
    rel_ci: Interval | None = None
    if config.sequential:
        n = ma.n + mb.n
        rho = sequential_rho(config.alpha, config.planned_units * (share_a + share_b))  # eq 161
        half = sequential_halfwidth(var_diff * n, n, config.alpha, rho)  # eq 9, s2 = n SE^2
        p = sequential_p_value(diff, var_diff, n, rho)  # eq 155
        if relative is not None and var_rel is not None and var_rel > 0:
            rel_half = sequential_halfwidth(var_rel * n, n, config.alpha, rho)
            rel_ci = (relative - rel_half, relative + rel_half)
        return Comparison(name, control, method, diff, (diff - half, diff + half), relative,
                          rel_ci, se, diff / se, None, p, p, p < config.alpha, power, tuple(codes))
    if proportions:
        statistic, p = two_proportion_ztest(a.reward_sum, a.units, b.reward_sum, b.units)
        dof = None
        quantile = _norm_ppf(0.5 + config.level / 2.0)
    else:
        statistic, dof_value, p = welch_ttest(ma.mean, ma.variance, ma.n, mb.mean, mb.variance, mb.n)
        dof = dof_value
        quantile = _t_quantile(config.level, dof_value)
    half = quantile * se
    if relative is not None and var_rel is not None and var_rel > 0:
        rel_half = quantile * math.sqrt(var_rel)
        rel_ci = (relative - rel_half, relative + rel_half)
    return Comparison(name, control, method, diff, (diff - half, diff + half), relative, rel_ci,
                      se, statistic, dof, p, p, p < config.alpha, power, tuple(codes))


def sample_ratio_check(
    units: Mapping[str, int], shares: Mapping[str, float], *, threshold: float = 0.001,
    min_units: int = 8,
) -> SampleRatioCheck:
    """Pearson chi-square of observed unit counts against ``shares * total``.

    ``statistic = sum (o - e)^2 / e`` with ``k - 1`` degrees of freedom (as
    ``scipy.stats.chisquare(o, e)`` with ``sum(e) == sum(o)``). ``mismatch``
    only when every arm has ``min_units`` units and ``p < threshold``.
    """
    observed = {arm: int(units.get(arm, 0)) for arm in shares}
    total = sum(observed.values())
    expected = {arm: shares[arm] * total for arm in shares}
    if len(shares) < 2 or min(observed.values()) < min_units or total == 0:
        return SampleRatioCheck(None, None, observed, expected, False, (SRM_TOO_FEW_UNITS,))
    statistic = sum((observed[a] - expected[a]) ** 2 / expected[a] for a in shares)
    p = float(special.chdtrc(len(shares) - 1, statistic))
    mismatch = p < threshold
    return SampleRatioCheck(statistic, p, observed, expected, mismatch,
                            (SAMPLE_RATIO_MISMATCH,) if mismatch else ())


def _validate(
    arms: Mapping[str, ArmStats], control: str, shares: Mapping[str, float], config: AnalysisConfig
) -> dict[str, float]:
    if not isinstance(config, AnalysisConfig):
        raise InvalidConfig("config must be an AnalysisConfig", field="config")
    clean: dict[str, float] = {}
    for arm, share in shares.items():
        value = _finite(share, f"shares.{arm}", InvalidExperiment)
        if value <= 0:
            raise InvalidExperiment(f"share of arm {arm!r} must be > 0, got {share!r}",
                                    field=f"shares.{arm}")
        clean[str(arm)] = value
    if len(clean) < 2:
        raise InvalidExperiment("an experiment needs at least 2 arms in shares", field="shares")
    total = math.fsum(clean.values())
    if abs(total - 1.0) > _SHARE_TOLERANCE:
        raise InvalidExperiment(f"shares must sum to 1, got {total:.6g}", field="shares")
    if control not in clean:
        raise InvalidExperiment(f"control {control!r} is not an arm in shares", field="control")
    for arm, stats in arms.items():
        if arm not in clean:
            raise InvalidExperiment(f"arm {arm!r} has statistics but no share", field=f"arms.{arm}")
        if not isinstance(stats, ArmStats):
            raise InvalidStatistics(f"arms.{arm} must be ArmStats", field=f"arms.{arm}")
        if config.binary and not 0.0 <= stats.reward_sum <= stats.decisions:
            raise InvalidStatistics(
                f"binary rewards need 0 <= reward_sum <= decisions (arm {arm!r})",
                field=f"arms.{arm}.reward_sum",
            )
    return clean


def _analyze(
    arms: Mapping[str, ArmStats], control: str, shares: Mapping[str, float], config: AnalysisConfig
) -> tuple[tuple[ArmResult, ...], list[Comparison], SampleRatioCheck]:
    clean = _validate(arms, control, shares, config)
    full = {arm: arms.get(arm, ArmStats.empty()) for arm in clean}
    total = sum(s.units for s in full.values())
    arm_results = tuple(_arm_result(a, full[a], clean[a], total, config) for a in clean)
    comparisons = [
        _comparison(a, control, full[control], full[a], clean[control], clean[a], config)
        for a in clean if a != control
    ]
    srm = sample_ratio_check({a: s.units for a, s in full.items()}, clean,
                             threshold=config.srm_threshold, min_units=config.srm_min_units)
    return arm_results, comparisons, srm


def _adjust(comparisons: list[Comparison], config: AnalysisConfig) -> list[Comparison]:
    """Holm across the comparisons that have a p-value; significance from adjusted p."""
    tested = [i for i, c in enumerate(comparisons) if c.p_value is not None]
    raw = [float(comparisons[i].p_value or 0.0) for i in tested]
    adjusted = holm(raw) if config.correction == "holm" else raw
    out = list(comparisons)
    for i, p in zip(tested, adjusted, strict=True):
        out[i] = dataclasses.replace(out[i], p_value_adjusted=p, significant=p < config.alpha)
    return out


# ----------------------------------------------------------------------------- verdicts


def _format_p(p: float) -> str:
    if p >= 0.1:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    if p < 1e-16:
        return "< 1e-16"
    mantissa, exponent = f"{p:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _decimals(width: float, low: int, high: int) -> int:
    if width <= 0 or not math.isfinite(width):
        return low
    return min(high, max(low, -math.floor(math.log10(width))))


def _format_lift(value: float, ci: Interval | None, percent_points: bool) -> str:
    scale = 100.0 if percent_points else 1.0
    unit = " pp" if percent_points else ""
    half = (ci[1] - ci[0]) / 2 * scale if ci else abs(value) * scale
    d = _decimals(half, 1 if percent_points else 0, 4 if percent_points else 6)
    text = f"{value * scale:+.{d}f}{unit}"
    if ci:
        text += f" [{ci[0] * scale:.{d}f}, {ci[1] * scale:.{d}f}]"
    return text


def _verdicts(
    comparisons: Sequence[Comparison], srm: SampleRatioCheck, config: AnalysisConfig,
    percent_points: bool, prefix: str = "", family: int | None = None,
) -> tuple[str, ...]:
    lines: list[str] = []
    if srm.mismatch and srm.p_value is not None:
        lines.append(f"{prefix}sample ratio mismatch (p = {_format_p(srm.p_value)}): "
                     "do not trust this report")
    tested = family if family is not None else sum(1 for c in comparisons if c.p_value is not None)
    corrected = " after correction" if config.correction == "holm" and tested > 1 else ""
    always = " (always valid)" if config.sequential else ""
    for c in comparisons:
        if c.p_value is None or c.p_value_adjusted is None or c.absolute_lift is None:
            blocking = [code for code in c.codes if code != CONTROL_MEAN_ZERO] or list(c.codes)
            lines.append(f"{prefix}arm {c.arm}: cannot be compared yet ({', '.join(blocking)})")
            continue
        lift = _format_lift(c.absolute_lift, c.absolute_ci, percent_points)
        p = _format_p(c.p_value_adjusted)
        if c.significant and c.absolute_lift > 0:
            lines.append(f"{prefix}arm {c.arm} beats {c.control} by {lift}, p = {p}{corrected}{always}")
        elif c.significant:
            lines.append(f"{prefix}arm {c.arm} is worse than {c.control} by {lift}, "
                         f"p = {p}{corrected}{always}")
        else:
            lines.append(f"{prefix}arm {c.arm}: no significant difference ({lift}, p = {p}"
                         f"{corrected}){always}")
            pw = c.power
            if (pw.power_at_target is not None and pw.power_at_target < config.power
                    and pw.additional_units_per_arm):
                lines.append(
                    f"{prefix}arm {c.arm}: needs ~{pw.additional_units_per_arm} more units per arm "
                    f"to detect a {config.target_relative_lift * 100:g}% relative lift"
                )
    return tuple(lines)


def _percent_points(arms: Mapping[str, ArmStats], config: AnalysisConfig) -> bool:
    if not config.binary:
        return False
    if config.metric == "reward_per_decision":
        return True
    return all(s.one_decision_per_unit for s in arms.values() if s.units)


# ----------------------------------------------------------------------------- public entry points


def analyze_experiment(
    arms: Mapping[str, ArmStats],
    *,
    control: str,
    shares: Mapping[str, float],
    config: AnalysisConfig = AnalysisConfig(),  # noqa: B008 - frozen, immutable default
) -> ExperimentResult:
    """Analyse one experiment from per-arm sufficient statistics.

    Args:
        arms: arm name -> :class:`ArmStats`; arms in ``shares`` but missing here count
            as 0 units.
        control: the control arm (must be in ``shares``).
        shares: configured traffic share of every arm; positive, summing to 1.
        config: metric, level, power target, sequential settings.

    Returns:
        Per-arm results, one :class:`Comparison` per non-control arm (Holm-adjusted
        across arms), the SRM check and verdict lines.

    Raises:
        InvalidExperiment, InvalidStatistics, InvalidConfig (see module docstring).
    """
    arm_results, comparisons, srm = _analyze(arms, control, shares, config)
    adjusted = _adjust(comparisons, config)
    verdicts = _verdicts(adjusted, srm, config, _percent_points(arms, config))
    return ExperimentResult(control, config.metric, config.binary, config.level,
                            config.sequential, config.correction, arm_results,
                            tuple(adjusted), srm, verdicts)


@dataclass(frozen=True)
class SegmentBreakdown:
    """One dimension (device type, country, day part) split into segments.

    ``results[segment]`` is a full :class:`ExperimentResult` whose
    ``p_value_adjusted`` is Holm-corrected across all (segment x arm)
    comparisons of the dimension.
    """

    dimension: str
    results: Mapping[str, ExperimentResult]
    comparisons_corrected: int

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(self)
        return out


def analyze_segments(
    segments: Mapping[str, Mapping[str, ArmStats]],
    *,
    dimension: str,
    control: str,
    shares: Mapping[str, float],
    config: AnalysisConfig = AnalysisConfig(),  # noqa: B008 - frozen, immutable default
) -> SegmentBreakdown:
    """The same analysis per segment of one dimension, one Holm family for the dimension.

    Args:
        segments: segment value (e.g. "mobile") -> arm name -> :class:`ArmStats`.
        dimension: the dimension's name (e.g. "device_type"), used in verdicts.
        control, shares, config: as in :func:`analyze_experiment`. The SRM check is
            made per segment with the experiment's shares (targeting never
            depends on the segment, so a mismatch inside one is a real signal).
    """
    parts = {seg: _analyze(arms, control, shares, config) for seg, arms in segments.items()}
    flat = [(seg, c) for seg, (_, comps, _) in parts.items() for c in comps]
    adjusted = _adjust([c for _, c in flat], config)
    by_segment: dict[str, list[Comparison]] = {seg: [] for seg in parts}
    for (seg, _), c in zip(flat, adjusted, strict=True):
        by_segment[seg].append(c)
    family = sum(1 for c in adjusted if c.p_value is not None)
    results: dict[str, ExperimentResult] = {}
    for seg, (arm_results, _, srm) in parts.items():
        comps = by_segment[seg]
        verdicts = _verdicts(comps, srm, config, _percent_points(segments[seg], config),
                             prefix=f"{dimension} = {seg}: ", family=family)
        results[seg] = ExperimentResult(control, config.metric, config.binary, config.level,
                                        config.sequential, config.correction, arm_results,
                                        tuple(comps), srm, verdicts)
    return SegmentBreakdown(dimension, results, family)


@dataclass(frozen=True)
class GuardrailResult:
    """One arm against control on a guardrail rate (higher is worse), tested one-sided."""

    metric: str
    arm: str
    control: str
    value: float | None
    """The arm's rate per decision."""
    control_value: float | None
    difference: float | None
    """``value - control_value``."""
    ci: Interval | None
    """Two-sided interval of the difference at ``config.level``."""
    method: str
    p_value: float | None
    """One-sided, H1: the arm's rate is higher than control's."""
    p_value_adjusted: float | None
    worsened: bool
    """The arm's rate is significantly higher (adjusted one-sided p < alpha)."""
    codes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(self)
        return out


GUARDRAIL_LABELS: Mapping[str, str] = {"fallback_rate": "fallback rate"}


def _format_rate(value: float) -> str:
    """A rate in percent: one decimal from 0.1% up, else two significant digits."""
    return f"{value * 100:.1f}%" if value >= 0.001 or value == 0 else f"{value * 100:.2g}%"


def guardrail_checks(
    arms: Mapping[str, ArmStats],
    *,
    metric: str,
    control: str,
    shares: Mapping[str, float],
    config: AnalysisConfig = AnalysisConfig(),  # noqa: B008 - frozen, immutable default
) -> tuple[tuple[GuardrailResult, ...], tuple[str, ...]]:
    """Test every arm's guardrail rate against control's (see the module docstring) and say which worsened.

    Args:
        arms: arm name -> :class:`ArmStats` whose "reward" is the guardrail count: per unit, ``Y_i`` its
            decisions that count against the guardrail (e.g. served the fallback), ``X_i`` its decisions.
        metric: the guardrail's name (``"fallback_rate"``), used in results and verdicts.
        control, shares, config: as in :func:`analyze_experiment`; ``config.metric`` and ``binary``
            are ignored (a guardrail is a rate per decision of 0/1 events).

    Returns:
        One :class:`GuardrailResult` per non-control arm, and verdict lines for those that worsened, e.g.
        ``"guardrail fallback rate worsened in arm B: 2.1% vs 0.4%, p = 0.001"``.
    """
    rate = dataclasses.replace(config, metric="reward_per_decision", binary=True)
    clean = _validate(arms, control, shares, rate)
    full = {arm: arms.get(arm, ArmStats.empty()) for arm in clean}
    raw: list[GuardrailResult] = []
    for arm in clean:
        if arm == control:
            continue
        c = _comparison(arm, control, full[control], full[arm], clean[control], clean[arm], rate)
        p = c.p_value
        if p is not None and c.absolute_lift is not None:
            if config.sequential:  # the always-valid p is two-sided: conservative for the one-sided question
                p = p if c.absolute_lift > 0 else 1.0
            else:
                p = p / 2.0 if c.absolute_lift > 0 else 1.0 - p / 2.0
        a, b = full[control], full[arm]
        raw.append(GuardrailResult(
            metric, arm, control, b.reward_sum / b.decisions if b.decisions else None,
            a.reward_sum / a.decisions if a.decisions else None, c.absolute_lift, c.absolute_ci, c.method,
            p, None, False, c.codes))
    tested = [i for i, g in enumerate(raw) if g.p_value is not None]
    values = [float(raw[i].p_value or 0.0) for i in tested]
    adjusted = holm(values) if config.correction == "holm" else values
    results = list(raw)
    for i, p in zip(tested, adjusted, strict=True):
        g = raw[i]
        results[i] = dataclasses.replace(g, p_value_adjusted=p, worsened=bool(
            p < config.alpha and g.difference is not None and g.difference > 0))
    corrected = " after correction" if config.correction == "holm" and len(tested) > 1 else ""
    always = " (always valid)" if config.sequential else ""
    label = GUARDRAIL_LABELS.get(metric, metric.replace("_", " "))
    verdicts = tuple(
        f"guardrail {label} worsened in arm {g.arm}: {_format_rate(g.value or 0.0)} vs "
        f"{_format_rate(g.control_value or 0.0)}, p = {_format_p(g.p_value_adjusted or 0.0)}{corrected}{always}"
        for g in results if g.worsened
    )
    return tuple(results), verdicts


@dataclass(frozen=True)
class SeriesPoint:
    """Cumulative result of one arm up to and including one time bucket."""

    bucket: str
    arm: str
    units: int
    decisions: int
    mean: float | None
    ci: Interval | None
    absolute_lift: float | None
    """None for control."""
    absolute_ci: Interval | None
    p_value: float | None
    """Unadjusted p-value of this arm against control at this point."""
    codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimeSeries:
    """Cumulative per-arm means (and lifts) over time buckets, for the dashboard chart."""

    control: str
    metric: Metric
    points: tuple[SeriesPoint, ...]

    def for_arm(self, arm: str) -> tuple[SeriesPoint, ...]:
        return tuple(p for p in self.points if p.arm == arm)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _jsonable(self)
        return out


def cumulative_series(
    buckets: Sequence[tuple[str, Mapping[str, ArmStats]]],
    *,
    control: str,
    shares: Mapping[str, float],
    config: AnalysisConfig = AnalysisConfig(),  # noqa: B008 - frozen, immutable default
) -> TimeSeries:
    """Cumulative per-arm means with intervals after each bucket, in bucket order.

    Args:
        buckets: ``(label, {arm: ArmStats})`` in time order, units bucketed by their
            first exposure (so that adding buckets is exact; see module docstring).
        control, shares, config: as in :func:`analyze_experiment`. In sequential mode
            the intervals are confidence sequences, valid at every point at once.
    """
    running: dict[str, ArmStats] = {arm: ArmStats.empty() for arm in shares}
    points: list[SeriesPoint] = []
    for label, arms in buckets:
        for arm, stats in arms.items():
            running[arm] = running.get(arm, ArmStats.empty()) + stats
        arm_results, comparisons, _ = _analyze(running, control, shares, config)
        by_arm = {c.arm: c for c in comparisons}
        for r in arm_results:
            c = by_arm.get(r.arm)
            codes = tuple(sorted(set(r.codes) | set(c.codes if c else ())))
            points.append(SeriesPoint(
                label, r.arm, r.units, r.decisions, r.mean, r.ci,
                c.absolute_lift if c else None, c.absolute_ci if c else None,
                c.p_value if c else None, codes,
            ))
    return TimeSeries(control, config.metric, tuple(points))

