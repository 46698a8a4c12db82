"""Logging-health check and paired comparisons, checked by seeded simulation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from analysis.compare import compare, paired_difference
from analysis.estimators import EstimatorError, EventData, estimate
from analysis.health import check_logging
from analysis.log import BanditLog


def simulated_log(seed: int, n: int, true_pmf: np.ndarray, logged_pmf: np.ndarray, arms: np.ndarray | None = None) -> BanditLog:
    """Choices drawn from ``true_pmf`` (A,) while ``logged_pmf`` (A,) is recorded."""
    rng = np.random.default_rng(seed)
    a = true_pmf.shape[0]
    chosen = rng.choice(a, size=n, p=true_pmf)
    return BanditLog(
        event_ids=np.array([str(i) for i in range(n)], dtype=object),
        timestamps=np.zeros(n),
        action_ids=np.tile(np.array([f"block{j}" for j in range(a)], dtype=object), (n, 1)),
        action_mask=np.ones((n, a), dtype=bool),
        logging_pmf=np.tile(logged_pmf, (n, 1)),
        chosen=chosen.astype(np.int64),
        reward=(rng.random(n) < 0.3).astype(np.float64),
        arms=np.array([""] * n, dtype=object) if arms is None else arms,
    )


def test_health_passes_correct_propensities_over_many_logs() -> None:
    pmf = np.array([0.5, 0.2, 0.2, 0.1])
    worst = 0.0
    for seed in range(40):  # 160 rows: P(any |z| > 4) ~ 1%
        health = check_logging(simulated_log(seed, 2000, pmf, pmf))
        assert health.ok, health.flagged
        worst = max(worst, health.max_abs_z)
    assert 2.0 < worst < 4.0  # the z-scores do move: the check is not vacuous


def test_health_flags_wrong_propensities() -> None:
    # the service sampled from [0.5, 0.2, 0.2, 0.1] but logged uniform (a stale pmf)
    log = simulated_log(1, 2000, np.array([0.5, 0.2, 0.2, 0.1]), np.full(4, 0.25))
    health = check_logging(log)
    flagged = {row.action for row in health.flagged}
    assert {"block0", "block3"} <= flagged
    row = next(r for r in health.rows if r.action == "block0")
    assert row.expected == pytest.approx(500.0)
    assert row.variance == pytest.approx(2000 * 0.25 * 0.75)
    assert row.z == pytest.approx((row.observed - 500.0) / np.sqrt(375.0))


def test_health_rows_per_arm() -> None:
    n = 3000
    arms = np.array(["control", "treatment"] * (n // 2), dtype=object)
    log = simulated_log(2, n, np.full(3, 1 / 3), np.full(3, 1 / 3), arms)
    health = check_logging(log)
    assert {r.arm for r in health.rows} == {"", "control", "treatment"}
    assert len(health.rows) == 9
    assert sum(r.observed for r in health.rows if r.arm == "control") == n // 2


def test_health_threshold_validated() -> None:
    with pytest.raises(EstimatorError, match="threshold must be positive"):
        check_logging(simulated_log(0, 10, np.full(2, 0.5), np.full(2, 0.5)), threshold=0)


def _uniform_data(seed: int, n: int = 2000, a: int = 4) -> tuple[EventData, np.ndarray]:
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, a, n)
    means = np.linspace(0.2, 0.5, a)
    r = (rng.random(n) < means[chosen]).astype(np.float64)
    return EventData.from_arrays(r, chosen, np.full((n, a), 1 / a)), means


def test_paired_difference_matches_scipy_and_is_narrower_than_unpaired() -> None:
    data, means = _uniform_data(0)
    n = data.n
    best = np.tile(np.eye(4)[3], (n, 1))
    mixed = np.tile([0.0, 0.0, 0.5, 0.5], (n, 1))
    (result,) = compare(data, {"best": best}, mixed, method="ips")
    a = estimate(data, best, "ips")
    b = estimate(data, mixed, "ips")
    assert result.difference == pytest.approx(a.value - b.value)
    d = 4 * data.reward * (best - mixed)[np.arange(n), data.chosen]
    ref = stats.ttest_1samp(d, 0.0)
    assert result.p_value == pytest.approx(ref.pvalue)
    assert result.p_adjusted == result.p_value  # one comparison: Holm changes nothing
    assert result.stderr < np.hypot(a.stderr, b.stderr)  # pairing removes shared noise


def test_holm_adjustment_by_hand() -> None:
    data, _ = _uniform_data(1, n=3000)
    n = data.n
    base = np.tile(np.eye(4)[0], (n, 1))
    cands = {f"to{j}": np.tile(np.eye(4)[j], (n, 1)) for j in (1, 2, 3)}
    results = compare(data, cands, base, method="snips")
    p = np.array([r.p_value for r in results])
    order = np.argsort(p)
    m = len(p)
    expected = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):  # Holm: max over earlier of (m - rank) p, capped at 1
        running = max(running, min(1.0, (m - rank) * p[i]))
        expected[i] = running
    np.testing.assert_allclose([r.p_adjusted for r in results], expected)
    assert results[2].significant  # 0.5 vs 0.2 on 3000 events


def test_identical_policies_are_a_neutral_result() -> None:
    data, _ = _uniform_data(2)
    t = np.full((data.n, 4), 0.25)
    (r,) = compare(data, {"same": t}, t, method="dr")
    assert (r.difference, r.p_value, r.note) == (0.0, 1.0, "zero_variance")


def test_false_positive_rate_of_paired_test() -> None:
    """Two different policies with the same true value: ~5% rejections at level 0.95."""
    rejections = 0
    reps = 300
    for seed in range(reps):
        rng = np.random.default_rng(100 + seed)
        n = 500
        chosen = rng.integers(0, 4, n)
        r = (rng.random(n) < 0.3).astype(np.float64)  # every block has mean 0.3
        data = EventData.from_arrays(r, chosen, np.full((n, 4), 0.25))
        (res,) = compare(data, {"b": np.tile(np.eye(4)[1], (n, 1))}, np.tile(np.eye(4)[0], (n, 1)), method="snips")
        rejections += res.significant
    assert 0.025 <= rejections / reps <= 0.08, rejections / reps


def test_paired_difference_invalid() -> None:
    with pytest.raises(EstimatorError, match="same \\(n,\\) shape"):
        paired_difference(np.zeros(3), np.zeros(4))
    with pytest.raises(EstimatorError, match="NaN"):
        paired_difference(np.array([0.0, np.nan]), np.zeros(2))
    with pytest.raises(EstimatorError, match="no candidates"):
        compare(_uniform_data(0)[0], {}, np.full((2000, 4), 0.25))


# ---------------------------------------------------------------- chosen-only logs: inverse-propensity check


def chosen_only_log(seed: int, n: int, a: int = 5, logged_factor: np.ndarray | None = None) -> BanditLog:
    """Context-dependent softmax pmfs (a fresh pmf per event); only the chosen propensity is logged,
    times ``logged_factor[chosen]`` (None: the right one)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 1.0, (n, a)) + np.linspace(0.0, 1.5, a)
    mu = np.exp(logits)
    mu /= mu.sum(axis=1, keepdims=True)
    chosen = np.minimum((mu.cumsum(axis=1) < rng.random(n)[:, None]).sum(axis=1), a - 1)
    p = np.minimum(1.0, mu[np.arange(n), chosen] * (1.0 if logged_factor is None else logged_factor[chosen]))
    pmf = np.zeros((n, a))
    pmf[np.arange(n), chosen] = p
    log = simulated_log(seed, n, np.full(a, 1 / a), np.full(a, 1 / a))
    return dataclasses.replace(log, logging_pmf=pmf, chosen=chosen.astype(np.int64), meta={"logging_pmf": "chosen_only"})


def test_chosen_only_check_equals_the_full_pmf_check_for_constant_propensities() -> None:
    """With one propensity per action the Hajek variance is exact: z = (c - n p) / sqrt(n p (1 - p))."""
    pmf = np.array([0.5, 0.2, 0.2, 0.1])
    full = simulated_log(5, 3000, pmf, pmf)
    known = np.zeros_like(full.logging_pmf)
    known[np.arange(full.n), full.chosen] = full.propensity
    partial = dataclasses.replace(full, logging_pmf=known, meta={"logging_pmf": "chosen_only"})
    a, b = check_logging(full), check_logging(partial)
    assert [r.check for r in b.rows] == ["inverse_propensity"] * 4
    for x, y in zip(a.rows, b.rows, strict=True):
        assert (y.action, y.observed) == (x.action, x.observed)
        assert (y.expected, y.variance, y.z) == pytest.approx((x.expected, x.variance, x.z), rel=1e-9)


def test_chosen_only_z_is_standard_normal_with_right_propensities() -> None:
    """E[sum_i 1[a_i = a] / p_i] = n: over 300 seeded logs with per-event pmfs, z ~ N(0, 1)."""
    zs = np.array([[r.z for r in check_logging(chosen_only_log(seed, 2000)).rows] for seed in range(300)])
    assert zs.shape == (300, 5)
    assert np.abs(zs.mean(axis=0)).max() < 0.25  # sd of a mean of 300: 0.06; a small skew remains
    assert 0.85 < zs.std(axis=0).min() and zs.std(axis=0).max() < 1.15
    assert np.abs(zs).max() < 4.5  # 1500 rows at threshold 4: rare false alarms (p ~ 6e-5 each)
    assert 0.02 < (np.abs(zs) > 1.96).mean() < 0.08


def test_chosen_only_check_flags_wrong_propensities() -> None:
    halved = check_logging(chosen_only_log(1, 2000, logged_factor=np.full(5, 0.5)))
    assert len(halved.flagged) == 5 and all(r.z > 4 for r in halved.flagged)  # S_a ~ 2 n
    row = halved.rows[-1]
    assert row.expected == pytest.approx(row.observed / 2, rel=0.15)  # the logger claims half the choices
    # one action's propensity logged 30% too high: only its row moves (S_a too small)
    one = np.ones(5)
    one[2] = 1.3
    health = check_logging(chosen_only_log(2, 5000, logged_factor=one))
    assert [r.action for r in health.flagged] == ["block2"] and health.flagged[0].z < -4


def test_chosen_only_action_never_chosen_is_not_tested() -> None:
    log = chosen_only_log(3, 200)
    never = dataclasses.replace(log, action_ids=np.column_stack([log.action_ids, np.full(200, "new", dtype=object)]),
                                action_mask=np.ones((200, 6), dtype=bool), logging_pmf=np.column_stack([log.logging_pmf, np.zeros(200)]))
    row = next(r for r in check_logging(never).rows if r.action == "new")
    assert (row.observed, row.expected, row.z, row.flagged) == (0, 0.0, 0.0, False)
