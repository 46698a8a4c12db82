"""Logging-health check and paired comparisons, checked by seeded simulation."""

from __future__ import annotations

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
