"""CSV / Parquet round trips of our layout, and the Open Bandit Dataset's CSV layout."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from analysis.dsjson import FormatError, read_dsjson, write_dsjson
from analysis.log import BanditLog
from analysis.tabular import (
    CSV_COLUMNS,
    read_csv,
    read_obd_csv,
    read_parquet,
    write_csv,
    write_parquet,
)
from bandits.policies import Candidate

BLOCKS = (Candidate("a", {"cat": "news", "promo": True}), Candidate("b, \"quoted\"", {"score": 0.25}), Candidate("c"))


def _log(*, with_features: bool = True) -> BanditLog:
    records = []
    for i in range(4):
        k = 3 if i % 2 == 0 else 2
        pmf = [[0.5, 0.3, 0.2], [0.9, 0.1]][i % 2]
        record = {
            "event_id": f"e{i}",
            "timestamp": math.nan if i == 3 else 1_700_000_000.123456 + i,
            "action_ids": [b.id for b in BLOCKS[:k]],
            "pmf": pmf,
            "chosen": i % k,
            "reward": [1.0, 0.0, 3.5, -1.25][i],
            "arm": ["", "control", "treatment", "control"][i],
            "learnable": i != 1,
        }
        if with_features:
            record["context"] = {"time": {"daypart": "morning", "weekend": i == 2}, "user": {"ü": "ß|:", "n": float(i)}}
            record["candidates"] = list(BLOCKS[:k])
        records.append(record)
    return BanditLog.from_records(records, meta={"slot": "home.hero", "reward_min": -2.0})


def _assert_same(back: BanditLog, log: BanditLog) -> None:
    assert list(back.event_ids) == list(log.event_ids)
    np.testing.assert_array_equal(back.timestamps, log.timestamps)  # exact, NaN included
    assert (back.action_ids == log.action_ids).all()
    np.testing.assert_array_equal(back.action_mask, log.action_mask)
    np.testing.assert_array_equal(back.logging_pmf, log.logging_pmf)
    np.testing.assert_array_equal(back.chosen, log.chosen)
    np.testing.assert_array_equal(back.reward, log.reward)
    assert list(back.arms) == list(log.arms)
    np.testing.assert_array_equal(back.learnable, log.learnable)
    assert back.contexts == log.contexts
    assert back.candidates == log.candidates


@pytest.mark.parametrize("with_features", [True, False])
def test_csv_round_trip(tmp_path: Path, with_features: bool) -> None:
    log = _log(with_features=with_features)
    path = tmp_path / "log.csv"
    assert write_csv(log, path) == 4
    back = read_csv(path)
    _assert_same(back, log)
    if with_features:
        assert back.contexts[2]["time"]["weekend"] is True and back.contexts[2]["user"]["ü"] == "ß|:"
    else:
        assert back.contexts == () and back.candidates == ()
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["time_utc"] == "2023-11-14T22:13:20.123456Z"
    assert rows[1]["chosen_id"] == 'b, "quoted"' and json.loads(rows[1]["pmf"]) == [0.9, 0.1]


def test_parquet_round_trip_keeps_meta(tmp_path: Path) -> None:
    pyarrow = pytest.importorskip("pyarrow")
    log = _log()
    path = tmp_path / "log.parquet"
    assert write_parquet(log, path) == 4
    back = read_parquet(path)
    _assert_same(back, log)
    assert back.meta["slot"] == "home.hero" and back.meta["reward_min"] == -2.0
    assert back.meta["format"] == "parquet"
    schema = pyarrow.parquet.read_schema(path)
    assert schema.field("action_ids").type.value_type == pyarrow.string()
    assert schema.field("pmf").type.value_type == pyarrow.float64()


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _good_rows(tmp_path: Path) -> list[dict[str, str]]:
    path = tmp_path / "good.csv"
    write_csv(_log(), path)
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


BAD_CSV = [
    ("chosen", "x", "chosen", "not an integer"),
    ("chosen", "7", "chosen", "outside 0..2"),
    ("chosen_id", "zzz", "chosen_id", "'zzz' is not action_ids[2] = 'c'"),
    ("propensity", "0.4", "propensity", "disagrees with pmf[chosen]"),
    ("reward", "nan", "reward", "not a finite number"),
    ("pmf", "[0.5, 0.5]", "pmf", "one probability in [0, 1] per action id"),
    ("pmf", "[0.5, 0.3", "pmf", "not valid JSON"),
    ("action_ids", "[]", "action_ids", "non-empty JSON list"),
    ("context", '["x"]', "context", "group -> {name: value}"),
    ("candidate_features", "[{}]", "candidate_features", "one feature object per action id"),
    ("learnable", "yes", "learnable", "0 or 1"),
]


@pytest.mark.parametrize(("column", "value", "field", "message"), BAD_CSV)
def test_bad_csv_cells_name_line_and_column(tmp_path: Path, column: str, value: str, field: str, message: str) -> None:
    rows = _good_rows(tmp_path)
    rows[2][column] = value  # the third event: line 4 of the file (after the header)
    path = tmp_path / "bad.csv"
    _write_rows(path, rows)
    with pytest.raises(FormatError, match=re.escape(message)) as info:
        read_csv(path)
    assert (info.value.line, info.value.field) == (4, field)


def test_missing_column_is_named(tmp_path: Path) -> None:
    rows = [{k: v for k, v in row.items() if k != "reward"} for row in _good_rows(tmp_path)]
    path = tmp_path / "bad.csv"
    _write_rows(path, rows)
    with pytest.raises(FormatError, match="missing columns \\['reward'\\]"):
        read_csv(path)


# ---------------------------------------------------------------- Open Bandit Dataset fixture


def _write_obd(tmp_path: Path, *, propensity: str | None = None, n_items: int = 4) -> tuple[Path, Path]:
    """A small file in the OBD layout: unnamed index column, timestamps with offsets, 3 positions."""
    rng = np.random.default_rng(7)
    header = ["", "timestamp", "item_id", "position", "click", "propensity_score"]
    header += [f"user_feature_{j}" for j in range(2)] + [f"user-item_affinity_{j}" for j in range(n_items)]
    lines = [header]
    for i in range(30):
        item = int(rng.integers(n_items))
        minute = 59 - i  # written newest first: the reader sorts by time
        row = [
            str(i),
            f"2019-11-24 00:{minute:02d}:17.628107+00:00",
            str(item),
            str(i % 3 + 1),
            str(int(rng.random() < 0.3)),
            propensity or repr(1.0 / n_items),
            f"81ce{i % 2}",
            "c5f7",
        ]
        row += [repr(float(j == item)) if i % 4 == 0 else "0.0" for j in range(n_items)]
        lines.append(row)
    data = tmp_path / "all.csv"
    with open(data, "w", newline="") as stream:
        csv.writer(stream).writerows(lines)
    items = tmp_path / "item_context.csv"
    with open(items, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["", "item_id", "item_feature_0", "item_feature_1"])
        for j in range(n_items):
            writer.writerow([j, j, repr(-0.5 + j / 10), f"h{j % 2}"])
    return data, items


def test_obd_random_campaign_has_the_exact_uniform_pmf(tmp_path: Path) -> None:
    data, items = _write_obd(tmp_path)
    log = read_obd_csv(data, n_positions=3, item_context=items)
    assert log.n == 30 and log.max_actions == 4
    assert log.meta["logging_pmf"] == "uniform" and log.meta["n_items"] == 4
    np.testing.assert_allclose(log.logging_pmf, 0.25)
    assert (np.diff(log.timestamps) > 0).all()  # sorted by time
    assert log.event_ids[0] == "29"
    assert set(log.arms) == {"position-1", "position-2", "position-3"}
    assert set(log.reward) <= {0.0, 1.0}
    assert list(log.action_ids[0]) == ["0", "1", "2", "3"]
    assert log.candidates[0][1] == Candidate("1", {"item_feature_0": -0.4, "item_feature_1": "h1"})
    assert log.event_ids[-1] == "0"  # the first row of the file is the latest in time
    first = log.contexts[-1]["user"]
    assert first["user_feature_0"] == "81ce0" and first["position"] == "1"
    chosen = log.chosen_ids[-1]
    assert first[f"user-item_affinity_{chosen}"] == 1.0  # non-zero affinities kept, zeros dropped
    assert len([k for k in first if k.startswith("user-item")]) == 1


def test_obd_bts_campaign_keeps_only_the_chosen_propensity(tmp_path: Path) -> None:
    data, items = _write_obd(tmp_path, propensity="0.61")
    log = read_obd_csv(data, item_context=items)
    assert log.meta["logging_pmf"] == "chosen_only" and log.meta["n_positions"] == 3
    np.testing.assert_allclose(log.propensity, 0.61)
    np.testing.assert_allclose(log.logging_pmf.sum(axis=1), 0.61)  # the rest is unknown: 0
    # exported to DSJSON, "a"/"p" claim only the known propensity, and it reads back the same
    stream = io.StringIO()
    write_dsjson(log, stream)
    first = json.loads(stream.getvalue().splitlines()[0])
    assert first["a"] == [int(log.chosen[0]) + 1] and first["p"] == [0.61]
    assert len(first["c"]["_multi"]) == 4
    back = read_dsjson(stream.getvalue().splitlines())
    np.testing.assert_array_equal(back.logging_pmf, log.logging_pmf)
    assert back.meta["logging_pmf"] == "chosen_only"
    assert back.candidates == log.candidates and back.contexts == log.contexts
    forced = read_obd_csv(data, item_context=items, logging_pmf="uniform")
    np.testing.assert_allclose(forced.logging_pmf.sum(axis=1), 1.0)
    np.testing.assert_allclose(np.sort(forced.logging_pmf[0])[:3], 0.39 / 3)


def test_obd_without_item_context_uses_the_items_seen(tmp_path: Path) -> None:
    data, _ = _write_obd(tmp_path)
    log = read_obd_csv(data)
    seen = sorted({str(x) for x in log.chosen_ids}, key=int)
    assert list(log.action_ids[0]) == seen
    assert all(c.features == {} for c in log.candidates[0])


@pytest.mark.parametrize(
    ("column", "value", "field", "message"),
    [
        ("position", "4", "position", "outside 1..3"),
        ("position", "x", "position", "not a position number"),
        ("propensity_score", "0", "propensity_score", "not in (0, 1]"),
        ("click", "?", "click", "not a number"),
        ("timestamp", "soon", "timestamp", "neither epoch seconds nor ISO 8601"),
    ],
)
def test_obd_bad_rows(tmp_path: Path, column: str, value: str, field: str, message: str) -> None:
    data, items = _write_obd(tmp_path)
    with open(data, newline="") as stream:
        rows = list(csv.DictReader(stream))
    rows[4][column] = value
    _write_rows(data, rows)
    with pytest.raises(FormatError, match=re.escape(message)) as info:
        read_obd_csv(data, n_positions=3, item_context=items)
    assert (info.value.line, info.value.field) == (6, field)
