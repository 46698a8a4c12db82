"""Per-unit sufficient statistics (:class:`~analysis.experiments.ArmStats`) from row columns:
numpy in, ``ArmStats`` out, for a notebook as for the service's report.

An experiment's rows are decisions; its unit of analysis is the unit (user or session) each
decision was made for. With ``Y_i`` the total reward and ``X_i`` the decision count of unit ``i``
within a group (an arm, an arm in one segment, an arm in one time bucket), a group's ``ArmStats``
are the sums ``n, sum Y, sum Y^2, sum X, sum X^2, sum XY`` over its units: the input of
:func:`analysis.analyze_experiment` (the unit-level delta method of Deng et al. 2018).

From a notebook, on columns of an exported log::

    from analysis.unit_statistics import arm_stats
    stats = arm_stats(arm, unit, reward, arms=("control", "treatment"))   # {"control": ArmStats, ...}
    result = analysis.analyze_experiment(stats, control="control", shares={"control": 0.5, "treatment": 0.5})

Functions (all rows are numpy arrays of one length, codes are integers from 0):

* :func:`arm_stats` — per arm name, the simplest call;
* :func:`unit_stats` — per group code, for any grouping of the rows (segments, buckets);
* :class:`ArmUnits` — the (arm, unit) pairs found once, so that many breakdowns of one report
  (arms, guardrails, segments, the time series) are sums over the same pairs;
* :func:`group_totals` — ``ArmStats`` per group from per-pair totals; :func:`stats_by_arm` names them.

Every way runs its floating-point sums in the same order, pairs in (group, unit) order and each
pair's rewards in row order, so the numbers do not depend on the way they were found
(``tests/analysis/test_unit_statistics.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from analysis.experiments import ArmStats

__all__ = ["ArmUnits", "arm_stats", "group_totals", "stats_by_arm", "unit_stats"]


def arm_stats(arm: np.ndarray, unit: np.ndarray, reward: np.ndarray, arms: Sequence[str]) -> dict[str, ArmStats]:
    """Per arm name, the per-unit ``ArmStats`` of the rows.

    ``arm``: (n,) int index into ``arms``; ``unit``: (n,) int unit code (any non-negative integers);
    ``reward``: (n,) float, each decision's reward. A unit seen in two arms counts once in each.
    """
    arm = np.asarray(arm, dtype=np.int64)
    pairs = ArmUnits(arm, np.asarray(unit, dtype=np.int64), len(arms))
    totals = group_totals(pairs.arm, pairs.sums(np.asarray(reward, dtype=np.float64)), pairs.x, len(arms))
    return stats_by_arm(totals, arms)


def unit_stats(group: np.ndarray, unit: np.ndarray, reward: np.ndarray, n_groups: int,
                by_unit: Callable[[], np.ndarray] | None = None) -> list[ArmStats]:
    """Per-unit sufficient statistics per group: ``ArmStats`` of each group code in [0, n_groups).

    Each (group, unit) pair is one unit of that group with ``Y`` = its reward total
    and ``X`` = its decision count (the unit-level aggregation of ``analysis.experiments``).
    ``group``: (n,) int group code in [0, n_groups); ``unit``: (n,) non-negative int unit code;
    ``reward``: (n,) float. ``by_unit``: gives ``argsort(unit, kind="stable")``, shared by the
    calls of one report (it speeds up the sparse case).

    Pairs are visited in (group, unit) order and each pair's rewards summed in row order,
    whichever way they are found, so the floating-point sums do not depend on the way.
    """
    if group.size == 0:
        return [ArmStats.empty() for _ in range(n_groups)]
    key = group * (int(unit.max()) + 1) + unit
    space = n_groups * (int(unit.max()) + 1)
    if space <= 8 * key.size:  # dense bins: no sort
        count = np.bincount(key, minlength=space)
        pairs = np.flatnonzero(count)
        y = np.bincount(key, weights=reward, minlength=space)[pairs]
        x = count[pairs].astype(np.float64)
        owner = pairs // (int(unit.max()) + 1)
    elif by_unit is not None and n_groups < (1 << 15):  # a stable radix sort by group of the unit order
        order = by_unit()
        rows = order[np.argsort(group[order].astype(np.int16), kind="stable")]
        ordered = key[rows]
        new = np.empty(ordered.size, dtype=bool)
        new[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
        pair = np.cumsum(new) - 1
        y = np.bincount(pair, weights=reward[rows])
        x = np.bincount(pair).astype(np.float64)
        owner = group[rows[new]]
    else:
        pairs, inverse = np.unique(key, return_inverse=True)
        y = np.bincount(inverse, weights=reward)
        x = np.bincount(inverse).astype(np.float64)
        owner = pairs // (int(unit.max()) + 1)

    return group_totals(owner, y, x, n_groups)


def group_totals(owner: np.ndarray, y: np.ndarray, x: np.ndarray, n_groups: int) -> list[ArmStats]:
    """``ArmStats`` per group from per-pair reward totals ``y`` and decision counts ``x``.

    ``owner``: (p,) int, the group of each (group, unit) pair; pairs in (group, unit) order within
    each group, so every sum runs in unit order. Groups without a pair get ``ArmStats.empty()``
    sums (zero units)."""

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n_groups)

    units = np.bincount(owner, minlength=n_groups)
    sums = [total(y), total(y * y), total(x), total(x * x), total(x * y)]
    return [ArmStats(int(units[g]), float(sums[0][g]), float(sums[1][g]), int(round(sums[2][g])),
                     float(sums[3][g]), float(sums[4][g])) for g in range(n_groups)]


class ArmUnits:
    """The (arm, unit) pairs of the report's rows in (arm, unit) order: each pair is one unit of one arm.

    Found once per report; the arm statistics, the fallback guardrail and the time series (a unit in
    the bucket of its first exposure) are sums over these pairs, and so is a segment breakdown whose
    segment never changes within a pair (device type and country usually don't; else
    :func:`unit_stats` groups the rows again). Every sum runs in the order :func:`unit_stats` uses.

    Attributes: ``size`` the number of pairs; ``arm`` (size,) each pair's arm; ``x`` (size,) its
    decision count; ``first`` (size,) its first row; ``of_row`` (n,) each row's pair.
    """

    def __init__(self, arm: np.ndarray, unit: np.ndarray, n_arms: int) -> None:
        n = arm.size
        width = int(unit.max()) + 1 if n else 1
        key = arm * width + unit
        space = n_arms * width
        if space <= 8 * max(n, 1):  # dense bins: no sort
            count = np.bincount(key, minlength=space)
            keys = np.flatnonzero(count)
            index = np.zeros(space, dtype=np.int64)
            index[keys] = np.arange(keys.size)
            self.of_row = index[key]
            x = count[keys]
        else:
            keys, of_row = np.unique(key, return_inverse=True)
            self.of_row = of_row.reshape(-1)
            x = np.bincount(self.of_row, minlength=keys.size)
        self.size = int(keys.size)
        self.arm = keys // width
        self.x = x.astype(np.float64)
        self.first = np.full(self.size, n, dtype=np.int64)
        np.minimum.at(self.first, self.of_row, np.arange(n))  # each pair's first row

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per pair, the sum of ``values`` over its rows (in row order)."""
        return np.bincount(self.of_row, weights=values, minlength=self.size)

    def segment_stats(self, codes: np.ndarray, n_codes: int, reward: np.ndarray, n_arms: int) -> list[ArmStats] | None:
        """:func:`unit_stats` of groups ``code * n_arms + arm`` for a row code that may change within a
        pair: dense bins over (pair, code), pairs taken in (arm, unit) order as there; None when
        the bins would outnumber the rows eightfold."""
        space = self.size * n_codes
        if space > 8 * max(self.of_row.size, 1):
            return None
        key = self.of_row * n_codes + codes
        count = np.bincount(key, minlength=space)
        present = np.flatnonzero(count)
        y = np.bincount(key, weights=reward, minlength=space)[present]
        owner = (present % n_codes) * n_arms + self.arm[present // n_codes]
        return group_totals(owner, y, count[present].astype(np.float64), n_codes * n_arms)

    def owner(self, codes: np.ndarray, n_arms: int) -> np.ndarray | None:
        """Per pair, ``code * n_arms + arm`` of a row code constant within every pair; None if it is not."""
        at_first = codes[self.first]
        if not np.array_equal(codes, at_first[self.of_row]):
            return None
        return at_first * n_arms + self.arm


def stats_by_arm(stats: Sequence[ArmStats], arms: Sequence[str]) -> dict[str, ArmStats]:
    """``{arms[i]: stats[i]}``: group statistics by arm name (one slice of a breakdown)."""
    return {name: stats[i] for i, name in enumerate(arms)}
