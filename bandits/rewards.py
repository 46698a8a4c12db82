"""The reward rule: how the rewards reported for one decision become the one number it is learned
and reported with, and the cost encoding VW learns from.

One rule, two forms that give the same numbers:

* :func:`aggregate` — the scalar form: one decision's reward values in arrival order -> one
  number. The learner and the offline log loader (``api.learner``, ``api.offline``) call it.
* :func:`aggregate_many` — the array form: many decisions' rewards as columns -> one number per
  decision and whether any reward came. The experiment report (``api.reports.exposures``) calls it
  on hundreds of thousands of rows at once.

The rule (:class:`RewardRule`): ``sum`` adds the values, ``first`` keeps the earliest, ``max`` the
largest; a decision without any reward gets ``default_reward``; the result is clipped to
``[reward_min, reward_max]`` (the default reward too). ``tests/bandits/test_rewards.py`` checks the
two forms against each other on random inputs for every aggregation.

Pure: numpy in, numbers out; no clock, no SQL.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from bandits.errors import InvalidReward

__all__ = ["AGGREGATIONS", "Aggregation", "RewardRule", "aggregate", "aggregate_many", "cost_from_reward",
           "is_final"]

Aggregation = Literal["sum", "first", "max"]
AGGREGATIONS: tuple[str, ...] = get_args(Aggregation)
"""The aggregations a slot can choose (``reward_aggregation``)."""


@dataclass(frozen=True)
class RewardRule:
    """A slot's reward rule, validated once."""

    aggregation: str = "sum"
    """``sum``, ``first`` or ``max`` of the values that arrived within the reward window."""
    default_reward: float = 0.0
    """The reward of a decision that received none (clipped like any other)."""
    reward_min: float = 0.0
    """Lower end of the slot's reward range."""
    reward_max: float = 1.0
    """Upper end of the slot's reward range."""

    def __post_init__(self) -> None:
        if self.aggregation not in AGGREGATIONS:
            raise InvalidReward(f"reward_aggregation must be one of {', '.join(AGGREGATIONS)}",
                                field="reward_aggregation")
        for name in ("default_reward", "reward_min", "reward_max"):
            value = float(getattr(self, name))
            if not math.isfinite(value):
                raise InvalidReward(f"{name} must be finite", field=name)
            object.__setattr__(self, name, value)
        if self.reward_min > self.reward_max:
            raise InvalidReward("reward_min must not exceed reward_max", field="reward_min")


def aggregate(values: Sequence[float], rule: RewardRule) -> float:
    """The reward of one decision: its reward values in arrival order -> one number in range.

    ``sum`` adds them (``math.fsum``), ``first`` keeps the earliest, ``max`` the largest; no value
    gives ``default_reward``. The result is clipped to ``[reward_min, reward_max]``.
    """
    if not values:
        value = rule.default_reward
    elif rule.aggregation == "first":
        value = float(values[0])
    elif rule.aggregation == "max":
        value = float(max(values))
    else:
        value = math.fsum(values)
    return min(max(value, rule.reward_min), rule.reward_max)


def is_final(values: Sequence[float], rule: RewardRule) -> bool:
    """Can no further reward change the aggregate? (``first``: any reward; ``max``: one at the top)."""
    if not values:
        return False
    if rule.aggregation == "first":
        return True
    if rule.aggregation == "max":
        return max(values) >= rule.reward_max
    return False


def aggregate_many(decision: npt.ArrayLike, value: npt.ArrayLike, n: int,
                   rule: RewardRule) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    """The reward of each of ``n`` decisions from reward rows, and whether any reward came.

    ``decision``: (m,) int, the decision (0 <= d < n) each reward row belongs to; ``value``: (m,)
    float, the reward values. Within one decision, rows count in the order given (arrival order:
    ``first`` keeps the earliest row); the rows need not be grouped. Returns ``(reward, rewarded)``,
    both (n,): :func:`aggregate` of each decision's values, and ``True`` where at least one row
    belongs to it. Sums are accumulated in row order (``np.bincount``), so they can differ from
    :func:`aggregate`'s ``math.fsum`` in the last bits.
    """
    at_row = np.asarray(decision, dtype=np.int64).reshape(-1)
    values = np.asarray(value, dtype=np.float64).reshape(-1)
    if at_row.size != values.size:
        raise InvalidReward("decision and value must have the same length", field="value")
    if at_row.size and (at_row.min() < 0 or at_row.max() >= n):
        raise InvalidReward(f"decision indices must lie in [0, {n})", field="decision")
    reward = np.full(n, min(max(rule.default_reward, rule.reward_min), rule.reward_max))
    rewarded = np.zeros(n, dtype=bool)
    if not at_row.size:
        return reward, rewarded
    if at_row.size > 1 and bool(np.any(at_row[1:] < at_row[:-1])):  # group the rows, keeping their order
        order = np.argsort(at_row, kind="stable")
        at_row, values = at_row[order], values[order]
    start = np.flatnonzero(np.r_[True, at_row[1:] != at_row[:-1]])
    at = at_row[start]
    if rule.aggregation == "max":
        total = np.maximum.reduceat(values, start)
    elif rule.aggregation == "first":
        total = values[start]
    else:  # sum, in row order
        total = np.bincount(at_row, weights=values, minlength=n)[at]
    rewarded[at] = True
    reward[at] = np.clip(total, rule.reward_min, rule.reward_max)
    return reward, rewarded


def cost_from_reward(reward: float, reward_min: float, reward_max: float) -> float:
    """Cost in [0, 1] for VW: (r_max - r) / (r_max - r_min), so untried actions look optimistic."""
    span = reward_max - reward_min
    clipped = min(max(reward, reward_min), reward_max)
    return (reward_max - clipped) / span if span > 0 else 0.0
