"""Larger seeded simulations of the experiment statistics engine (``analysis.experiments``).

Runs the simulations of ``tests/analysis/test_experiments_simulation.py`` with
more repetitions and prints a Markdown table of measured rates next to their
targets, plus the cost of one ``analyze_experiment`` call::

    .venv/bin/python benchmarks/report_stats.py --reps 3000

Rates carry a binomial standard error ``sqrt(r (1 - r) / reps)``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis.experiments import AnalysisConfig, ArmStats, analyze_experiment  # noqa: E402
from tests.analysis.test_experiments_simulation import (  # noqa: E402
    HALF,
    naive_decision_level_rate,
    rejection_rates,
    simulate_arm,
)


def row(name: str, rate: float, reps: int, target: str) -> str:
    se = math.sqrt(max(rate * (1 - rate), 1e-12) / reps)
    return f"| {name} | {rate:.4f} | {se:.4f} | {target} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    reps = args.reps
    rng = np.random.default_rng(args.seed)
    lines = ["| measurement | rate | s.e. | target |", "| --- | --- | --- | --- |"]
    started = time.perf_counter()

    control = simulate_arm(rng, reps, 800, 0.1)
    arm = simulate_arm(rng, reps, 800, 0.1)
    rate, _ = rejection_rates(control, arm, AnalysisConfig(binary=True))
    lines.append(row("A/A fixed, reward per decision (delta, unit level)", rate, reps, "0.05"))
    rate, _ = rejection_rates(control, arm, AnalysisConfig(metric="reward_per_unit"))
    lines.append(row("A/A fixed, reward per unit (Welch)", rate, reps, "0.05"))
    lines.append(row("A/A naive decision-level z-test (wrong)", naive_decision_level_rate(control, arm),
                     reps, "> 0.05 (anti-conservative)"))

    control = simulate_arm(rng, reps, 1500, 0.05, mean_decisions=1.0)
    arm = simulate_arm(rng, reps, 1500, 0.05, mean_decisions=1.0)
    rate, _ = rejection_rates(control, arm, AnalysisConfig(binary=True))
    lines.append(row("A/A two-proportion z, 1 decision per unit", rate, reps, "0.05"))

    looks, per_day = 14, 100
    control = simulate_arm(rng, reps, looks * per_day, 0.1, looks=looks)
    arm = simulate_arm(rng, reps, looks * per_day, 0.1, looks=looks)
    sequential = AnalysisConfig(binary=True, sequential=True, planned_units=2 * looks * per_day,
                                burn_in_units=per_day)
    _, rate = rejection_rates(control, arm, sequential)
    lines.append(row("A/A sequential CS, 14 daily looks, any look", rate, reps, "<= 0.05"))
    last, rate = rejection_rates(control, arm, AnalysisConfig(binary=True))
    lines.append(row("A/A fixed horizon, last look only", last, reps, "0.05"))
    lines.append(row("A/A fixed horizon, 14 daily looks, any look", rate, reps, "inflated"))

    units, lift = 4500, 0.10
    control = simulate_arm(rng, reps, units, 0.1)
    arm = simulate_arm(rng, reps, units, 0.1 * (1 + lift))
    config = AnalysisConfig(binary=True, target_relative_lift=lift)
    detected, predicted, cover_abs, cover_rel = [], [], [], []
    for rep in range(reps):
        c = analyze_experiment({"control": control.at(rep), "B": arm.at(rep)}, control="control",
                               shares=HALF, config=config).comparisons[0]
        assert c.absolute_ci is not None and c.relative_ci is not None
        detected.append(c.significant and (c.absolute_lift or 0) > 0)
        predicted.append(c.power.power_at_target or 0.0)
        cover_abs.append(c.absolute_ci[0] <= 0.01 <= c.absolute_ci[1])
        cover_rel.append(c.relative_ci[0] <= lift <= c.relative_ci[1])
    lines.append(row("A/B +10% relative: detected", float(np.mean(detected)), reps,
                     f"computed power {np.mean(predicted):.4f}"))
    lines.append(row("A/B absolute-lift CI coverage", float(np.mean(cover_abs)), reps, "0.95"))
    lines.append(row("A/B relative-lift CI coverage", float(np.mean(cover_rel)), reps, "0.95"))

    for p_b, name, target in ((0.45, "SRM flagged, 55/45 observed vs 50/50", "1"),
                              (0.5, "SRM flagged, balanced", "0.001")):
        counts = rng.binomial(10_000, p_b, reps)
        hits = [analyze_experiment(
            {"control": ArmStats(int(10_000 - b), 0, 0, int(10_000 - b), float(10_000 - b), 0),
             "B": ArmStats(int(b), 0, 0, int(b), float(b), 0)},
            control="control", shares=HALF).srm.mismatch for b in counts]
        lines.append(row(name, float(np.mean(hits)), reps, target))

    three = {"control": control.at(0), "B": arm.at(0), "C": control.at(1)}
    shares = {"control": 1 / 3, "B": 1 / 3, "C": 1 / 3}
    calls = 2000
    t0 = time.perf_counter()
    for _ in range(calls):
        analyze_experiment(three, control="control", shares=shares, config=AnalysisConfig(binary=True))
    per_call = (time.perf_counter() - t0) / calls * 1e6
    print(f"reps = {reps}, seed = {args.seed}, numpy {np.__version__}")
    print("\n".join(lines))
    print(f"\nanalyze_experiment, 3 arms: {per_call:.0f} us per call; "
          f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
