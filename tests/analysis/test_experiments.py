"""Golden numbers, degeneracy codes, invalid inputs and report shape of ``analysis.experiments``.

Every reference value is computed here from raw per-unit (or per-decision)
arrays with statsmodels/scipy, then the engine is fed only the sufficient
statistics of those arrays.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import scipy.stats
import statsmodels.api as sm
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, tt_ind_solve_power
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind

from analysis.experiments import (
    CODES,
    AnalysisConfig,
    ArmStats,
    ExperimentError,
    InvalidConfig,
    InvalidExperiment,
    InvalidStatistics,
    analyze_experiment,
    analyze_segments,
    cumulative_series,
    guardrail_checks,
    holm,
    power_analysis,
    sample_ratio_check,
    sequential_halfwidth,
    sequential_p_value,
    sequential_rho,
    two_proportion_ztest,
)

PLACES = 5
HALF = {"control": 0.5, "B": 0.5}


def unit_data(seed: int, n: int, p: float, mean_count: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit reward totals and decision counts: heterogeneous Bernoulli units."""
    rng = np.random.default_rng(seed)
    counts = 1 + rng.poisson(mean_count - 1, n)
    rates = rng.beta(1.0, (1.0 - p) / p, n)
    return rng.binomial(counts, rates).astype(float), counts.astype(float)


def assert_close(actual: float | None, expected: float, places: int = PLACES) -> None:
    assert actual is not None
    assert round(actual - expected, places) == 0, (actual, expected)


# ----------------------------------------------------------------------------- sufficient statistics


def test_arm_stats_add_equals_concatenation() -> None:
    y1, x1 = unit_data(1, 300, 0.1)
    y2, x2 = unit_data(2, 200, 0.1)
    merged = ArmStats.from_unit_totals(y1, x1) + ArmStats.from_unit_totals(y2, x2)
    whole = ArmStats.from_unit_totals(np.r_[y1, y2], np.r_[x1, x2])
    assert merged.units == whole.units == 500
    assert merged.decisions == whole.decisions
    for name in ("reward_sum", "reward_sum_squares", "decisions_sum_squares",
                 "reward_decisions_sum_products"):
        assert math.isclose(getattr(merged, name), getattr(whole, name), rel_tol=1e-12)
    y = np.r_[y1, y2]
    assert_close(whole.per_unit.mean, y.mean(), 12)
    assert_close(whole.per_unit.variance, y.var(ddof=1), 10)
    assert_close(whole.per_decision.mean, y.sum() / np.r_[x1, x2].sum(), 12)


# ----------------------------------------------------------------------------- golden numbers


def test_welch_per_unit_matches_statsmodels_unequal_variance() -> None:
    ya, xa = unit_data(3, 400, 0.10)
    yb, xb = unit_data(4, 250, 0.06, mean_count=6.0)  # unequal sizes and variances
    arms = {"control": ArmStats.from_unit_totals(ya, xa), "B": ArmStats.from_unit_totals(yb, xb)}
    result = analyze_experiment(arms, control="control", shares=HALF,
                                config=AnalysisConfig(metric="reward_per_unit", srm_threshold=1e-9))
    c = result.comparison("B")
    t_ref, p_ref, dof_ref = ttest_ind(yb, ya, usevar="unequal")
    low, high = CompareMeans(DescrStatsW(yb), DescrStatsW(ya)).tconfint_diff(usevar="unequal")
    assert c.method == "welch_t"
    assert_close(c.statistic, t_ref)
    assert_close(c.p_value, p_ref)
    assert_close(c.dof, dof_ref)
    assert c.absolute_ci is not None
    assert_close(c.absolute_ci[0], low)
    assert_close(c.absolute_ci[1], high)
    assert_close(c.absolute_lift, yb.mean() - ya.mean())
    # the trap: the pooled default gives a different answer on these arrays
    t_pooled, p_pooled, _ = ttest_ind(yb, ya)
    assert abs(t_pooled - t_ref) > 0.05 and abs(p_pooled - p_ref) > 1e-3
    # per-arm t interval
    arm = result.arm("B")
    assert arm.ci is not None
    ref = DescrStatsW(yb).tconfint_mean(alpha=0.05)
    assert_close(arm.ci[0], ref[0])
    assert_close(arm.ci[1], ref[1])
    # relative lift: delta method written out independently
    ma, mb = ya.mean(), yb.mean()
    var_rel = yb.var(ddof=1) / (ma**2 * yb.size) + ya.var(ddof=1) * mb**2 / (ma**4 * ya.size)
    half = scipy.stats.t.ppf(0.975, dof_ref) * math.sqrt(var_rel)
    assert c.relative_ci is not None
    assert_close(c.relative_lift, mb / ma - 1)
    assert_close(c.relative_ci[0], mb / ma - 1 - half)
    assert_close(c.relative_ci[1], mb / ma - 1 + half)


def test_per_decision_delta_method_equals_unit_clustered_regression() -> None:
    """Reward per decision: delta-method SE^2 * (n-1)/n equals OLS with unit-clustered SE."""
    n = 300
    ya, xa = unit_data(5, n, 0.10)
    yb, xb = unit_data(6, n, 0.12)
    arms = {"control": ArmStats.from_unit_totals(ya, xa), "B": ArmStats.from_unit_totals(yb, xb)}
    result = analyze_experiment(arms, control="control", shares=HALF, config=AnalysisConfig())
    c = result.comparison("B")

    # expand to one row per decision, with a binary reward, clustered by unit
    rows_r, rows_t, rows_g = [], [], []
    for arm_index, (y, x) in enumerate(((ya, xa), (yb, xb))):
        for unit, (total, count) in enumerate(zip(y.astype(int), x.astype(int), strict=True)):
            rows_r += [1.0] * total + [0.0] * (count - total)
            rows_t += [float(arm_index)] * count
            rows_g += [arm_index * n + unit] * count
    design = sm.add_constant(np.asarray(rows_t))
    fit = sm.OLS(np.asarray(rows_r), design).fit(
        cov_type="cluster", cov_kwds={"groups": np.asarray(rows_g), "use_correction": False}
    )
    assert_close(c.absolute_lift, fit.params[1])
    assert c.stderr is not None
    assert_close(c.stderr**2 * (n - 1) / n, fit.bse[1] ** 2, 8)
    # the naive decision-level SE is smaller: clustering matters on this data
    naive = sm.OLS(np.asarray(rows_r), design).fit()
    assert naive.bse[1] < 0.9 * c.stderr

    # per-arm: linearised residuals e_i = y_i - R x_i, Var(R) = var(e) / (n xbar^2)
    ratio = yb.sum() / xb.sum()
    se = math.sqrt(np.var(yb - ratio * xb, ddof=1) / (n * xb.mean() ** 2))
    arm = result.arm("B")
    assert_close(arm.mean, ratio)
    assert_close(arm.stderr, se)
    assert arm.ci is not None
    assert_close(arm.ci[1], ratio + scipy.stats.t.ppf(0.975, n - 1) * se)


def test_two_proportion_z_and_wilson_when_one_decision_per_unit() -> None:
    rng = np.random.default_rng(7)
    ra, rb = rng.binomial(1, 0.10, 3000), rng.binomial(1, 0.12, 2800)
    arms = {"control": ArmStats.from_unit_totals(ra, np.ones_like(ra)),
            "B": ArmStats.from_unit_totals(rb, np.ones_like(rb))}
    result = analyze_experiment(arms, control="control", shares=HALF,
                                config=AnalysisConfig(binary=True, level=0.9))
    c = result.comparison("B")
    z_ref, p_ref = proportions_ztest([rb.sum(), ra.sum()], [rb.size, ra.size])
    assert c.method == "two_proportion_z"
    assert_close(c.statistic, z_ref)
    assert_close(c.p_value, p_ref)
    low, high = confint_proportions_2indep(rb.sum(), rb.size, ra.sum(), ra.size,
                                           method="wald", compare="diff", alpha=0.1)
    assert c.absolute_ci is not None
    assert_close(c.absolute_ci[0], low)
    assert_close(c.absolute_ci[1], high)
    for name, r in (("control", ra), ("B", rb)):
        ci = result.arm(name).ci
        ref = proportion_confint(r.sum(), r.size, alpha=0.1, method="wilson")
        assert ci is not None and result.arm(name).method == "wilson"
        assert_close(ci[0], ref[0])
        assert_close(ci[1], ref[1])
    z, p = two_proportion_ztest(ra.sum(), ra.size, rb.sum(), rb.size)
    assert_close(z, z_ref)
    assert_close(p, p_ref)


def test_holm_matches_multipletests_and_is_applied_across_arms() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert np.allclose(holm(p), multipletests(p, method="holm")[1], atol=1e-12)
    shares = {"control": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}
    arms = {name: ArmStats.from_unit_totals(*unit_data(10 + i, 800, 0.1 + 0.01 * i))
            for i, name in enumerate(shares)}
    result = analyze_experiment(arms, control="control", shares=shares, config=AnalysisConfig())
    raw = [c.p_value for c in result.comparisons]
    ref = multipletests(raw, method="holm")[1]
    for c, expected in zip(result.comparisons, ref, strict=True):
        assert_close(c.p_value_adjusted, expected, 12)
        assert c.significant == (expected < 0.05)
    plain = analyze_experiment(arms, control="control", shares=shares,
                               config=AnalysisConfig(correction="none"))
    assert [c.p_value_adjusted for c in plain.comparisons] == raw


def test_srm_matches_scipy_chisquare_and_waits_for_min_units() -> None:
    shares = {"control": 0.5, "B": 0.3, "C": 0.2}
    counts = {"control": 5120, "B": 2890, "C": 1990}
    total = sum(counts.values())
    ref = scipy.stats.chisquare([counts[a] for a in shares], [shares[a] * total for a in shares])
    check = sample_ratio_check(counts, shares)
    assert_close(check.statistic, ref.statistic)
    assert_close(check.p_value, ref.pvalue, 12)
    assert not check.mismatch
    bad = sample_ratio_check({"control": 5400, "B": 2700, "C": 1900}, shares)
    assert bad.mismatch and bad.codes == ("sample_ratio_mismatch",)
    early = sample_ratio_check({"control": 7, "B": 40, "C": 40}, shares)
    assert early.p_value is None and not early.mismatch and early.codes == ("srm_too_few_units",)


def test_power_mde_and_required_units_match_normal_ind_power() -> None:
    ya, xa = unit_data(20, 1500, 0.10)
    yb = ya[::-1] + 0.05  # same per-unit variance, shifted mean
    arms = {"control": ArmStats.from_unit_totals(ya, xa), "B": ArmStats.from_unit_totals(yb, xa)}
    config = AnalysisConfig(metric="reward_per_unit", target_relative_lift=0.1)
    power = analyze_experiment(arms, control="control", shares=HALF, config=config).comparison("B").power
    sd = ya.std(ddof=1)
    effect = 0.1 * ya.mean() / sd
    engine = NormalIndPower()
    assert_close(power.power_at_target, engine.power(effect, nobs1=1500, alpha=0.05, ratio=1.0))
    mde_d = engine.solve_power(effect_size=None, nobs1=1500, alpha=0.05, power=0.8, ratio=1.0)
    assert_close(power.mde_absolute, mde_d * sd)
    assert_close(power.mde_relative, mde_d * sd / ya.mean())
    needed = engine.solve_power(effect_size=effect, nobs1=None, alpha=0.05, power=0.8, ratio=1.0)
    assert power.required_units_arm == power.required_units_control == math.ceil(needed)
    assert power.additional_units_per_arm == max(0, math.ceil(needed) - 1500)
    # the t-based solver agrees to within a unit or two at this size
    assert abs(tt_ind_solve_power(effect_size=effect, alpha=0.05, power=0.8) - needed) < 2
    # unequal shares: 25% control, 75% arm (statsmodels ratio = nobs2 / nobs1)
    skew = {"control": 0.25, "B": 0.75}
    p2 = analyze_experiment(arms, control="control", shares=skew,
                            config=AnalysisConfig(metric="reward_per_unit", target_relative_lift=0.1,
                                                  srm_threshold=1e-300)).comparison("B").power
    n_control = engine.solve_power(effect_size=effect, nobs1=None, alpha=0.05, power=0.8, ratio=3.0)
    assert p2.required_units_control == math.ceil(n_control)
    assert abs(p2.required_units_arm - 3 * n_control) <= 1  # type: ignore[operator]
    # the standalone helper gives the same numbers, for any effect
    alone = power_analysis(arms["control"], arms["B"], control_share=0.25, arm_share=0.75,
                           config=AnalysisConfig(metric="reward_per_unit", target_relative_lift=0.1))
    assert alone == p2
    other = power_analysis(arms["control"], arms["B"],
                           config=AnalysisConfig(metric="reward_per_unit", target_relative_lift=0.03))
    assert_close(other.power_at_target,
                 engine.power(0.03 * ya.mean() / sd, nobs1=1500, alpha=0.05, ratio=1.0))


def test_sequential_matches_waudby_smith_formulas() -> None:
    """Asymptotic CS (eq 9), rho (eq 161), p-value (eq 155) written out independently."""
    alpha, planned = 0.05, 4000
    rho = math.sqrt((-2 * math.log(alpha) + math.log(-2 * math.log(alpha) + 1)) / planned)
    assert_close(sequential_rho(alpha, planned), rho, 12)
    ya, xa = unit_data(30, 900, 0.10)
    yb, xb = unit_data(31, 1100, 0.115)
    arms = {"control": ArmStats.from_unit_totals(ya, xa), "B": ArmStats.from_unit_totals(yb, xb)}
    config = AnalysisConfig(metric="reward_per_unit", sequential=True, planned_units=planned,
                            burn_in_units=50, srm_threshold=1e-12)
    c = analyze_experiment(arms, control="control", shares=HALF, config=config).comparison("B")
    n = 2000
    var_diff = ya.var(ddof=1) / 900 + yb.var(ddof=1) / 1100
    s2 = var_diff * n
    half = math.sqrt(s2) * math.sqrt(
        2 * (n * rho**2 + 1) * math.log(math.sqrt(n * rho**2 + 1) / alpha) / (n * rho) ** 2
    )
    diff = yb.mean() - ya.mean()
    e_value = math.exp(rho**2 * (n**2 * diff**2 / s2) / (2 * (n * rho**2 + 1))) / math.sqrt(
        n * rho**2 + 1
    )
    assert c.method == "sequential_cs"
    assert c.absolute_ci is not None
    assert_close(c.absolute_ci[0], diff - half)
    assert_close(c.absolute_ci[1], diff + half)
    assert_close(c.p_value, min(1.0, 1.0 / e_value))
    # the sequence is wider than the fixed-horizon interval at the same data
    fixed = analyze_experiment(arms, control="control", shares=HALF,
                               config=AnalysisConfig(metric="reward_per_unit", srm_threshold=1e-12))
    assert fixed.comparison("B").absolute_ci is not None
    width_fixed = fixed.comparison("B").absolute_ci[1] - fixed.comparison("B").absolute_ci[0]  # type: ignore[index]
    assert 2 * half > 1.2 * width_fixed


@pytest.mark.parametrize("estimate", np.linspace(0.0, 0.2, 41))
def test_sequential_p_value_below_alpha_exactly_when_zero_outside_sequence(estimate: float) -> None:
    var, n, alpha = 0.0009, 1500.0, 0.05
    rho = sequential_rho(alpha, 3000)
    half = sequential_halfwidth(var * n, n, alpha, rho)
    p = sequential_p_value(estimate, var, n, rho)
    if abs(abs(estimate) - half) > 1e-9:
        assert (p < alpha) == (abs(estimate) > half)


def test_sequential_burn_in_withholds_intervals() -> None:
    arms = {"control": ArmStats.from_unit_totals(*unit_data(40, 60, 0.1)),
            "B": ArmStats.from_unit_totals(*unit_data(41, 60, 0.1))}
    result = analyze_experiment(arms, control="control", shares=HALF,
                                config=AnalysisConfig(sequential=True, burn_in_units=100))
    c = result.comparison("B")
    assert c.codes == ("burn_in",) and c.absolute_ci is None and c.p_value is None
    assert not c.significant and c.absolute_lift is not None
    assert all(a.ci is None and a.codes == ("burn_in",) for a in result.arms)
    assert result.verdicts == ("arm B: cannot be compared yet (burn_in)",)


# ----------------------------------------------------------------------------- degeneracy


def stats(units: int, rewards: float, decisions: int | None = None) -> ArmStats:
    """Units with one decision each and ``rewards`` of them rewarded 1."""
    d = units if decisions is None else decisions
    return ArmStats(units, rewards, rewards, d, float(d), rewards)


DEGENERATE: list[tuple[str, dict[str, ArmStats], AnalysisConfig, tuple[str, ...]]] = [
    ("missing arm", {"control": stats(50, 5)}, AnalysisConfig(), ("no_units",)),
    ("empty control", {"control": stats(0, 0), "B": stats(50, 5)}, AnalysisConfig(), ("no_units",)),
    ("one unit", {"control": stats(1, 1), "B": stats(50, 5)}, AnalysisConfig(), ("too_few_units",)),
    ("no decisions", {"control": ArmStats(50, 0, 0, 0, 0, 0), "B": stats(50, 5)},
     AnalysisConfig(), ("no_decisions",)),
    ("constant rewards", {"control": stats(50, 50), "B": stats(60, 60)}, AnalysisConfig(),
     ("zero_variance",)),
    ("control all zero", {"control": stats(50, 0), "B": stats(50, 0)},
     AnalysisConfig(binary=True), ("control_mean_zero", "zero_variance")),
]


@pytest.mark.parametrize(("name", "arms", "config", "codes"), DEGENERATE, ids=[d[0] for d in DEGENERATE])
def test_degenerate_inputs_give_neutral_results_with_codes(
    name: str, arms: dict[str, ArmStats], config: AnalysisConfig, codes: tuple[str, ...]
) -> None:
    result = analyze_experiment(arms, control="control", shares=HALF, config=config)
    c = result.comparison("B")
    assert c.codes == codes
    assert all(code in CODES for code in c.codes)
    assert c.p_value is None and c.p_value_adjusted is None and c.absolute_ci is None
    assert not c.significant
    json.dumps(result.to_dict(), allow_nan=False)
    assert any("cannot be compared yet" in line for line in result.verdicts)


def test_control_mean_zero_keeps_the_absolute_test() -> None:
    rng = np.random.default_rng(8)
    rb = rng.binomial(1, 0.05, 400)
    arms = {"control": stats(400, 0), "B": ArmStats.from_unit_totals(rb, np.ones(400))}
    c = analyze_experiment(arms, control="control", shares=HALF,
                           config=AnalysisConfig(binary=True)).comparison("B")
    assert c.codes == ("control_mean_zero",)
    assert c.relative_lift is None and c.relative_ci is None
    assert c.p_value is not None and c.absolute_ci is not None
    assert c.power.codes == ("control_mean_zero",) and c.power.mde_absolute is not None


# ----------------------------------------------------------------------------- invalid inputs

GOOD = {"control": stats(100, 10), "B": stats(100, 12)}

INVALID: list[tuple[str, Callable[[], Any], type[ExperimentError], str]] = [
    ("shares sum 0.9", lambda: analyze_experiment(GOOD, control="control", shares={"control": 0.5, "B": 0.4}),
     InvalidExperiment, r"shares must sum to 1, got 0\.9"),
    ("share zero", lambda: analyze_experiment(GOOD, control="control", shares={"control": 1.0, "B": 0.0}),
     InvalidExperiment, r"share of arm 'B' must be > 0"),
    ("share NaN", lambda: analyze_experiment(GOOD, control="control", shares={"control": 0.5, "B": math.nan}),
     InvalidExperiment, r"shares\.B must be finite"),
    ("single arm", lambda: analyze_experiment(GOOD, control="control", shares={"control": 1.0}),
     InvalidExperiment, r"at least 2 arms"),
    ("unknown control", lambda: analyze_experiment(GOOD, control="A", shares=HALF),
     InvalidExperiment, r"control 'A' is not an arm"),
    ("arm without share", lambda: analyze_experiment({**GOOD, "C": stats(5, 1)}, control="control", shares=HALF),
     InvalidExperiment, r"arm 'C' has statistics but no share"),
    ("level 1", lambda: AnalysisConfig(level=1.0), InvalidConfig, r"level must be in \(0, 1\)"),
    ("level 0", lambda: AnalysisConfig(level=0.0), InvalidConfig, r"level must be in \(0, 1\)"),
    ("level NaN", lambda: AnalysisConfig(level=math.nan), InvalidConfig, r"level must be finite"),
    ("power 1.5", lambda: AnalysisConfig(power=1.5), InvalidConfig, r"power must be in \(0, 1\)"),
    ("metric", lambda: AnalysisConfig(metric="clicks"), InvalidConfig, r"unknown metric 'clicks'"),  # type: ignore[arg-type]
    ("correction", lambda: AnalysisConfig(correction="bonferroni"), InvalidConfig, r"unknown correction"),  # type: ignore[arg-type]
    ("target lift", lambda: AnalysisConfig(target_relative_lift=0.0), InvalidConfig, r"target_relative_lift must be > 0"),
    ("planned units", lambda: AnalysisConfig(planned_units=0), InvalidConfig, r"planned_units must be >= 1"),
    ("burn-in", lambda: AnalysisConfig(burn_in_units=-1), InvalidConfig, r"burn_in_units must be >= 0"),
    ("config type", lambda: analyze_experiment(GOOD, control="control", shares=HALF, config={}),  # type: ignore[arg-type]
     InvalidConfig, r"config must be an AnalysisConfig"),
    ("negative units", lambda: ArmStats(-1, 0, 0, 0, 0, 0), InvalidStatistics, r"units must be >= 0"),
    ("fractional units", lambda: ArmStats(2.5, 0, 0, 0, 0, 0), InvalidStatistics, r"units must be a whole number"),  # type: ignore[arg-type]
    ("negative decisions", lambda: ArmStats(3, 0, 0, -2, 0, 0), InvalidStatistics, r"decisions must be >= 0"),
    ("NaN reward", lambda: ArmStats(3, math.nan, 1, 3, 3, 1), InvalidStatistics, r"reward_sum must be finite"),
    ("inf squares", lambda: ArmStats(3, 1, math.inf, 3, 3, 1), InvalidStatistics, r"reward_sum_squares must be finite"),
    ("negative squares", lambda: ArmStats(3, 0, -1, 3, 3, 0), InvalidStatistics, r"reward_sum_squares must be >= 0"),
    ("impossible squares", lambda: ArmStats(4, 10, 20, 4, 4, 10), InvalidStatistics, r"reward_sum\^2 exceeds"),
    ("impossible counts", lambda: ArmStats(4, 1, 1, 10, 20, 1), InvalidStatistics, r"decisions\^2 exceeds"),
    ("counts below decisions", lambda: ArmStats(3, 1, 1, 6, 5, 1), InvalidStatistics,
     r"decisions_sum_squares must be >= decisions"),
    ("sums without units", lambda: ArmStats(0, 1, 1, 0, 0, 0), InvalidStatistics, r"sums must be 0 when units is 0"),
    ("text", lambda: ArmStats(3, "x", 1, 3, 3, 1), InvalidStatistics, r"reward_sum must be a number"),  # type: ignore[arg-type]
    ("binary above decisions", lambda: analyze_experiment(
        {"control": ArmStats(3, 5, 9, 3, 3, 5), "B": stats(3, 1)}, control="control", shares=HALF,
        config=AnalysisConfig(binary=True)), InvalidStatistics, r"binary rewards need 0 <= reward_sum <= decisions"),
    ("arrays", lambda: ArmStats.from_unit_totals([1.0, 2.0], [1.0]), InvalidStatistics, r"equal length"),
]


@pytest.mark.parametrize(("name", "call", "exception", "message"), INVALID, ids=[row[0] for row in INVALID])
def test_invalid_inputs_raise_documented_errors(
    name: str, call: Callable[[], Any], exception: type[ExperimentError], message: str
) -> None:
    with pytest.raises(exception, match=message) as info:
        call()
    assert isinstance(info.value, ExperimentError) and isinstance(info.value, ValueError)
    assert info.value.field


# ----------------------------------------------------------------------------- verdicts and JSON


def binary_arms(seed: int, sizes: dict[str, int], rates: dict[str, float]) -> dict[str, ArmStats]:
    rng = np.random.default_rng(seed)
    out = {}
    for arm, n in sizes.items():
        r = rng.binomial(1, rates[arm], n)
        out[arm] = ArmStats.from_unit_totals(r, np.ones(n))
    return out


def test_verdict_lines() -> None:
    shares = {"control": 1 / 3, "B": 1 / 3, "C": 1 / 3}
    arms = binary_arms(50, {"control": 20000, "B": 20000, "C": 20000},
                       {"control": 0.10, "B": 0.12, "C": 0.10})
    result = analyze_experiment(arms, control="control", shares=shares,
                                config=AnalysisConfig(binary=True))
    b, c = result.comparison("B"), result.comparison("C")
    assert b.significant and not c.significant
    assert re.fullmatch(r"arm B beats control by \+\d\.\d pp \[\d\.\d, \d\.\d\], p = \d(\.\d+)?e-\d+ after correction",
                        result.verdicts[0]), result.verdicts
    assert re.fullmatch(r"arm C: no significant difference \([+-]\d\.\d pp \[-\d\.\d, \d\.\d\], p = 0\.\d+ after correction\)",
                        result.verdicts[1]), result.verdicts
    assert re.fullmatch(r"arm C: needs ~\d+ more units per arm to detect a 5% relative lift", result.verdicts[2])
    more = int(re.findall(r"~(\d+)", result.verdicts[2])[0])
    assert more == c.power.additional_units_per_arm and more > 0

    worse = binary_arms(51, {"control": 20000, "B": 20000}, {"control": 0.12, "B": 0.10})
    line = analyze_experiment(worse, control="control", shares=HALF,
                              config=AnalysisConfig(binary=True)).verdicts[0]
    assert line.startswith("arm B is worse than control by -") and "after correction" not in line

    srm = binary_arms(52, {"control": 10000, "B": 9000}, {"control": 0.1, "B": 0.1})
    lines = analyze_experiment(srm, control="control", shares=HALF, config=AnalysisConfig(binary=True)).verdicts
    assert re.fullmatch(r"sample ratio mismatch \(p = \de-\d+\): do not trust this report", lines[0])

    continuous = {"control": ArmStats.from_unit_totals(*unit_data(53, 3000, 0.1)),
                  "B": ArmStats.from_unit_totals(*unit_data(54, 3000, 0.1))}
    cont = analyze_experiment(continuous, control="control", shares=HALF,
                              config=AnalysisConfig(metric="reward_per_unit")).verdicts[0]
    assert "pp" not in cont and cont.startswith("arm B: no significant difference (")


def test_to_dict_is_plain_json() -> None:
    arms = binary_arms(60, {"control": 500, "B": 520}, {"control": 0.1, "B": 0.1})
    arms["C"] = ArmStats.empty()
    result = analyze_experiment(arms, control="control", shares={"control": 0.4, "B": 0.4, "C": 0.2},
                                config=AnalysisConfig(binary=True))
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text) == data

    def walk(value: Any) -> None:
        assert type(value) in (dict, list, str, int, float, bool, type(None)), type(value)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(data)
    assert data["comparisons"][1]["codes"] == ["no_units"]
    assert data["comparisons"][1]["p_value"] is None
    assert data["srm"]["codes"] == ["srm_too_few_units"]
    assert set(data) == {"control", "metric", "binary", "level", "sequential", "correction",
                         "arms", "comparisons", "srm", "verdicts"}


# ----------------------------------------------------------------------------- segments and time series


def test_segments_share_one_holm_family() -> None:
    shares = {"control": 0.5, "B": 0.25, "C": 0.25}
    segments = {
        "mobile": binary_arms(70, {"control": 4000, "B": 2000, "C": 2000},
                              {"control": 0.10, "B": 0.13, "C": 0.10}),
        "desktop": binary_arms(71, {"control": 3000, "B": 1500, "C": 1500},
                               {"control": 0.10, "B": 0.10, "C": 0.11}),
        "tablet": {"control": stats(30, 3), "B": stats(20, 2)},  # C has no units here
    }
    breakdown = analyze_segments(segments, dimension="device_type", control="control",
                                 shares=shares, config=AnalysisConfig(binary=True))
    flat = [c for seg in ("mobile", "desktop", "tablet")
            for c in breakdown.results[seg].comparisons]
    tested = [c for c in flat if c.p_value is not None]
    assert breakdown.comparisons_corrected == len(tested) == 5
    ref = multipletests([c.p_value for c in tested], method="holm")[1]
    for c, expected in zip(tested, ref, strict=True):
        assert_close(c.p_value_adjusted, expected, 12)
    assert breakdown.results["tablet"].comparison("C").codes == ("no_units",)
    single = analyze_experiment(segments["mobile"], control="control", shares=shares,
                                config=AnalysisConfig(binary=True))
    assert single.comparison("B").p_value == breakdown.results["mobile"].comparison("B").p_value
    in_family = breakdown.results["mobile"].comparison("B").p_value_adjusted
    alone = single.comparison("B").p_value_adjusted
    assert in_family is not None and alone is not None and in_family > alone
    assert breakdown.results["mobile"].verdicts[0].startswith("device_type = mobile: arm B beats control")
    json.dumps(breakdown.to_dict(), allow_nan=False)


def test_cumulative_series_adds_buckets() -> None:
    days = []
    total: dict[str, ArmStats] = {"control": ArmStats.empty(), "B": ArmStats.empty()}
    for day in range(5):
        bucket = {"control": ArmStats.from_unit_totals(*unit_data(80 + day, 200, 0.1)),
                  "B": ArmStats.from_unit_totals(*unit_data(90 + day, 200, 0.11))}
        days.append((f"2024-05-0{day + 1}", bucket))
        total = {a: total[a] + bucket[a] for a in total}
    series = cumulative_series(days, control="control", shares=HALF, config=AnalysisConfig())
    assert len(series.points) == 10
    b = series.for_arm("B")
    assert [p.units for p in b] == [200, 400, 600, 800, 1000]
    final = analyze_experiment(total, control="control", shares=HALF, config=AnalysisConfig())
    assert b[-1].mean == final.arm("B").mean and b[-1].ci == final.arm("B").ci
    assert b[-1].absolute_ci == final.comparison("B").absolute_ci
    assert series.for_arm("control")[0].absolute_lift is None
    json.dumps(series.to_dict(), allow_nan=False)


def test_relative_lift_is_signed_against_the_control_magnitude() -> None:
    rng = np.random.default_rng(61)
    ya, yb = rng.normal(-2.0, 1.0, 500), rng.normal(-1.8, 1.0, 500)
    ones = np.ones(500)
    arms = {"control": ArmStats.from_unit_totals(ya, ones), "B": ArmStats.from_unit_totals(yb, ones)}
    c = analyze_experiment(arms, control="control", shares=HALF,
                           config=AnalysisConfig(metric="reward_per_unit")).comparison("B")
    assert c.absolute_lift is not None and c.absolute_lift > 0
    assert_close(c.relative_lift, (yb.mean() - ya.mean()) / abs(ya.mean()))


def test_public_surface_is_pinned() -> None:
    import analysis.experiments as module

    assert sorted(module.__all__) == sorted([
        "CODES", "AnalysisConfig", "ArmResult", "ArmStats", "Comparison", "ExperimentError",
        "ExperimentResult", "InvalidConfig", "InvalidExperiment", "InvalidStatistics",
        "PowerAnalysis", "RatioStatistic", "SampleMeanStatistic", "SampleRatioCheck",
        "GuardrailResult", "SegmentBreakdown", "SeriesPoint", "TimeSeries", "analyze_experiment",
        "analyze_segments", "cumulative_series", "guardrail_checks", "holm", "power_analysis", "sample_ratio_check", "sequential_halfwidth",
        "sequential_p_value", "sequential_rho", "two_proportion_ztest", "welch_ttest",
    ])
    assert all(hasattr(module, name) for name in module.__all__)


# ----------------------------------------------------------------------------- guardrails


def test_guardrail_one_decision_per_unit_is_the_one_sided_two_proportion_z_test() -> None:
    """Fallbacks of one decision per unit: statsmodels' pooled z-test with ``alternative="larger"``."""
    arms = {"control": stats(1000, 4), "B": stats(1000, 21), "C": stats(1000, 2)}
    shares = {"control": 0.4, "B": 0.3, "C": 0.3}
    results, verdicts = guardrail_checks(arms, metric="fallback_rate", control="control", shares=shares)
    b, c = results
    _, p_b = proportions_ztest([21, 4], [1000, 1000], alternative="larger")
    _, p_c = proportions_ztest([2, 4], [1000, 1000], alternative="larger")
    assert b.method == "two_proportion_z" and b.arm == "B" and b.control == "control"
    assert_close(b.p_value, p_b)
    assert_close(c.p_value, p_c)
    assert_close(b.p_value_adjusted, multipletests([p_b, p_c], method="holm")[1][0])
    assert_close(b.value, 0.021) and assert_close(b.control_value, 0.004) and assert_close(b.difference, 0.017)
    assert b.worsened and not c.worsened  # C has fewer fallbacks than control: never "worsened"
    assert b.p_value_adjusted is not None and 5e-4 < b.p_value_adjusted < 7e-4
    assert verdicts == ("guardrail fallback rate worsened in arm B: 2.1% vs 0.4%, p = 6e-4 after correction",)


def test_guardrail_with_several_decisions_per_unit_is_the_clustered_one_sided_welch_test() -> None:
    """A rate per decision with units of several decisions: delta-method (unit-clustered) variances, Welch's t,
    one-sided; the two-sided interval equals the primary metric's."""
    n = 400
    ya, xa = unit_data(7, n, 0.01)
    yb, xb = unit_data(8, n, 0.03)
    arms = {"control": ArmStats.from_unit_totals(ya, xa), "B": ArmStats.from_unit_totals(yb, xb)}
    (g,), verdicts = guardrail_checks(arms, metric="fallback_rate", control="control", shares=HALF)

    def ratio_moments(y: np.ndarray, x: np.ndarray) -> tuple[float, float]:
        r = y.sum() / x.sum()
        return r, float(np.var(y - r * x, ddof=1) / (x.mean() ** 2 * y.size))  # Var(R), Deng et al. 2018

    ra, va = ratio_moments(ya, xa)
    rb, vb = ratio_moments(yb, xb)
    t = (rb - ra) / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va**2 / (n - 1) + vb**2 / (n - 1))
    assert g.method == "welch_t"
    assert_close(g.difference, rb - ra)
    assert_close(g.p_value, scipy.stats.t.sf(t, dof))
    assert g.p_value_adjusted == g.p_value
    primary = analyze_experiment(arms, control="control", shares=HALF, config=AnalysisConfig()).comparison("B")
    assert g.ci == primary.absolute_ci
    assert g.worsened and g.p_value < 0.001
    assert verdicts == (f"guardrail fallback rate worsened in arm B: {rb * 100:.1f}% vs {ra * 100:.1f}%, "
                        f"p = {g.p_value:.0e}".replace("e-0", "e-"),)


def test_guardrail_degenerate_and_sequential_cases() -> None:
    # no fallbacks anywhere: no variance, no test, nothing worsened
    (g,), verdicts = guardrail_checks({"control": stats(50, 0), "B": stats(50, 0)}, metric="fallback_rate",
                                      control="control", shares=HALF)
    assert g.p_value is None and not g.worsened and "zero_variance" in g.codes and verdicts == ()
    # sequential: the always-valid (two-sided) p-value when the arm is higher, 1 when it is not
    config = AnalysisConfig(sequential=True, burn_in_units=10, planned_units=2000)
    arms = {"control": stats(1000, 5), "B": stats(1000, 40)}
    (g,), verdicts = guardrail_checks(arms, metric="fallback_rate", control="control", shares=HALF, config=config)
    binary = dataclasses.replace(config, binary=True, metric="reward_per_decision")
    expected = analyze_experiment(arms, control="control", shares=HALF, config=binary).comparison("B").p_value
    assert g.method == "sequential_cs" and g.p_value == expected and g.worsened
    assert verdicts[0].endswith("(always valid)")
    (g,), _ = guardrail_checks({"control": stats(1000, 40), "B": stats(1000, 5)}, metric="fallback_rate",
                               control="control", shares=HALF, config=config)
    assert g.p_value == 1.0 and not g.worsened
    with pytest.raises(InvalidStatistics):  # more fallbacks than decisions
        guardrail_checks({"control": stats(10, 0), "B": ArmStats(10, 30.0, 90.0, 10, 10.0, 30.0)},
                         metric="fallback_rate", control="control", shares=HALF)
