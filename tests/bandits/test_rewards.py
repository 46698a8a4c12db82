"""The one reward rule (``bandits.rewards``): its scalar and array forms agree on random inputs for
every aggregation, with the default reward and clipping; invalid rules and rows name their field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bandits.errors import InvalidReward
from bandits.rewards import (
    AGGREGATIONS,
    RewardRule,
    aggregate,
    aggregate_many,
    cost_from_reward,
    is_final,
)


@pytest.mark.parametrize(
    ("aggregation", "values", "expected"),
    [
        ("sum", [], 0.1),
        ("sum", [0.25, 0.5], 0.75),
        ("sum", [0.75, 0.5], 1.0),  # clipped to reward_max
        ("first", [0.25, 0.75], 0.25),
        ("max", [0.25, 0.75, 0.5], 0.75),
        ("max", [-3.0], 0.0),  # clipped to reward_min
        ("first", [], 0.1),
        ("max", [], 0.1),
    ],
)
def test_aggregate(aggregation: str, values: list[float], expected: float) -> None:
    rule = RewardRule(aggregation, default_reward=0.1, reward_min=0.0, reward_max=1.0)
    assert aggregate(values, rule) == pytest.approx(expected)
    reward, rewarded = aggregate_many(np.zeros(len(values), dtype=np.int64), values, 1, rule)
    assert reward[0] == pytest.approx(expected) and bool(rewarded[0]) is bool(values)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("seed", range(20))
def test_the_array_form_is_the_scalar_form(aggregation: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    m = int(rng.integers(0, 4 * n))
    low = float(rng.choice([0.0, -1.0, -5.0]))
    high = low + float(rng.choice([1.0, 2.0, 10.0]))
    default = float(rng.uniform(low - 1.0, high + 1.0))  # outside the range too: clipped like any reward
    rule = RewardRule(aggregation, default_reward=default, reward_min=low, reward_max=high)
    decision = rng.integers(0, n, size=m)  # ungrouped rows, in arrival order
    value = np.round(rng.normal((low + high) / 2, high - low, size=m), 3)
    reward, rewarded = aggregate_many(decision, value, n, rule)
    for d in range(n):
        values = [float(v) for v in value[decision == d]]
        assert reward[d] == pytest.approx(aggregate(values, rule), abs=1e-12)
        assert bool(rewarded[d]) is bool(values)
        assert low <= reward[d] <= high


def test_grouped_rows_keep_their_order() -> None:
    rule = RewardRule("first", reward_max=10.0)
    reward, _ = aggregate_many([2, 0, 2, 0], [3.0, 1.0, 4.0, 2.0], 3, rule)
    assert reward.tolist() == [1.0, 0.0, 3.0]


def test_is_final() -> None:
    assert not is_final([], RewardRule("first"))
    assert is_final([0.2], RewardRule("first"))
    assert not is_final([0.5], RewardRule("max")) and is_final([0.5, 1.0], RewardRule("max"))
    assert not is_final([1.0, 1.0], RewardRule("sum"))


def test_cost_from_reward() -> None:
    assert cost_from_reward(1.0, 0.0, 1.0) == 0.0 and cost_from_reward(0.0, 0.0, 1.0) == 1.0
    assert cost_from_reward(7.0, 0.0, 2.0) == 0.0 and cost_from_reward(3.0, 3.0, 3.0) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"aggregation": "mean"}, "reward_aggregation"),
        ({"default_reward": float("nan")}, "default_reward"),
        ({"reward_max": float("inf")}, "reward_max"),
        ({"reward_min": 2.0, "reward_max": 1.0}, "reward_min"),
    ],
)
def test_invalid_rules_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidReward) as caught:
        RewardRule(**kwargs)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("decision", "value", "field"),
    [([0, 1], [1.0], "value"), ([0, 3], [1.0, 1.0], "decision"), ([-1], [1.0], "decision")],
)
def test_invalid_rows_name_their_field(decision: list[int], value: list[float], field: str) -> None:
    with pytest.raises(InvalidReward) as caught:
        aggregate_many(decision, value, 3, RewardRule())
    assert caught.value.field == field
