"""The standard comparison set and the recommendation rule on seeded simulated logs with known truth
(bandits.simulation.World, uniform logging), with a real VW replay of every candidate."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis.compare import Comparison
from analysis.estimators import Diagnostics, Estimate
from analysis.evaluation import (
    STANDARD_CANDIDATES,
    Evaluation,
    EvaluationError,
    context_matrix,
    evaluate,
    recommend,
)
from analysis.log import BanditLog
from bandits.policies import VWConfig
from bandits.simulation import DEFAULT_CATALOG, World

CATALOG = DEFAULT_CATALOG[:5]
GOOD = VWConfig()  # squarecb with context x block interactions
CONTROL = VWConfig(interactions=(), ignore_linear_context=False)


def simulated_log(n: int, *, seed: int, click_range: tuple[float, float]) -> tuple[BanditLog, np.ndarray]:
    """Uniformly logged decisions over 5 blocks of the simulated world; returns the log and the
    (n, 5) true click probabilities of every block for every event."""
    world = World(seed=seed, catalog=CATALOG, click_range=click_range)
    rng = np.random.default_rng(seed)
    candidates = tuple(b.to_candidate() for b in CATALOG)
    ids = [b.id for b in CATALOG]
    records, expected = [], []
    for i, visitor in enumerate(world.visitors(n)):
        p = world.expected_rewards(visitor)
        expected.append(p)
        a = int(rng.integers(len(ids)))
        records.append({
            "event_id": f"e{i}", "timestamp": visitor.timestamp.timestamp(), "action_ids": ids,
            "pmf": [1.0 / len(ids)] * len(ids), "chosen": a, "reward": float(rng.random() < p[a]),
            "context": visitor.context(), "candidates": candidates,
        })
    return BanditLog.from_records(records, meta={"reward_min": 0.0, "reward_max": 1.0}), np.array(expected)


def true_value(evaluation_target: np.ndarray, expected: np.ndarray) -> float:
    return float((evaluation_target * expected).sum(axis=1).mean())


@pytest.fixture(scope="module")
def strong() -> tuple[BanditLog, np.ndarray, Evaluation]:
    log, expected = simulated_log(3000, seed=1, click_range=(0.02, 0.8))
    evaluation = evaluate(log, {"good": GOOD, "control": CONTROL}, online_model=None, default_block=CATALOG[0].id)
    return log, expected, evaluation


def test_the_standard_set_ranks_as_the_truth_does(strong: tuple[BanditLog, np.ndarray, Evaluation]) -> None:
    log, expected, evaluation = strong
    assert [p.name for p in evaluation.policies] == ["online", "baseline", "uniform", "good", "control"]
    assert [p.kind for p in evaluation.policies] == ["logging", "baseline", "uniform", "candidate", "candidate"]
    value = {p.name: p.estimate for p in evaluation.policies}
    # the logging policy is uniform: online and uniform are the same policy, estimated alike
    assert value["online"].value == pytest.approx(value["uniform"].value)
    assert value["online"].ci_low <= float(log.reward.mean()) <= value["online"].ci_high  # on-policy mean
    # the good candidate beats uniform, significantly (paired against online = uniform here)
    assert value["good"].value > value["uniform"].value
    assert evaluation.comparison("good").ci_low > 0
    # the baseline (always the default block) lands within its interval of its true value
    baseline_truth = float(expected[:, 0].mean())
    assert value["baseline"].ci_low <= baseline_truth <= value["baseline"].ci_high
    assert abs(value["baseline"].value - baseline_truth) < 0.03
    # uniform's truth is inside its interval too
    uniform_truth = float(expected.mean())
    assert value["uniform"].ci_low <= uniform_truth <= value["uniform"].ci_high
    # every comparison is against online, Holm-adjusted (never below the raw p-value)
    assert {c.baseline for c in evaluation.comparisons} == {"online"}
    assert all(c.p_adjusted >= c.p_value - 1e-12 for c in evaluation.comparisons)
    assert evaluation.health is not None and evaluation.health.ok


def test_a_significantly_better_candidate_is_recommended(strong: tuple[BanditLog, np.ndarray, Evaluation]) -> None:
    _, _, evaluation = strong
    r = evaluation.recommendation
    assert r.candidate == "good"
    c = evaluation.comparison("good")
    assert r.ci_low == c.ci_low > 0 and r.p_adjusted == c.p_adjusted < 0.05
    assert "good earns +" in r.reason and "lower bound" in r.rule


def test_better_but_not_significantly_is_not_recommended() -> None:
    log, expected = simulated_log(1500, seed=4, click_range=(0.01, 0.35))
    evaluation = evaluate(log, {"good": GOOD}, online_model=None, default_block=None, time_buckets=None)
    from analysis.replay import replay

    truth_good = true_value(replay(log, GOOD).target_pmf, expected)
    truth_online = float(expected.mean())
    assert truth_good > truth_online  # it really is better ...
    c = evaluation.comparison("good")
    assert c.difference > 0 and c.ci_low < 0  # ... but the log cannot show it
    assert evaluation.recommendation.candidate is None
    assert "not significantly" in evaluation.recommendation.reason
    assert "no default block" in " ".join(evaluation.notes)
    assert [p.name for p in evaluation.policies] == ["online", "uniform", "good"]


def _estimate(value: float, flags: tuple[str, ...] = ()) -> Estimate:
    return Estimate(value, 0.01, value - 0.02, value + 0.02, 0.95, 100, "dr", "normal",
                    Diagnostics(100.0, 1.0, 5.0, 0.0, flags))


def _comparison(name: str, diff: float, low: float, p_adj: float) -> Comparison:
    return Comparison(name, "online", diff, 0.01, low, diff + (diff - low), 0.95, p_adj / 2, p_adj,
                      p_adj < 0.05, 100, "dr", "t")


@pytest.mark.parametrize(
    ("rows", "flags", "health_ok", "expected", "reason"),
    [
        ([("a", 0.05, 0.01, 0.01)], {}, True, "a", "a earns +0.05"),
        ([("a", 0.05, -0.01, 0.2)], {}, True, None, "not significantly"),
        ([("a", 0.05, 0.01, 0.07)], {}, True, None, "not significantly"),  # CI > 0 but Holm says no
        ([("a", -0.05, -0.09, 0.01)], {}, True, None, "a is estimated -0.05"),
        ([("a", 0.05, 0.01, 0.01), ("b", 0.08, 0.02, 0.01)], {}, True, "b", "also significantly better but by less: a"),
        ([("a", 0.05, 0.01, 0.01)], {"a": ("tiny_ess",)}, True, None, "not trustworthy (tiny_ess)"),
        ([("a", 0.05, 0.01, 0.01)], {}, False, None, "logging-health check flagged"),
        ([], {}, True, None, "no candidate"),
    ],
)
def test_recommendation_rule(rows: list, flags: dict, health_ok: bool, expected: str | None, reason: str) -> None:
    comparisons = [_comparison(*row) for row in rows]
    estimates = {row[0]: _estimate(0.3, flags.get(row[0], ())) for row in rows}
    r = recommend(comparisons, estimates, [row[0] for row in rows], level=0.95, health_ok=health_ok)
    assert r.candidate == expected
    assert reason in r.reason


def test_snapshot_as_online_policy_series_json_and_table(strong: tuple[BanditLog, np.ndarray, Evaluation]) -> None:
    log, expected, _ = strong
    from analysis.replay import replay

    head = log.subset(np.arange(1500))
    tail = log.subset(np.arange(1500, log.n))
    model = replay(head, GOOD, keep_model=True).model
    assert model is not None
    ticks: list[int] = []
    evaluation = evaluate(tail, {"good": GOOD}, online_model=model, default_block=CATALOG[0].id,
                          time_buckets="hour", progress=ticks.append)
    assert evaluation.policy("online").kind == "online"
    assert sum(ticks) == 2 * tail.n  # the snapshot's predict-only pass and the candidate's replay
    # the trained snapshot beats uniform on the later traffic
    assert evaluation.policy("online").estimate.value > evaluation.policy("uniform").estimate.value
    # expanding-window series: growing event counts, the last point equals the whole-log estimate
    series = evaluation.series
    assert len(series) >= 2 and [s.n for s in series] == sorted(s.n for s in series)
    assert series[-1].n == tail.n
    assert series[-1].values["baseline"][0] == pytest.approx(evaluation.policy("baseline").estimate.value)
    assert series[0].label.endswith(":00Z")
    data = evaluation.to_dict()
    text = json.dumps(data, allow_nan=False)  # no NaN anywhere
    assert json.loads(text)["recommendation"]["rule"].startswith("a candidate replaces")
    assert {p["name"] for p in data["policies"]} == {"online", "baseline", "uniform", "good"}
    table = evaluation.table()
    assert "recommendation:" in table and "baseline" in table and "vs online" in table


def test_feature_importance_of_the_best_candidate() -> None:
    log, _ = simulated_log(1500, seed=1, click_range=(0.02, 0.8))
    evaluation = evaluate(log, {"good": GOOD}, online_model=None, default_block=None, time_buckets=None,
                          with_feature_importance=True)
    assert evaluation.importance_of == "good" and evaluation.importance is not None
    assert set(evaluation.importance.without) == {"time", "device", "location", "user"}
    assert evaluation.importance.baseline == pytest.approx(evaluation.policy("good").estimate.value)
    assert evaluation.to_dict()["feature_importance"]["candidate"] == "good"


def test_chosen_only_logs_evaluate_from_the_chosen_propensity() -> None:
    """An OBD-"bts"-style log: only the chosen propensity is known (pmf rows do not sum to 1)."""
    rng = np.random.default_rng(0)
    n, k = 2000, 4
    true_pmf = np.array([0.55, 0.25, 0.15, 0.05])
    click = np.array([0.05, 0.1, 0.3, 0.2])
    records = []
    for i in range(n):
        a = int(rng.choice(k, p=true_pmf))
        pmf = [0.0] * k
        pmf[a] = float(true_pmf[a])
        records.append({"event_id": str(i), "timestamp": 1.7e9 + 60 * i, "action_ids": list("abcd"), "pmf": pmf,
                        "chosen": a, "reward": float(rng.random() < click[a])})
    log = BanditLog.from_records(records, meta={"logging_pmf": "chosen_only", "reward_min": 0.0, "reward_max": 1.0})
    evaluation = evaluate(log, {}, online_model=None, default_block="c")
    online = evaluation.policy("online")
    assert online.method == "ips" and online.estimate.value == pytest.approx(float(log.reward.mean()))
    baseline = evaluation.policy("baseline").estimate  # always "c": truth 0.3
    assert baseline.ci_low <= 0.3 <= baseline.ci_high
    # the health check runs in its inverse-propensity form and passes (the propensities are right)
    assert evaluation.health is not None and evaluation.health.ok
    assert {row.check for row in evaluation.health.rows} == {"inverse_propensity"}
    assert any("chosen propensity" in note for note in evaluation.notes)
    assert evaluation.comparison("baseline").ci_low > 0  # 0.3 against the logger's ~0.12
    with pytest.raises(EvaluationError) as error:
        evaluate(log, {}, online_model=None, default_block="c", interval="bernstein")
    assert error.value.field == "interval"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "magic"}, "method"),
        ({"interval": "wide"}, "interval"),
        ({"level": 1.5}, "level"),
        ({"time_buckets": "week"}, "time_buckets"),
        ({"candidates": {"uniform": VWConfig()}}, "candidates.uniform"),
        ({"candidates": {"x": {"exploration": "epsilon"}}}, "candidates.x"),
        ({"reward_range": (1.0, 0.0)}, "reward_range"),
    ],
)
def test_invalid_inputs_name_their_field(kwargs: dict, field: str) -> None:
    log, _ = simulated_log(50, seed=0, click_range=(0.02, 0.8))
    arguments = {"candidates": {}, "online_model": None, "default_block": None, **kwargs}
    candidates = arguments.pop("candidates")
    with pytest.raises(EvaluationError if field != "level" else ValueError) as error:
        evaluate(log, candidates, **arguments)
    assert getattr(error.value, "field", None) == field


def test_context_matrix_one_hot_of_frequent_tokens() -> None:
    log, _ = simulated_log(400, seed=0, click_range=(0.02, 0.8))
    x = context_matrix(log, max_columns=8)
    assert x.shape == (400, 8)
    assert set(np.unique(x)) <= {0.0, 1.0}
    share = x.mean(axis=0)
    assert (share >= 0.01).all() and (share <= 0.99).all()
    assert (np.diff(share) <= 0).all()  # most frequent first


def test_standard_candidates_are_valid_vw_configurations() -> None:
    assert "no-interactions" in STANDARD_CANDIDATES and len(STANDARD_CANDIDATES) >= 6
    for config in STANDARD_CANDIDATES.values():
        assert "--cb_explore_adf" in config.to_args()


def test_estimates_equal_the_estimators_own_and_series_ends_at_them(
    strong: tuple[BanditLog, np.ndarray, Evaluation],
) -> None:
    """One cross-fitted reward model serves every policy: same numbers as a direct ``estimate`` call."""
    from analysis.estimators import EventData, estimate
    from analysis.replay import fixed_target, uniform_target

    log, _, evaluation = strong
    data = EventData.from_log(log, context_matrix(log))
    for name, target in (("baseline", fixed_target(log, CATALOG[0].id)), ("uniform", uniform_target(log))):
        direct = estimate(data, target, "dr", "normal", 0.95, seed=0, reward_range=(0.0, 1.0))
        got = evaluation.policy(name).estimate
        assert (got.value, got.ci_low, got.ci_high) == pytest.approx((direct.value, direct.ci_low, direct.ci_high))
    last = evaluation.series[-1]
    for policy in evaluation.policies:
        assert last.values[policy.name][0] == pytest.approx(policy.estimate.value)
    # a ratio estimator's series is re-estimated on each prefix, and ends at the whole-log value too
    snips = evaluate(log.subset(np.arange(800)), {}, online_model=None, default_block=CATALOG[0].id, method="snips",
                     time_buckets="hour")
    assert len(snips.series) > 3
    assert snips.series[-1].values["baseline"][0] == pytest.approx(snips.policy("baseline").estimate.value)
