"""Estimators on hand-computed tiny logs, and tables of invalid inputs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

import analysis.estimators as est
from analysis.estimators import (
    DirectMethod,
    EstimatorError,
    EventData,
    RidgeRewardModel,
    contributions,
    estimate,
)
from analysis.intervals import resample_statistic
from analysis.log import BanditLog

# Four events, two blocks "a" and "b".
#   event  logged pmf    chosen  reward  target pmf   w = pi(chosen) / mu(chosen)
#   e1     [0.5, 0.5]    a       1       [1, 0]       1 / 0.5   = 2
#   e2     [0.25, 0.75]  b       0       [1, 0]       0 / 0.75  = 0
#   e3     [0.8, 0.2]    a       0.5     [0.5, 0.5]   0.5 / 0.8 = 0.625
#   e4     [0.5, 0.5]    b       1       [0, 1]       1 / 0.5   = 2
PMFS = [[0.5, 0.5], [0.25, 0.75], [0.8, 0.2], [0.5, 0.5]]
CHOSEN = [0, 1, 0, 1]
REWARDS = [1.0, 0.0, 0.5, 1.0]
TARGET = np.array([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0]])


def tiny_log(pmfs: list[list[float]] = PMFS, chosen: list[int] = CHOSEN, rewards: list[float] = REWARDS) -> BanditLog:
    return BanditLog.from_records(
        [
            {"event_id": f"e{i + 1}", "action_ids": ["a", "b"], "pmf": p, "chosen": c, "reward": r}
            for i, (p, c, r) in enumerate(zip(pmfs, chosen, rewards, strict=True))
        ]
    )


def test_ips_hand_computed_and_not_clipped() -> None:
    e = estimate(tiny_log(), TARGET, "ips")
    contrib = np.array([2 * 1.0, 0 * 0.0, 0.625 * 0.5, 2 * 1.0])  # w_i r_i
    assert e.value == pytest.approx((2 + 0 + 0.3125 + 2) / 4)  # 1.078125 > 1: returned as is
    assert e.value == pytest.approx(1.078125)
    assert e.stderr == pytest.approx(contrib.std(ddof=1) / 2)
    assert e.ci_low == pytest.approx(1.078125 - 1.959963984540054 * e.stderr)
    assert "out_of_reward_range" in e.flags
    d = e.diagnostics
    assert d.mean_weight == pytest.approx(4.625 / 4)
    assert d.max_weight == 2.0
    assert d.ess == pytest.approx(4.625**2 / (4 + 0 + 0.390625 + 4))
    assert d.unsupported_mass == 0.0


def test_snips_hand_computed() -> None:
    e = estimate(tiny_log(), TARGET, "snips")
    assert e.value == pytest.approx(4.3125 / 4.625)  # sum w r / sum w = 0.9324...
    c = contributions(tiny_log(), TARGET, "snips")
    v = 4.3125 / 4.625
    w = np.array([2, 0, 0.625, 2])
    np.testing.assert_allclose(c, v + w * (np.array(REWARDS) - v) / (4.625 / 4))


def test_dm_per_action_mean_hand_computed() -> None:
    # alpha = 0, no features: q(a) = mean(1, 0.5) = 0.75, q(b) = mean(0, 1) = 0.5
    # plug-in per event: 0.75, 0.75, 0.5*0.75 + 0.5*0.5 = 0.625, 0.5 -> DM = 2.625 / 4
    # influence: omega = target share / logged share: a 0.625/0.5 = 1.25, b 0.375/0.5 = 0.75
    # residuals 0.25, -0.5, -0.25, 0.5 -> corrections 0.3125, -0.375, -0.3125, 0.375 (sum 0)
    model = RidgeRewardModel(alpha=0.0)
    e = estimate(tiny_log(), TARGET, "dm", reward_model=model)
    assert e.value == pytest.approx(0.65625)
    c = contributions(tiny_log(), TARGET, "dm", reward_model=model)
    np.testing.assert_allclose(c, [1.0625, 0.375, 0.3125, 0.875])
    data = EventData.from_log(tiny_log())
    np.testing.assert_allclose(DirectMethod(model).plug_in(data, TARGET), [0.75, 0.75, 0.625, 0.5])


def test_dr_and_switch_dr_leave_one_out_hand_computed() -> None:
    # n_folds = 4 = n: each event is predicted by the model of the other three.
    #   e1: q_a = 0.5, q_b = 0.5   -> 1*0.5 + 2*(1 - 0.5)                      = 1.5
    #   e2: q_a = 0.75, q_b = 1    -> 0.75 + 0*(0 - 1)                           = 0.75
    #   e3: q_a = 1, q_b = 0.5     -> 0.5*1 + 0.5*0.5 + 0.625*(0.5 - 1)           = 0.4375
    #   e4: q_a = 0.75, q_b = 0    -> 0 + 2*(1 - 0)                               = 2
    model = RidgeRewardModel(alpha=0.0)
    c = contributions(tiny_log(), TARGET, "dr", reward_model=model, n_folds=4)
    np.testing.assert_allclose(c, [1.5, 0.75, 0.4375, 2.0])
    e = estimate(tiny_log(), TARGET, "dr", reward_model=model, n_folds=4)
    assert e.value == pytest.approx(4.6875 / 4)
    # switch-DR, tau = 1.5: e1 and e4 (w = 2) lose their correction -> 0.5 and 0
    s = estimate(tiny_log(), TARGET, "switch_dr", reward_model=model, n_folds=4, switch_tau=1.5)
    assert s.value == pytest.approx((0.5 + 0.75 + 0.4375 + 0.0) / 4)


def test_replay_hand_computed() -> None:
    log = tiny_log(pmfs=[[0.5, 0.5]] * 4, chosen=[0, 0, 0, 1])
    target = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    # matches: e1 (r = 1) and e3 (r = 0.5) -> 0.75
    assert estimate(log, target, "replay").value == pytest.approx(0.75)


def test_bernstein_hand_computed() -> None:
    e = estimate(tiny_log(rewards=[1.0, 0.0, 0.5, 0.0]), TARGET, "ips", "bernstein", level=0.9)
    c = np.array([2.0, 0.0, 0.3125, 0.0])
    # bound on w: max over all candidates of pi / mu = 1 / 0.25 = 4 -> range [0, 4]
    log_term = math.log(4 / 0.1)  # delta = 0.1 split over two sides
    radius = math.sqrt(2 * c.var(ddof=1) * log_term / 4) + 7 * 4 * log_term / (3 * 3)
    assert e.ci_low == pytest.approx(max(0.0, c.mean() - radius))
    assert e.ci_high == pytest.approx(min(4.0, c.mean() + radius))


def test_unsupported_mass_and_flags() -> None:
    log = tiny_log(pmfs=[[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]], chosen=[0, 0, 0, 0])
    target = np.array([[0.0, 1.0], [0.5, 0.5], [0.0, 1.0], [0.0, 1.0]])
    e = estimate(log, target, "ips")
    # b: probability 0 in e1, e2 and never chosen anywhere -> all mass on b is unsupported
    assert e.diagnostics.unsupported_mass == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    assert "unsupported_mass" in e.flags
    assert "mean_weight_far_from_1" in e.flags


def test_extreme_weight_flag() -> None:
    n = 400
    pmf = np.tile([0.001, 0.999], (n, 1))
    chosen = np.ones(n, dtype=np.int64)
    chosen[0] = 0
    data = EventData.from_arrays(np.ones(n), chosen, pmf)
    target = np.tile([1.0, 0.0], (n, 1))
    e = estimate(data, target, "ips")
    assert e.diagnostics.max_weight == pytest.approx(1000)
    assert {"extreme_weight", "tiny_ess"} <= set(e.flags)


def test_from_log_uses_action_ids_not_columns() -> None:
    log = BanditLog.from_records(
        [
            {"event_id": "1", "action_ids": ["a", "b"], "pmf": [0.5, 0.5], "chosen": 0, "reward": 1.0},
            {"event_id": "2", "action_ids": ["b", "a", "c"], "pmf": [0.5, 0.25, 0.25], "chosen": 1, "reward": 0.0},
        ]
    )
    data = EventData.from_log(log)
    assert data.n_codes == 3
    assert data.codes[1, 1] == data.codes[0, 0]  # "a" in both rows
    assert data.codes[0, 2] == -1


def test_bootstrap_is_seeded_and_matches_normal_for_a_mean() -> None:
    rng = np.random.default_rng(3)
    x = rng.random(20000)
    reps = resample_statistic(x, lambda m: m[:, 0], n_resamples=400, seed=11)
    again = resample_statistic(x, lambda m: m[:, 0], n_resamples=400, seed=11)
    np.testing.assert_array_equal(reps, again)
    assert reps.std() == pytest.approx(x.std() / math.sqrt(x.size), rel=0.12)
    assert reps.mean() == pytest.approx(x.mean(), abs=3 * x.std() / math.sqrt(x.size))


def test_refit_bootstrap_label() -> None:
    e = estimate(tiny_log(), TARGET, "dr", "bootstrap", n_folds=2, n_resamples=20, refit=True)
    assert e.interval == "bootstrap-refit"
    f = estimate(tiny_log(), TARGET, "dr", "bootstrap", n_folds=2, n_resamples=20, refit=False)
    assert f.interval == "bootstrap"


def _with(row: int, value: list[float]) -> np.ndarray:
    t = TARGET.copy()
    t[row] = value
    return t


INVALID = [
    ({"target_pmf": np.ones((4, 3)) / 3}, "target_pmf must have the log's shape"),
    ({"target_pmf": _with(0, [0.5, 0.4])}, "target_pmf rows must sum to 1; row 0 sums to 0.9"),
    ({"target_pmf": _with(1, [math.nan, 1.0])}, "target_pmf contains NaN"),
    ({"target_pmf": _with(2, [1.5, -0.5])}, "negative probabilities"),
    ({"level": 0.0}, "level must be in (0, 1)"),
    ({"level": 1.0}, "level must be in (0, 1)"),
    ({"level": math.nan}, "level must be in (0, 1)"),
    ({"method": "magic"}, "unknown method 'magic'"),
    ({"interval": "jackknife"}, "unknown interval 'jackknife'"),
    ({"reward_range": (1.0, 0.0)}, "reward_range must be finite with low < high"),
    ({"features": np.ones((3, 2))}, "features must be (n=4, d)"),
    ({"features": np.full((4, 1), math.inf)}, "features contain NaN"),
    ({"method": "dm", "interval": "bernstein"}, "bernstein needs a-priori bounded contributions"),
    ({"method": "replay"}, "replay needs uniformly logged data"),
    ({"method": "dr", "n_folds": 1}, "n_folds must be at least 2"),
    ({"method": "dr", "n_folds": 5}, "cross-fitting needs at least n_folds=5 events"),
    ({"interval": "bernstein", "reward_range": (0.0, 0.9)}, "bernstein needs every reward inside reward_range"),
    ({"interval": "bootstrap", "n_resamples": 5}, "n_resamples must be at least 10"),
    ({"method": "switch_dr", "switch_tau": 0.0}, "switch_tau must be > 0"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID)
def test_invalid_inputs(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"target_pmf": TARGET, "method": "ips", **kwargs}
    target = args.pop("target_pmf")
    with pytest.raises(EstimatorError) as info:
        estimate(tiny_log(), target, **args)  # type: ignore[arg-type]
    assert message in str(info.value)


INVALID_ARRAYS = [
    ({"reward": [1.0, math.nan]}, "reward contains NaN"),
    ({"logging_pmf": [[0.5, 0.5]]}, "logging_pmf must be (n=2, A)"),
    ({"logging_pmf": [[0.6, 0.6], [0.5, 0.5]]}, "logging_pmf rows must sum to 1"),
    ({"logging_pmf": [[1.0, 0.0], [0.5, 0.5]], "chosen": [1, 0]}, "a chosen action has logged probability 0"),
    ({"chosen": [0, 2]}, "chosen index outside the candidate set"),
    ({"chosen": [0.0, 1.0]}, "chosen must be (2,) integers"),
    ({"mask": [[True, False], [True, True]]}, "logging_pmf puts mass on padding"),
    ({"reward": [[1.0, 0.0]]}, "reward must be one-dimensional"),
]


@pytest.mark.parametrize(("kwargs", "message"), INVALID_ARRAYS)
def test_invalid_arrays(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"reward": [1.0, 0.0], "chosen": [0, 1], "logging_pmf": [[0.5, 0.5], [0.5, 0.5]], **kwargs}
    with pytest.raises(EstimatorError) as info:
        EventData.from_arrays(**args)  # type: ignore[arg-type]
    assert message in str(info.value)


def test_empty_log_is_refused() -> None:
    with pytest.raises(EstimatorError, match="no events"):
        EventData.from_arrays(np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros((0, 2)))


def test_public_surface() -> None:
    assert {"estimate", "contributions", "EventData", "Estimate", "Diagnostics", "RidgeRewardModel"} <= set(est.__all__)


# ---------------------------------------------------------------- the fast paths equal the plain formulas


def _softmax_log(seed: int, n: int = 3000, a: int = 6) -> tuple[EventData, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 2))
    logits = x @ rng.normal(size=(2, a))
    mu = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pi = np.exp(3 * logits) / np.exp(3 * logits).sum(axis=1, keepdims=True)
    chosen = np.array([rng.choice(a, p=row) for row in mu])
    r = (rng.random(n) < 0.2 + 0.5 * x[:, 0] * (chosen % 2)).astype(np.float64)
    return EventData.from_arrays(r, chosen, mu, features=x), pi


@dataclass(frozen=True)
class _PredictOnly:
    """The ridge seen only through fit/predict (no ``linear``, no ``influence``): the generic path."""

    inner: RidgeRewardModel = RidgeRewardModel()

    def fit(self, features, actions, rewards, n_codes, sample_weight=None):  # type: ignore[no-untyped-def]
        fitted = self.inner.fit(features, actions, rewards, n_codes, sample_weight)
        return _Predictor(fitted.predict)


@dataclass(frozen=True)
class _Predictor:
    predict: object


@pytest.mark.parametrize("method", ["dr", "switch_dr"])
def test_linear_fast_path_equals_predictions(method: str) -> None:
    """sum_j pi_ij q_ij through pi^T C (no (n, A) predictions) equals the (n, A) prediction path."""
    data, pi = _softmax_log(4)
    fast = contributions(data, pi, method, seed=2, switch_tau=3.0)
    slow = contributions(data, pi, method, seed=2, switch_tau=3.0, reward_model=_PredictOnly())
    np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-13)
    # DM's plug-in, and the influence-carrying contributions against the formula with predictions
    model = RidgeRewardModel()
    fitted = model.fit(data.features, data.chosen_codes, data.reward, data.n_codes)
    q = fitted.predict(data.features, data.codes)
    np.testing.assert_allclose(DirectMethod(model).plug_in(data, pi), (pi * q).sum(axis=1), rtol=1e-12)
    dm = contributions(data, pi, "dm")
    by_formula = (pi * q).sum(axis=1) + fitted.influence(data, pi, q[np.arange(data.n), data.chosen])
    np.testing.assert_allclose(dm, by_formula, rtol=1e-12, atol=1e-13)


def test_reward_models_are_fitted_once_per_log_and_shared() -> None:
    """DR and switch-DR (and every target) on one EventData share the cross-fitted models."""
    calls: list[str] = []

    @dataclass(frozen=True)
    class Counting:
        inner: RidgeRewardModel = RidgeRewardModel()

        def fit(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append("fit")
            return self.inner.fit(*args, **kwargs)

        def fit_folds(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            calls.append("fit_folds")
            return self.inner.fit_folds(*args, **kwargs)

    data, pi = _softmax_log(5)
    model = Counting()
    first = estimate(data, pi, "dr", reward_model=model)
    estimate(data, pi, "switch_dr", reward_model=model)
    estimate(data, np.full_like(pi, 1 / pi.shape[1]), "dr", reward_model=model)
    estimate(data, pi, "dm", reward_model=model)
    estimate(data, pi, "dm", reward_model=model)
    assert calls == ["fit_folds", "fit"]
    again = estimate(EventData.from_arrays(data.reward, data.chosen, data.logging_pmf, features=data.features), pi,
                     "dr", reward_model=model)
    assert calls == ["fit_folds", "fit", "fit_folds"]  # a new log fits anew
    assert again == first
    estimate(data, pi, "dr", reward_model=model, seed=9)  # other folds: refitted
    assert calls[-1] == "fit_folds" and len(calls) == 4


def test_replay_match_equals_the_drawn_action() -> None:
    """The two-cdf-entry test equals drawing the target's action and comparing (padding included)."""
    rng = np.random.default_rng(8)
    n, a = 5000, 5
    pi = rng.random((n, a)) * (rng.random((n, a)) < 0.7)
    pi[:, 2] += 0.01
    pi /= pi.sum(axis=1, keepdims=True)
    chosen = rng.integers(0, a, n)
    r = rng.random(n)
    data = EventData.from_arrays(r, chosen, np.full((n, a), 1 / a))
    got = contributions(data, pi, "replay", seed=4)
    draw_rng = np.random.default_rng(4)
    cdf = np.cumsum(pi, axis=1)
    u = draw_rng.random(n)[:, None] * cdf[:, -1:]
    match = np.minimum((cdf <= u).sum(axis=1), a - 1) == chosen
    value = r[match].mean()
    np.testing.assert_allclose(got.mean(), value, rtol=1e-12)
    np.testing.assert_allclose(got, value + match * (r - value) / match.mean(), rtol=1e-12)


def test_resample_statistic_is_the_poisson_weight_matrix_product() -> None:
    """Blocked resampling draws the same weights as poisson_weight_chunks: W @ values, exactly."""
    from analysis.intervals import poisson_weight_chunks

    rng = np.random.default_rng(1)
    cols = rng.random((10_000, 2))  # not a multiple of the 4096-event chunk
    got = resample_statistic(cols, lambda m: m, n_resamples=37, seed=5)  # nor of the 16-resample block
    centre = cols.mean(axis=0)
    work = np.column_stack([cols - centre, np.ones(len(cols))]).astype(np.float32)
    acc = np.zeros((37, 3))
    for events, weights in poisson_weight_chunks(len(cols), 37, 5):
        acc += weights @ work[events]
    np.testing.assert_array_equal(got, centre + acc[:, :2] / np.maximum(acc[:, 2:], 1.0))
