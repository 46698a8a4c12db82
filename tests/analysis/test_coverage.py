"""Bias and coverage of the estimators and intervals by seeded simulation.

Synthetic logs with a known true target value: contexts x ~ U[0, 1]^2, mean
reward q(x, a) = 0.15 + 0.7 x.theta_a (linear, so the ridge reward model on x is
correctly specified), rewards Bernoulli(q) or Beta with mean q (bounded,
continuous). The true value E_x sum_a pi(a|x) q(x, a) is integrated on a
400 x 400 midpoint grid (error ~1e-6, far below any standard error here).

Regimes (CI-sized here; ``python benchmarks/estimators.py --coverage`` runs
more repetitions):

* ``uniform``: uniform logging, 5 actions, stochastic target, Bernoulli rewards.
  Every interval covers in [93%, 97%] (at 400 reps: +-2.2pp).
* ``softmax``: context-dependent logging anti-correlated with the target
  (weights up to ~8), Beta rewards. Same.
* ``poor_overlap``: the logger gives the target's favourite action 1% (weights
  up to 95, n = 300). Documented regime: the normal interval of IPS covers
  clearly less than 95% (measured 85%) because the sample variance misses the
  rare huge weights, and DR's likewise (84%); the empirical Bernstein interval
  covers >= 95% (conservative: 100%, and 3x wider). Switch-DR (tau = 20) hands
  the favourite action to a reward model that has almost no data on it: biased
  (-0.09) with a narrow interval that covers ~8%. Do not trust switch-DR where
  the switched-off events are the ones that matter.

Bernstein intervals are finite-sample bounds: they cover >= 95% everywhere,
typically ~100%, at 2-3x the width of the normal interval.

Also: Open Bandit Pipeline's DM interval (normal on sum_j pi_ij q_ij with the
model held fixed) under-covers badly; ours (with the model's influence
function, or refitting in the bootstrap) covers ~95%.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from analysis.estimators import DirectMethod, EventData, RidgeRewardModel, estimate

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


def softmax(scores: np.ndarray, temperature: float) -> np.ndarray:
    z = scores / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def uniform_policy(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return np.full(q.shape, 1.0 / q.shape[1])


def target_policy(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return softmax(q, 0.05)


def anti_logging(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    return softmax(-q, 0.25)


def poor_logging(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    # the target's favourite action (argmax q) gets 1%, the rest share 99%
    a = q.shape[1]
    best = q.argmax(axis=1)
    pmf = np.full(q.shape, 0.99 / (a - 1))
    pmf[np.arange(q.shape[0]), best] = 0.01
    return pmf


def greedy_target(x: np.ndarray, q: np.ndarray) -> np.ndarray:
    a = q.shape[1]
    pmf = np.full(q.shape, 0.05 / (a - 1))
    pmf[np.arange(q.shape[0]), q.argmax(axis=1)] = 0.95
    return pmf


@dataclass(frozen=True)
class Scenario:
    """A synthetic logging/target pair with known true target value."""

    name: str
    n: int
    n_actions: int
    reward: str  # "bernoulli" | "beta"
    logging: Policy
    target: Policy
    theta_seed: int = 7

    @property
    def theta(self) -> np.ndarray:
        t = np.random.default_rng(self.theta_seed).random((2, self.n_actions))
        return t / t.sum(axis=0, keepdims=True)  # x.theta in [0, 1]

    def mean_reward(self, x: np.ndarray) -> np.ndarray:
        return 0.15 + 0.7 * (x @ self.theta)

    def true_value(self) -> float:
        g = (np.arange(400) + 0.5) / 400
        xx, yy = np.meshgrid(g, g)
        x = np.column_stack([xx.ravel(), yy.ravel()])
        q = self.mean_reward(x)
        return float((self.target(x, q) * q).sum(axis=1).mean())

    def draw(self, seed: int, n: int | None = None) -> tuple[EventData, np.ndarray]:
        """A log of ``n`` events and the target pmf on it."""
        rng = np.random.default_rng(seed)
        size = n or self.n
        x = rng.random((size, 2))
        q = self.mean_reward(x)
        mu = self.logging(x, q)
        cdf = np.cumsum(mu, axis=1)
        chosen = np.minimum((cdf < rng.random(size)[:, None] * cdf[:, -1:]).sum(axis=1), self.n_actions - 1)
        mean = q[np.arange(size), chosen]
        if self.reward == "bernoulli":
            r = (rng.random(size) < mean).astype(np.float64)
        else:
            kappa = 3.0  # Beta(kappa q, kappa (1 - q)): mean q, values in [0, 1]
            r = rng.beta(kappa * mean, kappa * (1 - mean))
        return EventData.from_arrays(r, chosen, mu, features=x), self.target(x, q)


SCENARIOS = {
    "uniform": Scenario("uniform", 1000, 5, "bernoulli", uniform_policy, target_policy),
    "softmax": Scenario("softmax", 1000, 5, "beta", anti_logging, target_policy),
    "poor_overlap": Scenario("poor_overlap", 300, 10, "bernoulli", poor_logging, greedy_target),
}

CELLS: dict[str, list[tuple[str, str]]] = {
    "uniform": [("ips", "normal"), ("snips", "normal"), ("dm", "normal"), ("dr", "normal"),
                ("replay", "normal"), ("ips", "bernstein"), ("snips", "bootstrap"), ("dr", "bootstrap")],
    "softmax": [("ips", "normal"), ("snips", "normal"), ("dm", "normal"), ("dr", "normal"),
                ("switch_dr", "normal"), ("ips", "bernstein"), ("dr", "bernstein"), ("ips", "bootstrap")],
    "poor_overlap": [("ips", "normal"), ("ips", "bernstein"), ("snips", "bernstein"), ("dr", "normal"),
                     ("switch_dr", "normal")],
}


def run_coverage(
    scenario: Scenario, cells: list[tuple[str, str]], reps: int, n_resamples: int = 200, seed0: int = 0
) -> dict[tuple[str, str], tuple[float, float, float]]:
    """{(method, interval): (coverage, mean bias, mean width)} over ``reps`` seeded logs."""
    truth = scenario.true_value()
    hits = {c: 0 for c in cells}
    bias = {c: 0.0 for c in cells}
    width = {c: 0.0 for c in cells}
    for rep in range(reps):
        data, pi = scenario.draw(seed0 + rep)
        for method, interval in cells:
            e = estimate(data, pi, method, interval, seed=rep, n_resamples=n_resamples, refit=False)
            hits[(method, interval)] += e.ci_low <= truth <= e.ci_high
            bias[(method, interval)] += (e.value - truth) / reps
            width[(method, interval)] += (e.ci_high - e.ci_low) / reps
    return {c: (hits[c] / reps, bias[c], width[c]) for c in cells}


def _check_regime(name: str, reps: int) -> dict[tuple[str, str], tuple[float, float, float]]:
    result = run_coverage(SCENARIOS[name], CELLS[name], reps)
    print(name, {f"{m}/{i}": (round(c, 3), round(b, 4), round(w, 3)) for (m, i), (c, b, w) in result.items()})
    return result


REPS = 250  # a 95% interval's coverage has sd 1.38pp; [0.92, 0.98] is +-2.2 sd


def test_coverage_good_overlap_bernoulli() -> None:
    result = _check_regime("uniform", REPS)
    for cell, (cover, bias, _) in result.items():
        if cell[1] == "bernstein":
            assert cover >= 0.95, (cell, cover)  # finite-sample bound: conservative by design
        else:
            assert 0.92 <= cover <= 0.98, (cell, cover)
        assert abs(bias) < 0.006, (cell, bias)  # se of the mean bias over 300 reps is ~0.002


def test_coverage_softmax_logging_beta_rewards() -> None:
    result = _check_regime("softmax", REPS)
    for cell, (cover, bias, _) in result.items():
        if cell[1] == "bernstein":
            assert cover >= 0.95, (cell, cover)
        else:
            assert 0.92 <= cover <= 0.98, (cell, cover)
        if cell[0] != "switch_dr":
            assert abs(bias) < 0.006, (cell, bias)


def test_poor_overlap_regime_is_documented() -> None:
    """Normal IPS under-covers with rare huge weights; empirical Bernstein keeps >= 95%."""
    result = _check_regime("poor_overlap", 300)
    ips_normal = result[("ips", "normal")][0]
    assert ips_normal < 0.92, ips_normal  # measured ~0.87: the documented failure
    assert result[("ips", "bernstein")][0] >= 0.95
    assert result[("snips", "bernstein")][0] >= 0.95
    # DR under-covers too (~84%): the correction term inherits IPS's rare huge weights
    assert 0.75 <= result[("dr", "normal")][0] < 0.92
    # switch-DR trusts the model where w > 20, i.e. on the target's favourite action,
    # which the logger almost never tried: the ridge model shrinks it towards the pooled
    # mean, so switch-DR is biased low (~-0.09) and its narrow interval misses (~8%).
    assert result[("switch_dr", "normal")][1] < -0.04
    assert result[("switch_dr", "normal")][0] < 0.5
    # IPS is unbiased whatever its interval does (se of this mean is ~0.022)
    assert abs(result[("ips", "normal")][1]) < 0.06


def test_obp_fixed_model_dm_interval_undercovers_ours_covers() -> None:
    """OBP: normal CI on sum_j pi_ij q_ij, model fixed. Ours adds the model's influence."""
    scenario = SCENARIOS["uniform"]
    truth = scenario.true_value()
    reps = 300
    dm = DirectMethod(RidgeRewardModel())
    obp_hits = ours_hits = 0
    z = 1.959963984540054
    for rep in range(reps):
        data, pi = scenario.draw(1000 + rep)
        plug = dm.plug_in(data, pi)
        half = z * plug.std(ddof=1) / math.sqrt(data.n)
        obp_hits += abs(plug.mean() - truth) <= half
        e = estimate(data, pi, "dm", "normal")
        ours_hits += e.ci_low <= truth <= e.ci_high
    assert obp_hits / reps < 0.6, obp_hits / reps
    assert 0.92 <= ours_hits / reps <= 0.98, ours_hits / reps


def test_dm_bootstrap_refit_covers() -> None:
    """Refitting the reward model inside the bootstrap: coverage near 95% (120 reps, +-4pp)."""
    scenario = SCENARIOS["uniform"]
    truth = scenario.true_value()
    reps = 120
    hits = 0
    for rep in range(reps):
        data, pi = scenario.draw(5000 + rep, n=300)
        e = estimate(data, pi, "dm", "bootstrap", n_resamples=100, seed=rep, refit=True)
        assert e.interval == "bootstrap-refit"
        hits += e.ci_low <= truth <= e.ci_high
    assert 0.88 <= hits / reps <= 0.99, hits / reps


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_truth_is_inside_reward_range(name: str) -> None:
    value = SCENARIOS[name].true_value()
    assert 0.15 < value < 0.85
