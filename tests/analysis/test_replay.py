"""Counterfactual replay with a real VW workspace on seeded synthetic logs with known truth."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import vowpalwabbit

from analysis.dsjson import write_dsjson
from analysis.log import BanditLog, LogError
from analysis.replay import (
    chooser_target,
    drop_context,
    feature_importance,
    fixed_target,
    logging_target,
    per_event_target,
    replay,
    snapshot_target,
    snips_value,
    uniform_target,
)
from bandits.features import action_line, shared_line
from bandits.policies import Candidate, FixedPolicy, VWConfig, VWPolicy, cost_from_reward

BLOCKS = tuple(Candidate(f"b{i}", {"format": ["image", "video"][i % 2]}) for i in range(4))
BEST = {"mobile": 1, "desktop": 3}  # the block that gets clicked, by device type


def synthetic_log(n: int = 3000, *, seed: int = 0, deterministic: bool = False) -> BanditLog:
    """Uniform logging over 4 blocks; the device decides the best block, time is noise.

    Click probability 0.8 for the best block and 0.1 otherwise (or exactly 1/0
    when ``deterministic``).
    """
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        device = ["mobile", "desktop"][int(rng.integers(2))]
        context = {
            "time": {"daypart": ["morning", "evening"][int(rng.integers(2))]},
            "device": {"type": device},
        }
        chosen = int(rng.integers(4))
        best = chosen == BEST[device]
        reward = float(best) if deterministic else float(rng.random() < (0.8 if best else 0.1))
        records.append(
            {
                "event_id": f"e{i}",
                "timestamp": 1_700_000_000.0 + i,
                "action_ids": [b.id for b in BLOCKS],
                "pmf": [0.25] * 4,
                "chosen": chosen,
                "reward": reward,
                "context": context,
                "candidates": BLOCKS,
            }
        )
    return BanditLog.from_records(records, meta={"reward_min": 0.0, "reward_max": 1.0})


@pytest.fixture(scope="module")
def log() -> BanditLog:
    return synthetic_log()


def _best_index(log: BanditLog) -> np.ndarray:
    return np.array([BEST[str(c["device"]["type"])] for c in log.contexts])


def test_replay_concentrates_on_the_best_block_per_context(log: BanditLog) -> None:
    result = replay(log, VWConfig())
    target = result.target_pmf
    assert target.shape == (log.n, 4)
    np.testing.assert_allclose(target.sum(axis=1), 1.0)
    late = np.arange(log.n) >= log.n * 0.8
    on_best = target[np.arange(log.n), _best_index(log)]
    assert on_best[late].mean() > 0.9
    assert on_best[: 50].mean() < 0.6  # it had to learn it
    assert result.learned == log.n
    # true value of the late policy ~ 0.8; the uniform logging policy earns 0.8/4 + 0.1*3/4 = 0.275
    assert snips_value(log.subset(late), target[late]) > 0.7
    # IPS of the progressive predictions: reward ~0.8 * share of late events, cost the complement
    assert 0.5 < result.progressive_value < 0.85
    weights = target[np.arange(log.n), log.chosen] / log.propensity
    assert result.progressive_loss + result.progressive_value == pytest.approx(weights.mean())


def test_first_prediction_is_uniform_even_with_deterministic_rewards() -> None:
    log = synthetic_log(200, deterministic=True)
    target = replay(log, VWConfig()).target_pmf
    np.testing.assert_allclose(target[0], 0.25, atol=1e-6)
    assert not np.allclose(target[-1], 0.25)


def test_an_events_own_label_never_reaches_its_prediction() -> None:
    log = synthetic_log(400, seed=3)
    k = 150
    flipped_reward = log.reward.copy()
    flipped_reward[k] = 1.0 - flipped_reward[k]
    flipped = BanditLog(**{**{f: getattr(log, f) for f in log.__dataclass_fields__}, "reward": flipped_reward})
    a = replay(log, VWConfig()).target_pmf
    b = replay(flipped, VWConfig()).target_pmf
    np.testing.assert_array_equal(a[: k + 1], b[: k + 1])  # up to and including event k
    assert not np.array_equal(a[k + 1 :], b[k + 1 :])  # the flip is learned afterwards


@pytest.mark.parametrize("exploration", ["squarecb", "epsilon", "cover"])
def test_replay_matches_a_raw_vw_predict_then_learn_loop(exploration: str) -> None:
    log = synthetic_log(300, seed=5)
    config = VWConfig(exploration=exploration, cb_type="mtr")
    learnable = np.arange(log.n) % 5 != 2
    log = BanditLog(**{**{f: getattr(log, f) for f in log.__dataclass_fields__}, "learnable": learnable})
    ws = vowpalwabbit.Workspace(arg_list=config.to_args())
    expected = []
    actions = [action_line(b.id, b.features) for b in BLOCKS]
    for row in range(log.n):
        lines = [shared_line(log.contexts[row]), *actions]
        expected.append(ws.predict(lines))
        if learnable[row]:
            a = int(log.chosen[row])
            cost = 1.0 - float(log.reward[row])  # a numpy float's repr would be no VW label
            lines[1 + a] = f"0:{cost!r}:0.25 {actions[a]}"
            ws.learn(lines)
    ws.finish()
    expected_pmf = np.array(expected, dtype=np.float64)
    expected_pmf /= expected_pmf.sum(axis=1, keepdims=True)
    result = replay(log, config)
    np.testing.assert_allclose(result.target_pmf, expected_pmf, rtol=0, atol=1e-12)
    assert result.learned == int(learnable.sum())


def test_replay_equals_vw_progressive_validation_over_the_dsjson_export(tmp_path: Path) -> None:
    """``vw --dsjson -d export -p preds`` prints the pmf of each event before learning it."""
    log = synthetic_log(400, seed=2)
    config = VWConfig()
    path = tmp_path / "log.dsjson"
    write_dsjson(log, path, reward_to_cost=lambda r: cost_from_reward(r, 0.0, 1.0))
    predictions = tmp_path / "preds.txt"
    vowpalwabbit.Workspace(arg_list=[*config.to_args(), "--dsjson", "-d", str(path), "-p", str(predictions)]).finish()
    vw_pmf = np.zeros((log.n, 4))
    lines = [line for line in predictions.read_text().splitlines() if line.strip()]
    assert len(lines) == log.n
    for row, line in enumerate(lines):
        for pair in line.split(","):
            action, probability = pair.split(":")
            vw_pmf[row, int(action)] = float(probability)
    target = replay(log, config).target_pmf
    np.testing.assert_allclose(target, vw_pmf, atol=2e-6)  # VW prints 6 decimals
    assert target[-100:].max(axis=1).mean() > 0.9  # and it did learn


def test_non_learnable_events_teach_nothing() -> None:
    log = synthetic_log(100, deterministic=True)
    frozen = BanditLog(**{**{f: getattr(log, f) for f in log.__dataclass_fields__}, "learnable": np.zeros(100, bool)})
    result = replay(frozen, VWConfig())
    np.testing.assert_allclose(result.target_pmf, 0.25, atol=1e-6)
    assert result.learned == 0 and math.isnan(result.progressive_loss)


def test_snapshot_target_is_the_saved_models_pmf(log: BanditLog) -> None:
    policy = VWPolicy(VWConfig())
    for row in range(1000):
        policy.learn(log.contexts[row], BLOCKS, int(log.chosen[row]), 1.0 - float(log.reward[row]), 0.25)
    model = policy.save()
    head = log.subset(np.arange(1000, 1100))
    target = snapshot_target(head, model)
    for row in range(0, 100, 17):
        expected = policy.pmf(head.contexts[row], BLOCKS)
        np.testing.assert_allclose(target[row], np.array(expected) / sum(expected), atol=1e-6)
    assert target[np.arange(100), _best_index(head)].mean() > 0.9
    # the same through the generic Chooser path
    np.testing.assert_allclose(chooser_target(head, policy), target, atol=1e-6)
    policy.close()


def test_replay_can_continue_a_model_and_keep_the_result(log: BanditLog) -> None:
    first = replay(log.subset(np.arange(500)), VWConfig(), keep_model=True)
    assert first.model
    second = replay(log.subset(np.arange(500, 600)), model=first.model, learn=False)
    assert second.learned == 0 and second.config is None
    assert second.target_pmf[np.arange(100), _best_index(log.subset(np.arange(500, 600)))].mean() > 0.5


def test_progress_reports_every_event_once(log: BanditLog) -> None:
    calls: list[int] = []
    replay(log.subset(np.arange(2500)), VWConfig(), progress=calls.append)
    assert sum(calls) == 2500 and calls[:2] == [1000, 1000]


def test_simple_targets(log: BanditLog) -> None:
    small = log.subset(np.arange(10))
    np.testing.assert_allclose(uniform_target(small), 0.25)
    fixed = fixed_target(small, "b2")
    np.testing.assert_array_equal(fixed[:, 2], 1.0)
    np.testing.assert_allclose(fixed_target(small, "missing"), 0.25)
    np.testing.assert_allclose(chooser_target(small, FixedPolicy("b2")), fixed)
    np.testing.assert_array_equal(logging_target(small), small.logging_pmf)
    # the logging policy's SNIPS value is the mean logged reward
    assert snips_value(small, logging_target(small)) == pytest.approx(small.reward.mean())
    rows = [[0.1, 0.2, 0.3, 0.4]] * 10
    np.testing.assert_allclose(per_event_target(small, rows)[3], [0.1, 0.2, 0.3, 0.4])


def _ragged_log() -> BanditLog:
    return BanditLog.from_records(
        [
            {"event_id": "x", "action_ids": ["a", "b", "c"], "pmf": [0.2, 0.3, 0.5], "chosen": 0, "reward": 1.0},
            {"event_id": "y", "action_ids": ["a", "b"], "pmf": [0.5, 0.5], "chosen": 1, "reward": 0.0},
        ]
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ([[1.0, 0.0, 0.0]], "target has 1 rows, expected 2"),
        ([[1.0, 0.0, 0.0], [1.0]], "event 1: 1 probabilities for 2 candidates"),
        ([[1.5, -0.5, 0.0], [0.5, 0.5]], "finite and >= 0"),
        ([[0.5, 0.4, 0.0], [0.5, 0.5]], "event 0: target row sums to 0.9"),
        (np.array([[1.0, 0.0, 0.0], [0.5, 0.4, 0.1]]), "mass on padding"),
        (np.ones((2, 2)) / 2, "must be (2, 3)"),
    ],
)
def test_per_event_target_rejects_non_pmfs(target: object, message: str) -> None:
    with pytest.raises(LogError, match=re.escape(message)):
        per_event_target(_ragged_log(), target)  # type: ignore[arg-type]


def test_ragged_candidate_sets_replay_with_padding() -> None:
    log = _ragged_log()
    target = replay(log, VWConfig()).target_pmf
    np.testing.assert_allclose(target[0], [1 / 3] * 3, atol=1e-6)
    assert target[1, 2] == 0.0 and target[1, :2].sum() == pytest.approx(1.0)


def test_dropping_the_informative_group_lowers_the_value(log: BanditLog) -> None:
    result = feature_importance(log, VWConfig(), features=("device.type", "time.daypart"))
    assert result.baseline > 0.6
    importance = result.importance
    assert set(importance) == {"time", "device", "device.type", "time.daypart"}
    assert importance["device"] > 0.25  # without it the best it can do is one block for all: ~0.45
    assert importance["device.type"] == pytest.approx(importance["device"], abs=0.05)
    assert abs(importance["time"]) < 0.05 and abs(importance["time.daypart"]) < 0.05


def test_drop_context_removes_only_what_it_names(log: BanditLog) -> None:
    small = log.subset(np.arange(3))
    assert "device" not in drop_context(small, "device").contexts[0]
    assert drop_context(small, "device", "type").contexts[0]["device"] == {}
    assert drop_context(small, "device", "type").contexts[0]["time"] == small.contexts[0]["time"]
    assert shared_line(drop_context(small, "device").contexts[0]).count("|") == 1
    with pytest.raises(ValueError, match="unknown context group"):
        drop_context(small, "weather")
