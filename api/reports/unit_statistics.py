"""Per-unit sufficient statistics of the report's rows (``analysis.experiments.ArmStats``) per arm,
per (segment, arm) and per first-exposure bucket, summed over the (arm, unit) pairs found once."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from analysis.experiments import ArmStats

__all__: list[str] = []  # shared with the package's modules only


def _unit_stats(group: np.ndarray, unit: np.ndarray, reward: np.ndarray, n_groups: int,
                by_unit: Callable[[], np.ndarray] | None = None) -> list[ArmStats]:
    """Per-unit sufficient statistics per group: ``ArmStats`` of each group code in [0, n_groups).

    Each (group, unit) pair is one unit of that group with ``Y`` = its reward total
    and ``X`` = its decision count (the unit-level aggregation of ``analysis.experiments``).
    ``by_unit``: gives ``argsort(unit, kind="stable")``, shared by the calls of one report.

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

    return _group_totals(owner, y, x, n_groups)


def _group_totals(owner: np.ndarray, y: np.ndarray, x: np.ndarray, n_groups: int) -> list[ArmStats]:
    """``ArmStats`` per group from per-pair reward totals ``y`` and decision counts ``x`` (pairs in
    (group, unit) order within each group, so every sum runs in unit order)."""

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n_groups)

    units = np.bincount(owner, minlength=n_groups)
    sums = [total(y), total(y * y), total(x), total(x * x), total(x * y)]
    return [ArmStats(int(units[g]), float(sums[0][g]), float(sums[1][g]), int(round(sums[2][g])),
                     float(sums[3][g]), float(sums[4][g])) for g in range(n_groups)]


class _ArmUnits:
    """The (arm, unit) pairs of the report's rows in (arm, unit) order: each pair is one unit of one arm.

    Found once per report; the arm statistics, the fallback guardrail and the time series (a unit in
    the bucket of its first exposure) are sums over these pairs, and so is a segment breakdown whose
    segment never changes within a pair (device type and country usually don't; else
    :func:`_unit_stats` groups the rows again). Every sum runs in the order :func:`_unit_stats` uses.
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
        """:func:`_unit_stats` of groups ``code * n_arms + arm`` for a row code that may change within a
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
        return _group_totals(owner, y, count[present].astype(np.float64), n_codes * n_arms)

    def owner(self, codes: np.ndarray, n_arms: int) -> np.ndarray | None:
        """Per pair, ``code * n_arms + arm`` of a row code constant within every pair; None if it is not."""
        at_first = codes[self.first]
        if not np.array_equal(codes, at_first[self.of_row]):
            return None
        return at_first * n_arms + self.arm


def _by_arm(stats: Sequence[ArmStats], arms: Sequence[str]) -> dict[str, ArmStats]:
    return {name: stats[i] for i, name in enumerate(arms)}
