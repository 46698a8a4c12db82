"""A :class:`BanditLog` as a table: our CSV and Parquet layout, and the Open Bandit Dataset's CSV.

Our layout (``write_csv`` / ``read_csv``, ``write_parquet`` / ``read_parquet``)
has one row per event, in log order:

==================== ============================================================
column               meaning
==================== ============================================================
event_id             unique event id
timestamp            seconds since the Unix epoch, UTC (float; empty = unknown)
time_utc             the same instant as ISO 8601 (for people; ignored on read)
arm                  experiment arm or policy name ("" when none)
chosen               0-based index of the chosen block in ``action_ids``
chosen_id            its id (checked against ``action_ids[chosen]`` on read)
propensity           the logged probability of the chosen block (checked)
reward               the (aggregated) reward
learnable            1, or 0 for events VW must skip (deferred, never activated)
action_ids           JSON list of candidate block ids, in candidate order
pmf                  JSON list of logged probabilities aligned with action_ids
context              JSON object ``{"time": {...}, "device": {...}, ...}``; empty
                     when the log carries no contexts
candidate_features   JSON list of feature objects aligned with action_ids; empty
                     when the log carries no candidate features
==================== ============================================================

JSON keeps feature types exactly (strings, bools, numbers), so a log round
trips. Parquet has the same columns with native types where they are
uniform (``action_ids`` list<string>, ``pmf`` list<double>, ``learnable``
bool, ``timestamp`` double) and JSON strings for the feature columns (their
values mix strings, bools and numbers); the log's ``meta`` travels in the
Parquet schema metadata under ``slotbandit.meta``. Parquet needs
``pyarrow`` (the ``parquet`` extra), imported only when used.

Open Bandit Dataset (``read_obd_csv``; Saito et al. 2021, "Open Bandit
Dataset and Pipeline", arXiv:2008.07146). Its ``{policy}/{campaign}.csv``
has one row per item shown at one position: ``timestamp, item_id,
position, click, propensity_score, user_feature_0.., user-item_affinity_0..``
(an unnamed index column first); ``item_context.csv`` has ``item_id,
item_feature_0..``. Each row becomes one event, each position its own
decision problem (``arm`` = ``"position-<k>"``): candidates are all items
(from ``item_context.csv`` when given, else the item ids seen), the reward
is the click, the context is ``{"user": {user_feature_k: str,
"user-item_affinity_j": float (non-zero only), "position": "<k>"}}``.
The propensity is the per-position marginal probability of the shown item.
For the "random" campaign the logging policy is uniform, so the whole
logging pmf is known exactly (1/A everywhere); for "bts" only the chosen
item's propensity is known: the pmf row then holds that propensity and 0
elsewhere (rows do not sum to 1) and ``meta["logging_pmf"] ==
"chosen_only"``. Estimators that need the full logging pmf (the health
check's expected counts) must then fall back to the chosen propensity.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np

from analysis.errors import FormatError, LogError
from analysis.log import BanditLog
from bandits.features import FeatureValue
from bandits.policies import Candidate

__all__ = [
    "CSV_COLUMNS",
    "read_csv",
    "read_obd_csv",
    "read_parquet",
    "write_csv",
    "write_parquet",
]

CSV_COLUMNS: tuple[str, ...] = (
    "event_id",
    "timestamp",
    "time_utc",
    "arm",
    "chosen",
    "chosen_id",
    "propensity",
    "reward",
    "learnable",
    "action_ids",
    "pmf",
    "context",
    "candidate_features",
)
_META_KEY = b"slotbandit.meta"


# ---------------------------------------------------------------- our layout


def _iso(timestamp: float) -> str:
    if not math.isfinite(timestamp):
        return ""
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _rows(log: BanditLog) -> Iterator[dict[str, Any]]:
    """Our columns per event with native Python values (lists, dicts) for the JSON columns."""
    learnable = log.learnable if log.learnable is not None else np.ones(log.n, dtype=bool)
    for row in range(log.n):
        k = int(log.action_mask[row].sum())
        ids = [str(x) for x in log.action_ids[row, :k]]
        chosen = int(log.chosen[row])
        context = (
            {group: dict(values) for group, values in log.contexts[row].items()} if log.contexts else None
        )
        features = [dict(c.features) for c in log.candidates[row]] if log.candidates else None
        if log.candidates and [c.id for c in log.candidates[row]] != ids:
            raise LogError(f"event {row}: candidates disagree with action_ids", field="candidates")
        yield {
            "event_id": str(log.event_ids[row]),
            "timestamp": float(log.timestamps[row]),
            "time_utc": _iso(float(log.timestamps[row])),
            "arm": str(log.arms[row]),
            "chosen": chosen,
            "chosen_id": ids[chosen],
            "propensity": float(log.logging_pmf[row, chosen]),
            "reward": float(log.reward[row]),
            "learnable": bool(learnable[row]),
            "action_ids": ids,
            "pmf": [float(p) for p in log.logging_pmf[row, :k]],
            "context": context,
            "candidate_features": features,
        }


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"), allow_nan=False)


def write_csv(log: BanditLog, path: str | os.PathLike[str]) -> int:
    """Write ``log`` in our CSV layout (module docstring); returns the number of events."""
    with open(path, "w", encoding="utf-8", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(CSV_COLUMNS)
        for record in _rows(log):
            writer.writerow(
                [
                    record["event_id"],
                    repr(record["timestamp"]) if math.isfinite(record["timestamp"]) else "",
                    record["time_utc"],
                    record["arm"],
                    record["chosen"],
                    record["chosen_id"],
                    repr(record["propensity"]),
                    repr(record["reward"]),
                    1 if record["learnable"] else 0,
                    _json(record["action_ids"]),
                    _json(record["pmf"]),
                    _json(record["context"]),
                    _json(record["candidate_features"]),
                ]
            )
    return log.n


def _cell_json(text: str, *, line: int, field: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise FormatError(f"not valid JSON: {error.msg}", line=line, field=field) from error


def _cell_float(text: str, *, line: int, field: str, allow_empty: bool = False) -> float:
    if allow_empty and text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError as error:
        raise FormatError(f"{text!r} is not a number", line=line, field=field) from error
    if not math.isfinite(value):
        raise FormatError(f"{text!r} is not a finite number", line=line, field=field)
    return value


def _event_record(values: Mapping[str, Any], *, line: int) -> dict[str, Any]:
    """Check one row (JSON columns already decoded) and turn it into a ``from_records`` dict."""
    ids = values["action_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise FormatError("must be a non-empty JSON list of strings", line=line, field="action_ids")
    pmf = values["pmf"]
    if (
        not isinstance(pmf, list)
        or len(pmf) != len(ids)
        or not all(isinstance(p, int | float) and not isinstance(p, bool) and 0.0 <= p <= 1.0 for p in pmf)
    ):
        raise FormatError("must list one probability in [0, 1] per action id", line=line, field="pmf")
    chosen = values["chosen"]
    if not 0 <= chosen < len(ids):
        raise FormatError(f"{chosen} is outside 0..{len(ids) - 1}", line=line, field="chosen")
    if values.get("chosen_id") not in (None, "") and values["chosen_id"] != ids[chosen]:
        raise FormatError(
            f"{values['chosen_id']!r} is not action_ids[{chosen}] = {ids[chosen]!r}", line=line, field="chosen_id"
        )
    propensity = values.get("propensity")
    if propensity is not None and not math.isnan(propensity) and abs(propensity - pmf[chosen]) > 1e-9:
        raise FormatError(f"{propensity} disagrees with pmf[chosen] = {pmf[chosen]}", line=line, field="propensity")
    if not 0.0 < pmf[chosen] <= 1.0:
        raise FormatError(f"logged propensity {pmf[chosen]} is not in (0, 1]", line=line, field="pmf")
    record: dict[str, Any] = {
        "event_id": values["event_id"],
        "timestamp": values["timestamp"],
        "action_ids": ids,
        "pmf": [float(p) for p in pmf],
        "chosen": chosen,
        "reward": values["reward"],
        "arm": values["arm"],
        "learnable": values["learnable"],
    }
    context = values.get("context")
    if context is not None:
        if not isinstance(context, dict) or not all(isinstance(v, dict) for v in context.values()):
            raise FormatError("must be a JSON object of group -> {name: value}", line=line, field="context")
        record["context"] = context
    features = values.get("candidate_features")
    if features is not None:
        if not isinstance(features, list) or len(features) != len(ids) or not all(isinstance(f, dict) for f in features):
            raise FormatError("must list one feature object per action id", line=line, field="candidate_features")
        record["candidates"] = [Candidate(i, f) for i, f in zip(ids, features, strict=True)]
    return record


def _build(records: list[dict[str, Any]], meta: dict[str, Any]) -> BanditLog:
    if any("context" in r for r in records) and not all("context" in r for r in records):
        raise FormatError("context must be given for every event or for none", field="context")
    if any("candidates" in r for r in records) and not all("candidates" in r for r in records):
        raise FormatError("candidate_features must be given for every event or for none", field="candidate_features")
    try:
        return BanditLog.from_records(records, meta=meta)
    except LogError as error:
        raise FormatError(str(error), field=error.field) from error


def read_csv(path: str | os.PathLike[str]) -> BanditLog:
    """Read our CSV layout; a bad cell raises :class:`FormatError` naming its line and column."""
    source = os.fspath(path)
    records: list[dict[str, Any]] = []
    with open(source, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in CSV_COLUMNS if c != "time_utc" and c not in (reader.fieldnames or ())]
        if missing:
            raise FormatError(f"missing columns {missing}", line=1, field=missing[0])
        for row in reader:
            line = reader.line_num
            chosen_text = row["chosen"]
            if not chosen_text.lstrip("-").isdigit():
                raise FormatError(f"{chosen_text!r} is not an integer", line=line, field="chosen")
            if row["learnable"] not in ("0", "1"):
                raise FormatError("must be 0 or 1", line=line, field="learnable")
            values = {
                "event_id": row["event_id"],
                "timestamp": _cell_float(row["timestamp"], line=line, field="timestamp", allow_empty=True),
                "arm": row["arm"],
                "chosen": int(chosen_text),
                "chosen_id": row["chosen_id"],
                "propensity": _cell_float(row["propensity"], line=line, field="propensity", allow_empty=True),
                "reward": _cell_float(row["reward"], line=line, field="reward"),
                "learnable": row["learnable"] == "1",
                "action_ids": _cell_json(row["action_ids"], line=line, field="action_ids"),
                "pmf": _cell_json(row["pmf"], line=line, field="pmf"),
                "context": _cell_json(row["context"], line=line, field="context") if row["context"] else None,
                "candidate_features": (
                    _cell_json(row["candidate_features"], line=line, field="candidate_features")
                    if row["candidate_features"]
                    else None
                ),
            }
            records.append(_event_record(values, line=line))
    return _build(records, {"format": "csv", "source": source})


# ---------------------------------------------------------------- Parquet


def _pyarrow() -> Any:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet
    except ImportError as error:  # pragma: no cover - exercised only without pyarrow
        raise ImportError(
            "Parquet support needs pyarrow: pip install 'slotbandit[parquet]' (or pip install pyarrow)"
        ) from error
    return pyarrow


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def write_parquet(log: BanditLog, path: str | os.PathLike[str]) -> int:
    """Write ``log`` as Parquet in our layout (needs pyarrow); returns the number of events."""
    pa = _pyarrow()
    records = list(_rows(log))
    columns: dict[str, Any] = {
        "event_id": pa.array([r["event_id"] for r in records], pa.string()),
        "timestamp": pa.array([r["timestamp"] for r in records], pa.float64()),
        "time_utc": pa.array([r["time_utc"] for r in records], pa.string()),
        "arm": pa.array([r["arm"] for r in records], pa.string()),
        "chosen": pa.array([r["chosen"] for r in records], pa.int64()),
        "chosen_id": pa.array([r["chosen_id"] for r in records], pa.string()),
        "propensity": pa.array([r["propensity"] for r in records], pa.float64()),
        "reward": pa.array([r["reward"] for r in records], pa.float64()),
        "learnable": pa.array([r["learnable"] for r in records], pa.bool_()),
        "action_ids": pa.array([r["action_ids"] for r in records], pa.list_(pa.string())),
        "pmf": pa.array([r["pmf"] for r in records], pa.list_(pa.float64())),
        "context": pa.array([_json(r["context"]) or None for r in records], pa.string()),
        "candidate_features": pa.array([_json(r["candidate_features"]) or None for r in records], pa.string()),
    }
    table = pa.table(columns)
    meta = json.dumps(dict(log.meta), default=_json_default).encode("utf-8")
    table = table.replace_schema_metadata({_META_KEY: meta})
    pa.parquet.write_table(table, os.fspath(path))
    return log.n


def read_parquet(path: str | os.PathLike[str]) -> BanditLog:
    """Read a Parquet file in our layout (needs pyarrow). Errors name the row (1-based) and column."""
    pa = _pyarrow()
    source = os.fspath(path)
    table = pa.parquet.read_table(source)
    missing = [c for c in CSV_COLUMNS if c != "time_utc" and c not in table.column_names]
    if missing:
        raise FormatError(f"missing columns {missing}", field=missing[0])
    data = {name: table.column(name).to_pylist() for name in CSV_COLUMNS if name in table.column_names}
    records = []
    for row in range(table.num_rows):
        line = row + 1
        values = {name: data[name][row] for name in data}
        for name in ("context", "candidate_features"):
            text = values[name]
            values[name] = _cell_json(text, line=line, field=name) if text else None
        for name in ("reward",):
            if values[name] is None or not math.isfinite(values[name]):
                raise FormatError("must be a finite number", line=line, field=name)
        values["timestamp"] = math.nan if values["timestamp"] is None else float(values["timestamp"])
        values["propensity"] = math.nan if values["propensity"] is None else float(values["propensity"])
        values["learnable"] = True if values["learnable"] is None else bool(values["learnable"])
        values["arm"] = values["arm"] or ""
        records.append(_event_record(values, line=line))
    meta: dict[str, Any] = {}
    stored = (table.schema.metadata or {}).get(_META_KEY)
    if stored:
        meta.update(json.loads(stored.decode("utf-8")))
    meta.update({"format": "parquet", "source": source})
    return _build(records, meta)


# ---------------------------------------------------------------- Open Bandit Dataset

_INDEX_COLUMNS = frozenset({"", "Unnamed: 0", "id", "index"})


def _obd_value(text: str) -> FeatureValue:
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _obd_timestamp(text: str, *, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    except ValueError as error:
        raise FormatError(f"{text!r} is neither epoch seconds nor ISO 8601", line=line, field="timestamp") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _item_ids(text: str, *, line: int, field: str) -> str:
    # item ids are integers in OBD; "3" and "3.0" must name the same item
    try:
        number = float(text)
    except ValueError:
        return text.strip()
    if number != int(number):
        raise FormatError(f"{text!r} is not an item index", line=line, field=field)
    return str(int(number))


def _read_item_context(path: str) -> tuple[Candidate, ...]:
    candidates: list[Candidate] = []
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        if "item_id" not in (reader.fieldnames or ()):
            raise FormatError("missing column item_id", line=1, field="item_id")
        for row in reader:
            item = _item_ids(row["item_id"], line=reader.line_num, field="item_id")
            features = {
                name: _obd_value(value)
                for name, value in row.items()
                if name not in _INDEX_COLUMNS and name != "item_id" and value != ""
            }
            candidates.append(Candidate(item, features))
    ids = [c.id for c in candidates]
    if len(set(ids)) != len(ids):
        raise FormatError(f"duplicate item ids in {path}", field="item_id")
    return tuple(sorted(candidates, key=_item_order))


def _item_order(candidate: Candidate) -> tuple[int, int | str]:
    return (0, int(candidate.id)) if candidate.id.isdigit() else (1, candidate.id)


def read_obd_csv(
    path: str | os.PathLike[str],
    *,
    n_positions: int | None = None,
    item_context: str | os.PathLike[str] | None = None,
    logging_pmf: Literal["auto", "uniform", "chosen_only"] = "auto",
) -> BanditLog:
    """Read an Open Bandit Dataset CSV (module docstring) into a :class:`BanditLog`.

    Args:
        path: ``{behavior_policy}/{campaign}.csv`` of the OBD, or a file in its layout.
        n_positions: the number of recommendation positions (3 in OBD); positions
            must be integers in 1..n_positions. ``None`` infers it as the largest seen.
        item_context: ``item_context.csv``; gives every item (the candidate set) and
            its features. Without it the candidates are the item ids seen, no features.
        logging_pmf: ``"uniform"`` (the "random" campaign: the shown item has its
            propensity, the rest share 1 - propensity equally), ``"chosen_only"``
            ("bts": only the shown item's propensity is known) or ``"auto"``:
            uniform when every propensity is 1/A, else chosen_only.

    Events are in time order (stable sort by timestamp); ``meta`` records
    ``logging_pmf``, ``n_positions``, ``n_items`` and the source.
    """
    if logging_pmf not in ("auto", "uniform", "chosen_only"):
        raise LogError(f"logging_pmf must be 'auto', 'uniform' or 'chosen_only', not {logging_pmf!r}",
                       field="logging_pmf")
    if n_positions is not None and (not isinstance(n_positions, int) or n_positions < 1):
        raise LogError("n_positions must be a positive integer", field="n_positions")
    source = os.fspath(path)
    rows: list[tuple[str, float, str, int, float, float, dict[str, FeatureValue]]] = []
    with open(source, encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        fields = list(reader.fieldnames or ())
        probability_column = "propensity_score" if "propensity_score" in fields else "action_prob"
        required = ("timestamp", "item_id", "position", "click", probability_column)
        missing = [c for c in required if c not in fields]
        if missing:
            raise FormatError(f"missing OBD columns {missing}", line=1, field=missing[0])
        index_column = next((c for c in fields if c in _INDEX_COLUMNS), None)
        user_columns = [c for c in fields if c.startswith("user_feature")]
        affinity_columns = [c for c in fields if c.startswith("user-item_affinity") or c.startswith("user_item_affinity")]
        for number, row in enumerate(reader):
            line = reader.line_num
            event_id = row[index_column] if index_column else str(number)
            position_text = row["position"]
            if not position_text.strip().isdigit():
                raise FormatError(f"{position_text!r} is not a position number", line=line, field="position")
            position = int(position_text)
            if position < 1 or (n_positions is not None and position > n_positions):
                raise FormatError(
                    f"position {position} outside 1..{n_positions or 'n'}", line=line, field="position"
                )
            click = _cell_float(row["click"], line=line, field="click")
            propensity = _cell_float(row[probability_column], line=line, field=probability_column)
            if not 0.0 < propensity <= 1.0:
                raise FormatError(f"{propensity} is not in (0, 1]", line=line, field=probability_column)
            user: dict[str, FeatureValue] = {c: row[c] for c in user_columns if row[c] != ""}
            for column in affinity_columns:
                value = _cell_float(row[column], line=line, field=column) if row[column] != "" else 0.0
                if value != 0.0:  # VW drops zero-weight features anyway; keeps the contexts small
                    user[column] = value
            user["position"] = str(position)
            rows.append(
                (
                    event_id,
                    _obd_timestamp(row["timestamp"], line=line),
                    _item_ids(row["item_id"], line=line, field="item_id"),
                    position,
                    click,
                    propensity,
                    user,
                )
            )

    if item_context is not None:
        candidates = _read_item_context(os.fspath(item_context))
    else:
        candidates = tuple(sorted((Candidate(i) for i in {r[2] for r in rows}), key=_item_order))
    index = {c.id: k for k, c in enumerate(candidates)}
    unknown = sorted({r[2] for r in rows} - set(index))
    if unknown:
        raise FormatError(f"item ids {unknown[:5]} are not in item_context", field="item_id")
    n_items = len(candidates)
    propensities = np.array([r[5] for r in rows], dtype=np.float64)
    mode = logging_pmf
    if mode == "auto":
        mode = "uniform" if len(rows) and np.allclose(propensities * n_items, 1.0, rtol=1e-6) else "chosen_only"

    order = sorted(range(len(rows)), key=lambda i: rows[i][1])
    ids = [c.id for c in candidates]
    records: list[dict[str, Any]] = []
    for i in order:
        event_id, timestamp, item, position, click, propensity, user = rows[i]
        chosen = index[item]
        if mode == "uniform":
            rest = (1.0 - propensity) / (n_items - 1) if n_items > 1 else 0.0
            pmf = [rest] * n_items
        else:
            pmf = [0.0] * n_items
        pmf[chosen] = propensity
        records.append(
            {
                "event_id": event_id,
                "timestamp": timestamp,
                "action_ids": ids,
                "pmf": pmf,
                "chosen": chosen,
                "reward": click,
                "arm": f"position-{position}",
                "context": {"user": user},
                "candidates": candidates,
            }
        )
    positions = sorted({r[3] for r in rows})
    meta = {
        "format": "obd",
        "source": source,
        "logging_pmf": mode,
        "n_positions": n_positions if n_positions is not None else (positions[-1] if positions else 0),
        "n_items": n_items,
        "reward_min": 0.0,
        "reward_max": 1.0,
    }
    return _build(records, meta)
