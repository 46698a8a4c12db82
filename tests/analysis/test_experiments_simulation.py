"""Seeded simulations with known truth for ``analysis.experiments``.

The audience: every unit makes ``1 + Poisson(mean_decisions - 1)`` decisions
and has its own click rate drawn from ``Beta(c mu, c (1 - mu))``, so decisions
of one unit are correlated (intra-unit correlation ``1 / (c + 1)``). A test
that treats decisions as independent is then anti-conservative; the engine's
unit-level tests must not be.

All repetitions are generated at once with numpy; only the analysis runs in a
Python loop (about 0.3 ms per call). ``benchmarks/report_stats.py`` runs the
same functions with more repetitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.experiments import AnalysisConfig, ArmStats, analyze_experiment, two_proportion_ztest

HALF = {"control": 0.5, "B": 0.5}


@dataclass(frozen=True)
class SimulatedArm:
    """Cumulative per-unit sufficient statistics, shape (reps, looks) each."""

    units: np.ndarray
    reward_sum: np.ndarray
    reward_sum_squares: np.ndarray
    decisions: np.ndarray
    decisions_sum_squares: np.ndarray
    reward_decisions_sum_products: np.ndarray

    def at(self, rep: int, look: int = -1) -> ArmStats:
        return ArmStats(
            int(self.units[rep, look]), float(self.reward_sum[rep, look]),
            float(self.reward_sum_squares[rep, look]), int(self.decisions[rep, look]),
            float(self.decisions_sum_squares[rep, look]),
            float(self.reward_decisions_sum_products[rep, look]),
        )


def simulate_arm(
    rng: np.random.Generator, reps: int, units: int, rate: float, *, mean_decisions: float = 5.0,
    concentration: float = 4.0, looks: int = 1,
) -> SimulatedArm:
    """``reps`` independent arms of ``units`` units; statistics after each of ``looks``
    equal arrivals (look ``k`` sees the first ``(k + 1) * units / looks`` units)."""
    counts = 1 + rng.poisson(mean_decisions - 1.0, (reps, units))
    rates = rng.beta(concentration * rate, concentration * (1.0 - rate), (reps, units))
    rewards = rng.binomial(counts, rates)
    y, x = rewards.astype(np.float64), counts.astype(np.float64)
    ends = np.array([(k + 1) * units // looks for k in range(looks)]) - 1

    def cumulative(values: np.ndarray) -> np.ndarray:
        return np.cumsum(values, axis=1)[:, ends]

    return SimulatedArm(
        units=np.broadcast_to(ends + 1, (reps, looks)), reward_sum=cumulative(y),
        reward_sum_squares=cumulative(y * y), decisions=cumulative(x),
        decisions_sum_squares=cumulative(x * x), reward_decisions_sum_products=cumulative(x * y),
    )


def rejection_rates(
    control: SimulatedArm, arm: SimulatedArm, config: AnalysisConfig
) -> tuple[float, float]:
    """(reject at the last look, reject at any look) with the engine's p-value."""
    reps, looks = control.units.shape
    last = np.zeros(reps, dtype=bool)
    any_look = np.zeros(reps, dtype=bool)
    for rep in range(reps):
        for look in range(looks):
            result = analyze_experiment({"control": control.at(rep, look), "B": arm.at(rep, look)},
                                        control="control", shares=HALF, config=config)
            significant = result.comparisons[0].significant
            any_look[rep] |= significant
            if look == looks - 1:
                last[rep] = significant
    return float(last.mean()), float(any_look.mean())


def naive_decision_level_rate(control: SimulatedArm, arm: SimulatedArm, alpha: float = 0.05) -> float:
    """Two-proportion z-test on decisions as if they were independent (the wrong test)."""
    hits = [
        two_proportion_ztest(control.reward_sum[r, -1], int(control.decisions[r, -1]),
                             arm.reward_sum[r, -1], int(arm.decisions[r, -1]))[1] < alpha
        for r in range(control.units.shape[0])
    ]
    return float(np.mean(hits))


# Binomial tolerance for a 5% rate at 600 repetitions: sd = 0.9 points.
LOW, HIGH = 0.03, 0.075


def test_aa_fixed_horizon_false_positive_rate_is_nominal_at_unit_level() -> None:
    rng = np.random.default_rng(2024)
    control = simulate_arm(rng, 600, 800, 0.1)
    arm = simulate_arm(rng, 600, 800, 0.1)
    per_decision, _ = rejection_rates(control, arm, AnalysisConfig(binary=True))
    per_unit, _ = rejection_rates(control, arm, AnalysisConfig(metric="reward_per_unit"))
    naive = naive_decision_level_rate(control, arm)
    assert LOW <= per_decision <= HIGH, per_decision
    assert LOW <= per_unit <= HIGH, per_unit
    # the same data analysed per decision, ignoring units, rejects far too often
    assert naive > 0.11, naive


def test_aa_two_proportion_z_with_one_decision_per_unit_is_nominal() -> None:
    rng = np.random.default_rng(7)
    control = simulate_arm(rng, 600, 1500, 0.05, mean_decisions=1.0)
    arm = simulate_arm(rng, 600, 1500, 0.05, mean_decisions=1.0)
    config = AnalysisConfig(binary=True)
    assert analyze_experiment({"control": control.at(0), "B": arm.at(0)}, control="control",
                              shares=HALF, config=config).comparisons[0].method == "two_proportion_z"
    rate, _ = rejection_rates(control, arm, config)
    assert LOW <= rate <= HIGH, rate


def test_aa_daily_peeking_sequential_holds_alpha_fixed_horizon_does_not() -> None:
    rng = np.random.default_rng(99)
    looks, per_day = 14, 100
    control = simulate_arm(rng, 600, looks * per_day, 0.1, looks=looks)
    arm = simulate_arm(rng, 600, looks * per_day, 0.1, looks=looks)
    sequential = AnalysisConfig(binary=True, sequential=True, planned_units=2 * looks * per_day,
                                burn_in_units=per_day)
    _, sequential_any = rejection_rates(control, arm, sequential)
    fixed_last, fixed_any = rejection_rates(control, arm, AnalysisConfig(binary=True))
    assert sequential_any <= 0.05 + 0.015, sequential_any
    assert LOW <= fixed_last <= HIGH, fixed_last
    # peeking at a fixed-horizon test every day: why sequential mode exists
    assert fixed_any > 0.12, fixed_any


def test_srm_flags_injected_imbalance_not_balanced_traffic() -> None:
    rng = np.random.default_rng(5)
    total, reps = 10_000, 200
    config = AnalysisConfig()

    def flagged(p_b: float) -> float:
        b = rng.binomial(total, p_b, reps)
        hits = []
        for count_b in b:
            arms = {"control": ArmStats(int(total - count_b), 0, 0, int(total - count_b),
                                        float(total - count_b), 0),
                    "B": ArmStats(int(count_b), 0, 0, int(count_b), float(count_b), 0)}
            hits.append(analyze_experiment(arms, control="control", shares=HALF,
                                           config=config).srm.mismatch)
        return float(np.mean(hits))

    assert flagged(0.45) == 1.0  # 55/45 observed against 50/50 configured
    assert flagged(0.5) <= 0.02  # expected 0.1%


def test_ab_true_lift_detected_with_computed_power_and_covered() -> None:
    rng = np.random.default_rng(11)
    reps, units, rate, lift = 600, 4500, 0.1, 0.10
    control = simulate_arm(rng, reps, units, rate)
    arm = simulate_arm(rng, reps, units, rate * (1 + lift))
    config = AnalysisConfig(binary=True, target_relative_lift=lift)
    detected, predicted, covered_abs, covered_rel = [], [], [], []
    for rep in range(reps):
        c = analyze_experiment({"control": control.at(rep), "B": arm.at(rep)}, control="control",
                               shares=HALF, config=config).comparisons[0]
        assert c.absolute_ci is not None and c.relative_ci is not None
        detected.append(c.significant and (c.absolute_lift or 0) > 0)
        predicted.append(c.power.power_at_target or 0.0)
        covered_abs.append(c.absolute_ci[0] <= rate * lift <= c.absolute_ci[1])
        covered_rel.append(c.relative_ci[0] <= lift <= c.relative_ci[1])
    power, expected = float(np.mean(detected)), float(np.mean(predicted))
    assert 0.4 < expected < 0.9, expected
    assert abs(power - expected) < 0.06, (power, expected)
    assert 0.93 <= np.mean(covered_abs) <= 0.97, np.mean(covered_abs)
    assert 0.93 <= np.mean(covered_rel) <= 0.97, np.mean(covered_rel)
