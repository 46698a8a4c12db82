"""``analysis.unit_statistics``: per-unit ``ArmStats`` from numpy columns, the same numbers whichever
way the (group, unit) pairs are found, and equal to a plain row-by-row computation."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.experiments import ArmStats
from analysis.unit_statistics import ArmUnits, arm_stats, group_totals, stats_by_arm, unit_stats


def _by_hand(arm: np.ndarray, unit: np.ndarray, reward: np.ndarray, arms: tuple[str, ...]) -> dict[str, ArmStats]:
    out = {}
    for a, name in enumerate(arms):
        totals: dict[int, list[float]] = {}
        for g, u, r in zip(arm, unit, reward, strict=True):
            if g == a:
                y_x = totals.setdefault(int(u), [0.0, 0.0])
                y_x[0] += float(r)
                y_x[1] += 1.0
        ys = [v[0] for v in totals.values()]
        xs = [v[1] for v in totals.values()]
        out[name] = ArmStats(len(ys), sum(ys), sum(y * y for y in ys), int(sum(xs)), sum(x * x for x in xs),
                             sum(x * y for x, y in zip(xs, ys, strict=True)))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_arm_stats_are_the_plain_per_unit_sums(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    unit = rng.integers(0, 40, n) * (1 if seed % 2 else 1013)  # dense and sparse unit codes
    arm = rng.integers(0, 3, n)
    reward = rng.choice([0.0, 1.0, 0.25], n)
    got = arm_stats(arm, unit, reward, ("a", "b", "c"))
    want = _by_hand(arm, unit, reward, ("a", "b", "c"))
    for name in want:
        for field in ("units", "decisions"):
            assert getattr(got[name], field) == getattr(want[name], field)
        for field in ("reward_sum", "reward_sum_squares", "decisions_sum_squares", "reward_decisions_sum_products"):
            assert getattr(got[name], field) == pytest.approx(getattr(want[name], field), rel=1e-12)


def test_empty_rows_give_empty_groups() -> None:
    empty = np.zeros(0, dtype=np.int64)
    assert unit_stats(empty, empty, np.zeros(0), 2) == [ArmStats.empty(), ArmStats.empty()]
    assert arm_stats(empty, empty, np.zeros(0), ("a",)) == {"a": ArmStats.empty()}
    assert stats_by_arm([ArmStats.empty()], ["a"]) == {"a": ArmStats.empty()}


@pytest.mark.parametrize("units", [50, 5000])  # dense bins, and sparse units (np.unique)
def test_arm_unit_pairs_give_the_sums_of_a_grouping_of_rows(units: int) -> None:
    """Arm, segment and first-exposure statistics summed over (arm, unit) pairs equal, bit for bit, those of
    grouping the rows again (``unit_stats``), for a segment constant within a unit and one that is not."""
    rng = np.random.default_rng(units)
    n, n_arms = 600, 3
    unit = rng.integers(0, units, n) * (1 if units == 50 else 97)
    arm = (unit * 7 + (rng.random(n) < 0.05)) % n_arms  # sticky, with a few units in two arms
    reward = rng.choice([0.0, 1.0, 0.1, 1 / 3], n)
    pairs = ArmUnits(arm, unit, n_arms)
    y = pairs.sums(reward)
    assert group_totals(pairs.arm, y, pairs.x, n_arms) == unit_stats(arm, unit, reward, n_arms)
    country = unit % 5
    owner = pairs.owner(country, n_arms)
    assert owner is not None
    assert group_totals(owner, y, pairs.x, 5 * n_arms) == unit_stats(country * n_arms + arm, unit, reward, 5 * n_arms)
    daypart = rng.integers(0, 4, n)  # changes within a unit
    assert pairs.owner(daypart, n_arms) is None
    assert pairs.segment_stats(daypart, 4, reward, n_arms) == unit_stats(daypart * n_arms + arm, unit, reward, 4 * n_arms)
    bucket = np.sort(rng.integers(0, 6, n))
    first_bucket = np.array([bucket[np.flatnonzero((unit == u) & (arm == a))[0]] for u, a in zip(unit, arm, strict=True)])
    assert group_totals(bucket[pairs.first] * n_arms + pairs.arm, y, pairs.x, 6 * n_arms) == \
        unit_stats(first_bucket * n_arms + arm, unit, reward, 6 * n_arms)
