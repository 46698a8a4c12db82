"""Logs that know only the chosen propensity (Open Bandit Dataset "bts"), end to end: a synthetic file
in the OBD CSV layout, read by ``read_obd_csv``, estimated by ``estimate``."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from analysis.estimators import EstimatorError, EventData, contributions, estimate
from analysis.health import check_logging
from analysis.log import BanditLog
from analysis.tabular import read_obd_csv

N_ITEMS = 4
# the "bts" logger's per-position marginal pmf, by user segment (u0, u1): non-uniform, so the file
# is read as chosen_only, and different per segment, so propensities vary within a position
LOGGING = {
    "u0": np.array([[0.55, 0.25, 0.15, 0.05], [0.4, 0.3, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25]]),
    "u1": np.array([[0.1, 0.2, 0.3, 0.4], [0.05, 0.15, 0.3, 0.5], [0.3, 0.1, 0.3, 0.3]]),
}
CLICK = {"u0": np.array([0.05, 0.1, 0.3, 0.2]), "u1": np.array([0.2, 0.05, 0.1, 0.4])}


def write_bts(tmp_path: Path, n: int, *, seed: int = 0, logged_factor: float = 1.0) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """An OBD-layout file of ``n`` rows drawn from LOGGING; ``propensity_score`` is the true marginal
    times ``logged_factor`` (1 = right). Returns the data file, item_context.csv and each event's true pmf."""
    rng = np.random.default_rng(seed)
    header = ["", "timestamp", "item_id", "position", "click", "propensity_score", "user_feature_0"]
    header += [f"user-item_affinity_{j}" for j in range(N_ITEMS)]
    lines: list[list[str]] = [header]
    true_pmf: dict[str, np.ndarray] = {}
    for i in range(n):
        user = "u1" if rng.random() < 0.4 else "u0"
        position = i % 3 + 1
        pmf = LOGGING[user][position - 1]
        item = int(rng.choice(N_ITEMS, p=pmf))
        click = int(rng.random() < CLICK[user][item])
        true_pmf[str(i)] = pmf
        lines.append([str(i), str(1_574_553_600 + i), str(item), str(position), str(click),
                      repr(float(pmf[item]) * logged_factor), user] + ["0.0"] * N_ITEMS)
    data = tmp_path / "bts.csv"
    with open(data, "w", newline="") as stream:
        csv.writer(stream).writerows(lines)
    items = tmp_path / "item_context.csv"
    with open(items, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["", "item_id", "item_feature_0"])
        for j in range(N_ITEMS):
            writer.writerow([j, j, repr(j / 10)])
    return data, items, true_pmf


@pytest.fixture(scope="module")
def bts(tmp_path_factory: pytest.TempPathFactory) -> tuple[BanditLog, BanditLog, np.ndarray]:
    """The chosen-only log read from the file, the same events with their whole pmf, segment features."""
    data, items, true_pmf = write_bts(tmp_path_factory.mktemp("bts"), 3000)
    log = read_obd_csv(data, item_context=items)
    full = np.array([true_pmf[e] for e in log.event_ids])
    assert list(log.action_ids[0]) == [str(j) for j in range(N_ITEMS)]  # columns are items 0..3
    whole = dataclasses.replace(log, logging_pmf=full, meta={**log.meta, "logging_pmf": "uniform"})
    segment = np.array([[c["user"]["user_feature_0"] == "u1"] for c in log.contexts], dtype=np.float64)
    return log, whole, segment


def _targets(log: BanditLog, segment: np.ndarray) -> dict[str, np.ndarray]:
    n = log.n
    by_segment = np.where(segment == 1.0, np.array([[0.0, 0.0, 0.2, 0.8]]), np.array([[0.1, 0.1, 0.7, 0.1]]))
    return {"item2": np.tile(np.eye(N_ITEMS)[2], (n, 1)), "by_segment": by_segment}


def test_obd_bts_file_is_read_as_chosen_only(bts: tuple[BanditLog, BanditLog, np.ndarray]) -> None:
    log, _, segment = bts
    assert log.meta["logging_pmf"] == "chosen_only"
    data = EventData.from_log(log, segment)
    assert data.chosen_only
    assert not EventData.from_log(bts[1], segment).chosen_only
    np.testing.assert_array_equal(data.logging_pmf.sum(axis=1), log.propensity)  # rows sum below 1: accepted


@pytest.mark.parametrize("method", ["ips", "snips", "dm", "dr", "switch_dr"])
def test_estimates_equal_those_with_the_whole_pmf(bts: tuple[BanditLog, BanditLog, np.ndarray], method: str) -> None:
    """The estimators read only the chosen propensity: knowing the rest of the pmf changes no number."""
    log, whole, segment = bts
    chosen_only, full = EventData.from_log(log, segment), EventData.from_log(whole, segment)
    for target in _targets(log, segment).values():
        a = estimate(chosen_only, target, method, seed=3)
        b = estimate(full, target, method, seed=3)
        assert (a.value, a.stderr, a.ci_low, a.ci_high) == (b.value, b.stderr, b.ci_low, b.ci_high)
        assert a.diagnostics == b.diagnostics
        np.testing.assert_array_equal(
            contributions(chosen_only, target, method, seed=3), contributions(full, target, method, seed=3)
        )
    boot_a = estimate(chosen_only, target, method, "bootstrap", seed=3, n_resamples=200, refit=False)
    boot_b = estimate(full, target, method, "bootstrap", seed=3, n_resamples=200, refit=False)
    assert (boot_a.ci_low, boot_a.ci_high) == (boot_b.ci_low, boot_b.ci_high)


def test_ips_on_the_file_is_the_formula_and_covers_the_truth(bts: tuple[BanditLog, BanditLog, np.ndarray]) -> None:
    log, _, segment = bts
    target = _targets(log, segment)["item2"]
    e = estimate(log, target, "ips")
    by_hand = (log.chosen == 2) * log.reward / log.propensity  # w_i r_i with w_i = 1[a_i = 2] / p_i
    assert e.value == pytest.approx(by_hand.mean(), rel=1e-12)
    truth = float(np.where(segment[:, 0] == 1.0, CLICK["u1"][2], CLICK["u0"][2]).mean())
    for method in ("ips", "snips", "dr"):
        est = estimate(log, target, method, features=segment)
        assert est.ci_low <= truth <= est.ci_high, (method, est, truth)


@pytest.mark.parametrize("method", ["ips", "snips", "dr", "switch_dr"])
def test_bernstein_is_refused_naming_the_field(bts: tuple[BanditLog, BanditLog, np.ndarray], method: str) -> None:
    log, whole, segment = bts
    target = _targets(log, segment)["item2"]
    with pytest.raises(EstimatorError, match="knows only the chosen propensity") as info:
        estimate(log, target, method, "bernstein")
    assert info.value.field == "logging_pmf"
    estimate(whole, target, method, "bernstein")  # the same events with the whole pmf: fine


def test_replay_is_refused_naming_the_field(bts: tuple[BanditLog, BanditLog, np.ndarray]) -> None:
    log, _, segment = bts
    with pytest.raises(EstimatorError, match="replay needs the whole") as info:
        estimate(log, _targets(log, segment)["item2"], "replay")
    assert info.value.field == "logging_pmf"


def test_unsupported_mass_counts_only_actions_never_chosen() -> None:
    # item "c" is never chosen: target mass there is unsupported; 0 elsewhere in the rows is "unknown"
    n = 40
    chosen = np.arange(n) % 2
    pmf = np.zeros((n, 3))
    pmf[np.arange(n), chosen] = 0.4
    data = EventData.from_arrays(np.ones(n), chosen, pmf, chosen_only=True)
    target = np.tile([0.25, 0.25, 0.5], (n, 1))
    e = estimate(data, target, "ips")
    assert e.diagnostics.unsupported_mass == pytest.approx(0.5)
    e = estimate(data, np.tile([0.5, 0.5, 0.0], (n, 1)), "ips")
    assert e.diagnostics.unsupported_mass == 0.0 and "unsupported_mass" not in e.flags


@pytest.mark.parametrize(
    ("pmf", "message"),
    [
        ([[0.7, 0.6], [0.5, 0.0]], "logging_pmf rows must sum to at most 1; row 0 sums to 1.3"),
        ([[0.5, -0.1], [0.5, 0.0]], "negative probabilities"),
        ([[np.nan, 0.0], [0.5, 0.0]], "logging_pmf contains NaN"),
        ([[0.0, 0.5], [0.5, 0.0]], "a chosen action has logged probability 0"),
    ],
)
def test_chosen_only_arrays_still_validated(pmf: list[list[float]], message: str) -> None:
    with pytest.raises(EstimatorError, match=message.replace("(", "\\(").replace(")", "\\)")):
        EventData.from_arrays([1.0, 0.0], [0, 0], pmf, chosen_only=True)


def test_health_check_of_the_file(tmp_path: Path) -> None:
    """Right propensities pass the inverse-propensity check; propensities logged at half their value fail."""
    data, items, _ = write_bts(tmp_path, 3000, seed=1)
    health = check_logging(read_obd_csv(data, item_context=items))
    assert health.ok, health.flagged
    assert {r.check for r in health.rows} == {"inverse_propensity"}
    assert {r.arm for r in health.rows} == {"", "position-1", "position-2", "position-3"}
    halved, items, _ = write_bts(tmp_path, 3000, seed=1, logged_factor=0.5)
    bad = check_logging(read_obd_csv(halved, item_context=items))
    assert {(r.arm, r.action) for r in bad.flagged} >= {("", str(j)) for j in range(N_ITEMS)}
    assert all(r.z > 4 and r.expected < r.observed for r in bad.flagged)  # more choices than logged
