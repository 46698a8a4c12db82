"""Estimator objects, a fixed external reward model (q_hat), DRos and SNDR.

Hand-computed on the four-event log of ``test_estimators``; equal to Open Bandit
Pipeline's formulas (written out here from its documentation, not imported); bias
and coverage by seeded simulation on the regimes of ``test_coverage`` (CI-sized:
``python benchmarks/estimators.py --coverage --robust`` runs 1000 repetitions).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest

from analysis.compare import compare
from analysis.estimators import (
    IPS,
    SNDR,
    SNIPS,
    DirectMethod,
    DoublyRobust,
    DRos,
    EstimatorError,
    EventData,
    RidgeRewardModel,
    Slope,
    SubGaussianDR,
    SubGaussianIPS,
    SwitchDR,
    contributions,
    estimate,
)
from tests.analysis.test_coverage import SCENARIOS, Scenario
from tests.analysis.test_estimators import REWARDS, TARGET, tiny_log

# q_hat of the tiny log: the external model's prediction for each (event, candidate)
Q_HAT = np.array([[0.6, 0.4], [0.5, 0.5], [0.9, 0.2], [0.3, 0.7]])
W = np.array([2.0, 0.0, 0.625, 2.0])  # pi(a_i) / mu(a_i)
PLUG = np.array([0.6, 0.5, 0.55, 0.7])  # sum_j pi_ij q_ij
Q_CHOSEN = np.array([0.6, 0.5, 0.9, 0.7])  # q(x_i, a_i)
RESIDUAL = np.array(REWARDS) - Q_CHOSEN  # 0.4, -0.5, -0.4, 0.3


# ---------------------------------------------------------------- estimator objects beside the string methods


@pytest.mark.parametrize(
    ("obj", "name", "knobs"),
    [
        (IPS(), "ips", {}),
        (SNIPS(), "snips", {}),
        (DirectMethod(RidgeRewardModel(alpha=0.0)), "dm", {"reward_model": RidgeRewardModel(alpha=0.0)}),
        (DoublyRobust(RidgeRewardModel(alpha=0.0), n_folds=4), "dr",
         {"reward_model": RidgeRewardModel(alpha=0.0), "n_folds": 4}),
        (SwitchDR(RidgeRewardModel(alpha=0.0), n_folds=4, switch_tau=1.5), "switch_dr",
         {"reward_model": RidgeRewardModel(alpha=0.0), "n_folds": 4, "switch_tau": 1.5}),
    ],
)
def test_an_object_equals_its_string_method(obj: object, name: str, knobs: dict[str, object]) -> None:
    by_name = estimate(tiny_log(), TARGET, name, **knobs)  # type: ignore[arg-type]
    by_object = estimate(tiny_log(), TARGET, obj)  # type: ignore[arg-type]
    assert by_object == by_name
    assert by_object.method == name
    np.testing.assert_array_equal(contributions(tiny_log(), TARGET, obj), contributions(tiny_log(), TARGET, name, **knobs))  # type: ignore[arg-type]


def test_compare_takes_an_object_and_pairs_on_its_contributions() -> None:
    data, pi = SCENARIOS["softmax"].draw(3)
    uniform = np.full_like(pi, 1 / pi.shape[1])
    by_name = compare(data, {"target": pi}, uniform, method="dr", n_folds=3)
    by_object = compare(data, {"target": pi}, uniform, method=DoublyRobust(n_folds=3))
    assert by_object == by_name
    dros = compare(data, {"target": pi}, uniform, method=DRos(shrinkage=5.0))[0]
    d = contributions(data, pi, DRos(shrinkage=5.0)) - contributions(data, uniform, DRos(shrinkage=5.0))
    assert dros.difference == pytest.approx(d.mean(), rel=1e-12)
    assert dros.stderr == pytest.approx(d.std(ddof=1) / math.sqrt(data.n), rel=1e-9)
    assert dros.method == "dros"


# ---------------------------------------------------------------- q_hat: a fixed external reward model


def test_q_hat_dm_dr_switch_dr_hand_computed() -> None:
    dm = contributions(tiny_log(), TARGET, "dm", q_hat=Q_HAT)
    np.testing.assert_allclose(dm, PLUG)  # no model influence: the model is fixed
    dr = contributions(tiny_log(), TARGET, "dr", q_hat=Q_HAT)
    np.testing.assert_allclose(dr, [1.4, 0.5, 0.3, 1.3])  # PLUG + W * RESIDUAL
    assert estimate(tiny_log(), TARGET, "dr", q_hat=Q_HAT).value == pytest.approx(0.875)
    switch = contributions(tiny_log(), TARGET, SwitchDR(switch_tau=1.5), q_hat=Q_HAT)
    np.testing.assert_allclose(switch, [0.6, 0.5, 0.3, 0.7])  # w = 2 > 1.5: correction dropped
    # no cross-fitting: n_folds plays no part (n_folds=5 > n would be refused with a fitted model)
    np.testing.assert_allclose(contributions(tiny_log(), TARGET, "dr", q_hat=Q_HAT, n_folds=5), dr)
    # padding is ignored, and q_hat on EventData equals q_hat given to estimate()
    data = EventData.from_log(tiny_log(), q_hat=Q_HAT)
    assert estimate(data, TARGET, "dr") == estimate(tiny_log(), TARGET, "dr", q_hat=Q_HAT)


def test_q_hat_bootstrap_does_not_refit_and_dm_bernstein_uses_its_range() -> None:
    e = estimate(tiny_log(), TARGET, "dr", "bootstrap", q_hat=Q_HAT, n_resamples=50, refit=True)
    assert e.interval == "bootstrap"  # a fixed model: contributions resampled
    b = estimate(tiny_log(), TARGET, "dm", "bernstein", level=0.9, q_hat=Q_HAT)
    log_term = math.log(4 / 0.1)
    radius = math.sqrt(2 * PLUG.var(ddof=1) * log_term / 4) + 7 * (0.9 - 0.2) * log_term / (3 * 3)
    assert b.ci_low == pytest.approx(max(0.2, PLUG.mean() - radius))
    assert b.ci_high == pytest.approx(min(0.9, PLUG.mean() + radius))


# ---------------------------------------------------------------- DRos and SNDR: hand-computed and obp's formulas


def obp_dros(plug: np.ndarray, q_chosen: np.ndarray, w: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    """obp DoublyRobustWithShrinkage round rewards (its documented formula)."""
    w_hat = w if math.isinf(lam) else lam * w / (w**2 + lam)
    return plug + w_hat * (r - q_chosen)


def obp_sndr(plug: np.ndarray, q_chosen: np.ndarray, w: np.ndarray, r: np.ndarray) -> np.ndarray:
    """obp SelfNormalizedDoublyRobust round rewards (its documented formula)."""
    return plug + w * (r - q_chosen) / w.mean()


def test_dros_hand_computed() -> None:
    # lambda = 4: h(2) = 8 / 8 = 1, h(0) = 0, h(0.625) = 2.5 / 4.390625
    c = contributions(tiny_log(), TARGET, DRos(shrinkage=4.0), q_hat=Q_HAT)
    np.testing.assert_allclose(c, [0.6 + 0.4, 0.5, 0.55 - 0.4 * 2.5 / 4.390625, 0.7 + 0.3])
    np.testing.assert_allclose(c, obp_dros(PLUG, Q_CHOSEN, W, np.array(REWARDS), 4.0), rtol=1e-15)
    # the ends: inf is DR, 0 is the fixed-model plug-in
    np.testing.assert_allclose(contributions(tiny_log(), TARGET, DRos(math.inf), q_hat=Q_HAT),
                               contributions(tiny_log(), TARGET, "dr", q_hat=Q_HAT))
    np.testing.assert_allclose(contributions(tiny_log(), TARGET, DRos(0.0), q_hat=Q_HAT), PLUG)
    e = estimate(tiny_log(), TARGET, DRos(4.0), q_hat=Q_HAT)
    assert e.method == "dros" and e.value == pytest.approx(c.mean())
    assert e.diagnostics.max_weight == 2.0  # the diagnostics are of the raw weights


def test_dros_bernstein_range_uses_the_shrunk_weight_bound() -> None:
    # a-priori weight bound 4 (1 / 0.25); h_4 is largest at w = sqrt(4) = 2: h = 1
    e = estimate(tiny_log(), TARGET, DRos(4.0), "bernstein", level=0.9, q_hat=Q_HAT)
    c = contributions(tiny_log(), TARGET, DRos(4.0), q_hat=Q_HAT)
    lo, hi = 0.2 + 1.0 * (0.0 - 0.9), 0.9 + 1.0 * (1.0 - 0.2)
    log_term = math.log(4 / 0.1)
    radius = math.sqrt(2 * c.var(ddof=1) * log_term / 4) + 7 * (hi - lo) * log_term / (3 * 3)
    assert e.ci_low == pytest.approx(max(lo, c.mean() - radius))
    assert e.ci_high == pytest.approx(min(hi, c.mean() + radius))


def test_sndr_hand_computed_and_its_mean_is_obps() -> None:
    r = np.array(REWARDS)
    ratio = 1.15 / 4.625  # sum w (r - q) / sum w
    c = contributions(tiny_log(), TARGET, SNDR(), q_hat=Q_HAT)
    np.testing.assert_allclose(c, PLUG + ratio + W * (RESIDUAL - ratio) / (4.625 / 4))
    e = estimate(tiny_log(), TARGET, SNDR(), q_hat=Q_HAT)
    assert e.value == pytest.approx(0.5875 + ratio, rel=1e-15)
    assert e.value == pytest.approx(obp_sndr(PLUG, Q_CHOSEN, W, r).mean(), rel=1e-15)


def test_dros_and_sndr_equal_obp_formulas_on_a_cross_fitted_model() -> None:
    """Same inputs (the cross-fitted predictions of our ridge, obp's estimated_rewards_by_reg_model)."""
    data, pi = SCENARIOS["softmax"].draw(11)
    fold = np.random.default_rng(0).permutation(data.n) % 5  # the folds of seed 0
    q = np.empty(pi.shape)
    for k in range(5):
        inside = fold == k
        fitted = RidgeRewardModel().fit(data.features[~inside], data.chosen[~inside], data.reward[~inside], 5)
        q[inside] = fitted.predict(data.features[inside], np.broadcast_to(np.arange(5), (int(inside.sum()), 5)))
    rows = np.arange(data.n)
    plug, q_chosen = (pi * q).sum(axis=1), q[rows, data.chosen]
    w = pi[rows, data.chosen] / data.logging_pmf[rows, data.chosen]
    for lam in (0.5, 5.0, 50.0, math.inf):
        ours = contributions(data, pi, DRos(lam))
        np.testing.assert_allclose(ours, obp_dros(plug, q_chosen, w, data.reward, lam), rtol=1e-12, atol=1e-13)
        # and with the same predictions given as q_hat
        fixed = contributions(data, pi, DRos(lam), q_hat=q)
        np.testing.assert_allclose(fixed, ours, rtol=1e-12, atol=1e-13)
    sndr = estimate(data, pi, SNDR()).value
    assert sndr == pytest.approx(obp_sndr(plug, q_chosen, w, data.reward).mean(), rel=1e-13)


# ---------------------------------------------------------------- invalid inputs


INVALID: list[tuple[Callable[[], object], str, str]] = [
    (lambda: DRos(shrinkage=-1.0), "shrinkage", "shrinkage must be >= 0"),
    (lambda: DRos(shrinkage=math.nan), "shrinkage", "shrinkage must be >= 0"),
    (lambda: DRos(1.0, n_folds=1), "n_folds", "n_folds must be at least 2"),
    (lambda: SNDR(n_folds=1), "n_folds", "n_folds must be at least 2"),
    (lambda: DoublyRobust(n_folds=0), "n_folds", "n_folds must be at least 2"),
    (lambda: SNDR(reward_model=object()), "reward_model", "reward_model must have fit"),  # type: ignore[arg-type]
    (lambda: DRos(1.0, reward_model=object()), "reward_model", "reward_model must have fit"),  # type: ignore[arg-type]
    (lambda: estimate(tiny_log(), TARGET, DoublyRobust(), n_folds=3), "n_folds", "given beside the estimator"),
    (lambda: estimate(tiny_log(), TARGET, SNDR(), reward_model=RidgeRewardModel()), "reward_model",
     "given beside the estimator"),
    (lambda: compare(tiny_log(), {"t": TARGET}, TARGET, method=DRos(1.0), switch_tau=2.0), "switch_tau",
     "given beside the estimator"),
    (lambda: estimate(tiny_log(), TARGET, 42), "method", "method must be one of"),  # type: ignore[arg-type]
    (lambda: estimate(tiny_log(), TARGET, "dr", q_hat=np.ones((4, 3))), "q_hat", "q_hat must have the log's shape"),
    (lambda: estimate(tiny_log(), TARGET, "dr", q_hat=np.full((4, 2), math.nan)), "q_hat", "q_hat contains NaN"),
    (lambda: estimate(tiny_log(), TARGET, "dr", q_hat=Q_HAT, reward_model=RidgeRewardModel()), "q_hat",
     "both a reward model and q_hat"),
    (lambda: estimate(tiny_log(), TARGET, DRos(1.0, reward_model=RidgeRewardModel()), q_hat=Q_HAT), "q_hat",
     "both a reward model and q_hat"),
    (lambda: estimate(tiny_log(), TARGET, SNDR(), "bernstein", q_hat=Q_HAT), "interval",
     "bernstein needs a-priori bounded contributions"),
    (lambda: estimate(tiny_log(), TARGET, DRos(1.0, n_folds=5)), "n_folds", "cross-fitting needs at least"),
]


@pytest.mark.parametrize(("call", "field", "message"), INVALID)
def test_invalid_inputs(call: Callable[[], object], field: str, message: str) -> None:
    with pytest.raises(EstimatorError) as info:
        call()
    assert info.value.field == field
    assert message in str(info.value)


# ---------------------------------------------------------------- bias and coverage by simulation


def external_q(scenario: Scenario, data: EventData, seed: int) -> np.ndarray:
    """q_hat from a ridge fitted on an independent log of the same world (another week)."""
    other, _ = scenario.draw(seed, n=scenario.n)
    fitted = RidgeRewardModel().fit(other.features, other.chosen, other.reward, scenario.n_actions)
    return fitted.predict(data.features, np.broadcast_to(np.arange(scenario.n_actions), data.logging_pmf.shape))


QMaker = Callable[[Scenario, EventData, int], np.ndarray | None]


def run(scenario: Scenario, cells: dict[str, tuple[object, str, QMaker | None]], reps: int,
        seed0: int = 0) -> dict[str, tuple[float, float, float]]:
    """{label: (coverage, mean bias, mean width)} of 95% intervals over ``reps`` seeded logs."""
    truth = scenario.true_value()
    hits = dict.fromkeys(cells, 0)
    bias = dict.fromkeys(cells, 0.0)
    width = dict.fromkeys(cells, 0.0)
    for rep in range(reps):
        data, pi = scenario.draw(seed0 + rep)
        for label, (method, interval, make_q) in cells.items():
            q = None if make_q is None else make_q(scenario, data, 1_000_000 + seed0 + rep)
            e = estimate(data, pi, method, interval, seed=rep, q_hat=q, n_resamples=200, refit=False)  # type: ignore[arg-type]
            hits[label] += e.ci_low <= truth <= e.ci_high
            bias[label] += (e.value - truth) / reps
            width[label] += (e.ci_high - e.ci_low) / reps
    out = {c: (hits[c] / reps, bias[c], width[c]) for c in cells}
    print(scenario.name, {k: (round(c, 3), round(b, 4), round(w, 3)) for k, (c, b, w) in out.items()})
    return out


def _constant(value: float) -> QMaker:
    return lambda scenario, data, seed: np.full(data.logging_pmf.shape, value)


def _true_q(scenario: Scenario, data: EventData, seed: int) -> np.ndarray:
    return scenario.mean_reward(data.features)


ROBUST_CELLS: dict[str, dict[str, tuple[object, str, QMaker | None]]] = {
    "softmax": {
        "dros5": (DRos(5.0), "normal", None),
        "dros50": (DRos(50.0), "normal", None),
        "sndr": (SNDR(), "normal", None),
        "sndr/bootstrap": (SNDR(), "bootstrap", None),
        "dr/q_hat-external": ("dr", "normal", external_q),
        "dr/q_hat-wrong": ("dr", "normal", _constant(0.5)),
        "sndr/q_hat-wrong": (SNDR(), "normal", _constant(0.5)),
        "dm/q_hat-true": ("dm", "normal", _true_q),
        "dm/q_hat-wrong": ("dm", "normal", _constant(0.5)),
    },
    "poor_overlap": {
        "dr": ("dr", "normal", None),
        "dros5": (DRos(5.0), "normal", None),
        "sndr": (SNDR(), "normal", None),
    },
}


def test_coverage_robust_estimators_softmax() -> None:
    result = run(SCENARIOS["softmax"], ROBUST_CELLS["softmax"], 250)
    for label in ("sndr", "sndr/bootstrap", "dr/q_hat-external", "dr/q_hat-wrong", "sndr/q_hat-wrong",
                  "dm/q_hat-true"):
        cover, bias, _ = result[label]
        assert 0.92 <= cover <= 0.98, (label, cover)  # 250 reps: sd 1.4pp
        assert abs(bias) < 0.006, (label, bias)
    # DM with a wrong fixed model: its interval is conditional on the model, and the model is wrong
    cover, bias, _ = result["dm/q_hat-wrong"]
    assert cover < 0.2 and abs(bias) > 0.05, (cover, bias)
    # DRos: nearly unbiased here (a well-specified model), but its normal interval treats the
    # cross-fitted model as fixed; with strong shrinkage the plug-in dominates and the model's
    # own error, first order for DM, is missed: documented under-coverage (measured 58%, 78%)
    for label in ("dros5", "dros50"):
        cover, bias, width = result[label]
        assert abs(bias) < 0.01, (label, bias)
        assert cover < 0.9, (label, cover)
        assert width < result["sndr"][2]
    assert result["dros5"][0] < result["dros50"][0]  # more shrinkage, more of DM's problem


def test_dros_bootstrap_refit_puts_the_model_error_back() -> None:
    """Refitting the cross-fitted model in each resample restores most of the missing
    width (measured at n = 1000, 100 resamples, 100 reps: 89% for DRos(5), 91% for DRos(50));
    CI-sized here (n = 500, 60 resamples, 60 reps): well above the normal interval."""
    scenario = SCENARIOS["softmax"]
    truth = scenario.true_value()
    refit = normal = 0
    reps = 60
    for rep in range(reps):
        data, pi = scenario.draw(rep, n=500)
        e = estimate(data, pi, DRos(5.0), "bootstrap", seed=rep, n_resamples=60, refit=True)
        assert e.interval == "bootstrap-refit"
        refit += e.ci_low <= truth <= e.ci_high
        n = estimate(data, pi, DRos(5.0), "normal", seed=rep)
        normal += n.ci_low <= truth <= n.ci_high
    print("dros5 coverage: bootstrap-refit", refit / reps, "normal", normal / reps)
    assert refit / reps >= 0.75 and refit / reps >= normal / reps + 0.15, (refit / reps, normal / reps)


def test_poor_overlap_dros_trades_coverage_for_variance() -> None:
    """Documented regime: weights up to 95 on the target's favourite action (n = 300).
    DRos(5) shrinks those corrections towards the model: 30x narrower than DR, biased
    low like switch-DR (-0.09: the ridge knows little of that action), and its interval
    misses (7%). SNDR stays nearly unbiased (+0.003) but its delta-method interval, like
    SNIPS's, misses the rare huge weights: 55% (DR's normal interval: 85%)."""
    result = run(SCENARIOS["poor_overlap"], ROBUST_CELLS["poor_overlap"], 150)
    assert result["dros5"][2] < result["dr"][2]  # narrower
    assert result["dros5"][1] < -0.02  # biased low
    assert result["dros5"][0] < 0.9
    assert result["sndr"][0] < 0.8 and abs(result["sndr"][1]) < 0.03


# ---------------------------------------------------------------- sub-Gaussian IPS / DR, clipped IPS, SLOPE


def obp_sg_weight(w: np.ndarray, lam: float) -> np.ndarray:
    """obp SubGaussian* importance weight (its documented formula)."""
    return w / (1 - lam + lam * w)


def test_sub_gaussian_ips_and_dr_hand_computed() -> None:
    # lambda = 0.5: w / (0.5 + 0.5 w) -> 2 / 1.5, 0, 0.625 / 0.8125, 2 / 1.5
    h = np.array([4 / 3, 0.0, 0.625 / 0.8125, 4 / 3])
    ips = contributions(tiny_log(), TARGET, SubGaussianIPS(0.5))
    np.testing.assert_allclose(ips, h * np.array(REWARDS))
    np.testing.assert_allclose(ips, obp_sg_weight(W, 0.5) * np.array(REWARDS), rtol=1e-15)
    dr = contributions(tiny_log(), TARGET, SubGaussianDR(0.5), q_hat=Q_HAT)
    np.testing.assert_allclose(dr, PLUG + h * RESIDUAL)
    # lambda = 0 is IPS / DR; the diagnostics carry the mean smoothed weight
    np.testing.assert_allclose(contributions(tiny_log(), TARGET, SubGaussianIPS(0.0)), contributions(tiny_log(), TARGET, "ips"))
    np.testing.assert_allclose(contributions(tiny_log(), TARGET, SubGaussianDR(0.0), q_hat=Q_HAT),
                               contributions(tiny_log(), TARGET, "dr", q_hat=Q_HAT))
    e = estimate(tiny_log(), TARGET, SubGaussianIPS(0.5))
    assert dict(e.diagnostics.details)["mean_smoothed_weight"] == pytest.approx(h.mean())
    # bernstein: a-priori weight bound 4 -> smoothed 4 / 2.5 = 1.6, rewards in [0, 1]
    b = estimate(tiny_log(), TARGET, SubGaussianIPS(0.5), "bernstein", level=0.9)
    c = h * np.array(REWARDS)
    log_term = math.log(4 / 0.1)
    radius = math.sqrt(2 * c.var(ddof=1) * log_term / 4) + 7 * 1.6 * log_term / (3 * 3)
    assert b.ci_high == pytest.approx(min(1.6, c.mean() + radius))


def test_clipped_ips_hand_computed() -> None:
    c = contributions(tiny_log(), TARGET, IPS(clip=1.5))
    np.testing.assert_allclose(c, np.minimum(W, 1.5) * np.array(REWARDS))  # 1.5, 0, 0.3125, 1.5


def slope_rule(values: list[float], widths: list[float]) -> int:
    """Algorithm 1 of Su, Srinath & Krishnamurthy (2020), written out pairwise: sorted by
    decreasing width, the last i whose [V_i +- 2 c_i] meets every earlier [V_j +- 2 c_j]."""
    order = sorted(range(len(values)), key=lambda k: -widths[k])
    chosen = order[0]
    for pos, i in enumerate(order):
        if all(abs(values[i] - values[j]) <= 2 * (widths[i] + widths[j]) for j in order[:pos]):
            chosen = i
        else:
            break
    return chosen


def test_slope_follows_its_rule_and_names_the_choice() -> None:
    from scipy import stats

    for name, seed in (("softmax", 1), ("poor_overlap", 2), ("uniform", 3)):
        data, pi = SCENARIOS[name].draw(seed)
        for slope in (Slope.switch_dr(), Slope.clipped_ips(), Slope.dros()):
            chosen, results = slope.select(data, pi, (0.0, 1.0), 0)
            t = stats.t.ppf(0.95, data.n - 1)
            values = [float(r.values.mean()) for r in results]
            widths = [float(t * r.values.std(ddof=1) / math.sqrt(data.n)) for r in results]
            assert chosen == slope_rule(values, widths), (name, slope.name)
            e = estimate(data, pi, slope)
            assert e.method == slope.name
            assert e.value == pytest.approx(values[chosen], rel=1e-12)
            details = dict(e.diagnostics.details)
            assert details["selected_index"] == chosen
            assert isinstance(details["selected"], str) and "=" in str(details["selected"])


def test_slope_keeps_the_unbiased_candidate_when_the_biased_one_disagrees() -> None:
    # 400 events logged as the pmf says (a chosen 1 time in 4, w = 4 there), action 0 pays 1:
    # IPS = 1 exactly; clipping at 1 gives 0.25, far outside both widths -> IPS is kept
    n = 400
    pmf = np.tile([0.25, 0.75], (n, 1))
    chosen = np.array([0, 1, 1, 1] * (n // 4))
    reward = np.where(chosen == 0, 1.0, 0.0)
    data = EventData.from_arrays(reward, chosen, pmf)
    target = np.tile([1.0, 0.0], (n, 1))
    e = estimate(data, target, Slope((IPS(), IPS(clip=1.0))))
    assert dict(e.diagnostics.details)["selected"] == "ips(clip=inf)"
    assert e.value == pytest.approx(1.0)
    # identical candidates (a threshold above every weight): either is the same estimate
    same = estimate(data, target, Slope((IPS(clip=50.0), IPS())))
    assert same.value == e.value


INVALID_MORE: list[tuple[Callable[[], object], str, str]] = [
    (lambda: SubGaussianIPS(-0.1), "smoothing", "smoothing must be in [0, 1]"),
    (lambda: SubGaussianIPS(1.5), "smoothing", "smoothing must be in [0, 1]"),
    (lambda: SubGaussianIPS(math.nan), "smoothing", "smoothing must be in [0, 1]"),
    (lambda: SubGaussianDR(2.0), "smoothing", "smoothing must be in [0, 1]"),
    (lambda: SubGaussianDR(0.1, n_folds=1), "n_folds", "n_folds must be at least 2"),
    (lambda: IPS(clip=0.0), "clip", "clip must be > 0"),
    (lambda: IPS(clip=math.nan), "clip", "clip must be > 0"),
    (lambda: Slope((IPS(),)), "candidates", "at least two candidate"),
    (lambda: Slope((IPS(), "ips")), "candidates", "is not an estimator"),  # type: ignore[arg-type]
    (lambda: Slope((IPS(), IPS(2.0)), delta=0.0), "delta", "delta must be in (0, 1)"),
    (lambda: Slope.switch_dr(n_folds=1), "n_folds", "n_folds must be at least 2"),
]


@pytest.mark.parametrize(("call", "field", "message"), INVALID_MORE)
def test_invalid_inputs_sub_gaussian_and_slope(call: Callable[[], object], field: str, message: str) -> None:
    with pytest.raises(EstimatorError) as info:
        call()
    assert info.value.field == field
    assert message in str(info.value)


SELECTION_CELLS: dict[str, tuple[object, str, QMaker | None]] = {
    "ips": ("ips", "normal", None),
    "sg_ips(1/sqrt n)": (SubGaussianIPS(1 / math.sqrt(1000)), "normal", None),
    "sg_dr(0.1)": (SubGaussianDR(0.1), "normal", None),
    "slope_switch_dr": (Slope.switch_dr(), "normal", None),
    "slope_clipped_ips": (Slope.clipped_ips(), "normal", None),
}


def test_sub_gaussian_and_slope_bias_and_coverage_are_documented() -> None:
    """Softmax regime (weights up to ~8, 100 reps). Measured (150 reps): IPS 95% / -0.007;
    sub-Gaussian IPS at lambda = 1/sqrt(n) 53% / -0.059 (it pulls the large weights
    down: biased low, and the interval is centred on the biased value); sub-Gaussian DR
    at 0.1 83% / -0.004 (the model absorbs most of the bias); SLOPE over switch-DR
    thresholds picks tau = 1 on every log (the model is right, so every candidate agrees)
    and covers 48% (the narrow interval ignores the model's error, as DRos's does);
    SLOPE over IPS clipping picks clip 5 (131/150) or 2: bias -0.107, covers 5%: Lepski's
    rule lets a bias as large as the noisier candidates' widths through (its guarantee
    is an oracle inequality up to a constant, not coverage)."""
    result = run(SCENARIOS["softmax"], SELECTION_CELLS, 100)
    assert 0.9 <= result["ips"][0] <= 0.99
    assert result["sg_ips(1/sqrt n)"][1] < -0.03 and result["sg_ips(1/sqrt n)"][0] < 0.8
    assert abs(result["sg_dr(0.1)"][1]) < 0.01
    assert abs(result["slope_switch_dr"][1]) < 0.015 and result["slope_switch_dr"][0] < 0.8
    assert result["slope_clipped_ips"][1] < -0.05 and result["slope_clipped_ips"][0] < 0.3
    for label in ("sg_ips(1/sqrt n)", "slope_clipped_ips", "slope_switch_dr"):
        assert result[label][2] < result["ips"][2]  # what they buy: narrower


# ---------------------------------------------------------------- evaluate() with an estimator object or q_hat


def _evaluation_log(n: int = 600) -> tuple[object, np.ndarray]:
    from analysis.log import BanditLog

    rng = np.random.default_rng(4)
    records = []
    for i in range(n):
        chosen = int(rng.integers(3))
        records.append({"event_id": f"e{i}", "timestamp": 1.7e9 + 600 * i, "action_ids": ["b0", "b1", "b2"],
                        "pmf": [1 / 3] * 3, "chosen": chosen,
                        "reward": float(rng.random() < (0.6 if chosen == 1 else 0.2))})
    return BanditLog.from_records(records), np.array([0.2, 0.6, 0.2])


def test_evaluate_takes_an_estimator_object_and_q_hat() -> None:
    from analysis.evaluation import evaluate
    from analysis.replay import fixed_target

    log, means = _evaluation_log()
    by_name = evaluate(log, {}, online_model=None, default_block="b1", method="dr", time_buckets=None)  # type: ignore[arg-type]
    by_object = evaluate(log, {}, online_model=None, default_block="b1", method=DoublyRobust(), time_buckets=None)  # type: ignore[arg-type]
    for a, b in zip(by_name.policies, by_object.policies, strict=True):
        assert a.estimate.value == pytest.approx(b.estimate.value, rel=1e-12)
    dros = evaluate(log, {}, online_model=None, default_block="b1", method=DRos(10.0), time_buckets="day")  # type: ignore[arg-type]
    assert dros.method == "dros" and dros.policy("baseline").method == "dros"
    assert dros.series and "baseline" in dros.series[-1].values
    q = np.tile(means, (600, 1))
    fixed = evaluate(log, {}, online_model=None, default_block="b1", method="dm", q_hat=q, time_buckets=None)  # type: ignore[arg-type]
    assert fixed.policy("baseline").estimate.value == pytest.approx(0.6)  # DM with the true means
    e = estimate(log, fixed_target(log, "b1"), "dm", q_hat=q)  # type: ignore[arg-type]
    assert fixed.policy("baseline").estimate == e
    with pytest.raises(EstimatorError) as info:
        evaluate(log, {}, online_model=None, default_block="b1", method=42, time_buckets=None)  # type: ignore[arg-type]
    assert info.value.field == "method"
