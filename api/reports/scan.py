"""Reading an experiment's decisions, rewards and activations for its report
(:func:`fetch_experiment_data`): from the report copy and the log past the copy's cursors."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, func, select, text

from api.db.models import Decision, Reward
from api.reports.columns import (
    _SECOND_SEED,
    _check_groups,
    _codes,
    _Columns,
    _extend,
    _first_seen,
    _hash_rows,
    _split,
    _string_codes,
    _unit_codes,
    _Unsplittable,
    _vocabulary_codes,
)
from api.reports.copy import (
    _BEFORE_ALL,
    _Copy,
    _copy_target,
    _count_decisions,
    _Counts,
    _counts_at,
    _Cursor,
    _drop_copy,
    _fingerprint,
    _load_copy,
    _save_copy,
    _StaleCopy,
    _write_threshold,
)
from api.reports.exposures import ExperimentData, _exposures
from api.reports.sql import (
    _DAYPARTS,
    _DEVICES,
    _FLAG_BITS,
    _NO_ARM,
    _OTHER,
    _PACKED_BITS,
    _activation_query,
    _main_query,
    _range,
    _reward_query,
    _sql_parts,
    _string_query,
    _unit_query,
)

__all__ = ["fetch_experiment_data"]


_MMAP_BYTES = 1 << 30


def _unit_groups(engine: Engine, parts: Mapping[str, str],
                 params: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """On a connection of its own: the number of decisions, per decision the first row with the same
    unit key, and two independent 64-bit hashes of each decision's key (raises :class:`_Unsplittable`
    for keys the joined text cannot carry)."""
    with engine.connect() as connection:
        raw: Any = connection.connection.driver_connection
        sqlite = connection.dialect.name == "sqlite"
        factory = raw.text_factory if sqlite else None
        if sqlite:
            raw.text_factory = bytes
            _map_file(raw)
        try:
            n, (blob,) = _one_row(raw, _unit_query(parts), params)
        finally:
            if sqlite:
                raw.text_factory = factory
    if not n:
        empty = np.zeros(0, dtype=np.uint64)
        return 0, np.zeros(0, dtype=np.int64), empty, empty
    matrix, _, lengths = _split(blob, n)
    words = matrix.view("<u8")
    first_hash = _hash_rows(words, lengths)
    codes, first = _first_seen(first_hash)
    # A unit key is an HMAC (random bits), so a 64-bit hash collision among a million units has a
    # probability near 3e-8; a second, independent 64-bit hash must agree within every group.
    check = _hash_rows(words, lengths, seed=_SECOND_SEED)
    if not np.array_equal(check, check[first[codes]]):
        _check_groups(words, lengths, codes, first)  # raises: two different keys shared the first hash
    return n, first[codes], first_hash, check


def _text(value: Any) -> bytes:
    return b"" if value is None else value if isinstance(value, bytes) else str(value).encode("utf-8")


def _one_row(raw: Any, sql: str, params: Sequence[Any]) -> tuple[int, list[bytes]]:
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return int(row[0]), [_text(v) for v in row[1:]]


def _rows(raw: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _column_codes(raw: Any, parts: Mapping[str, str], column: str, params: Sequence[Any], n: int,
                  blob: bytes | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """First-seen codes and labels of a string column, from ``blob`` or its own scan; Python path if unsplittable."""
    if blob is None:
        _, (blob,) = _one_row(raw, _string_query(parts, column), params)
    width = int(parts["hour_width"]) if column == "hour" else 0
    try:
        return _string_codes(blob, n, width)
    except _Unsplittable:
        value = f"COALESCE(d.{column}, 'unknown')" if column != "hour" else parts["hour"]
        rows = _rows(raw, f"SELECT {value} FROM {parts['scan']} WHERE {_range(parts)} ORDER BY d.seq", params)
        return _codes([_text(r[0]).decode("utf-8")[:width or None] for r in rows])


def _seq_range(connection: Connection, experiment_id: int) -> tuple[Any, Any]:
    """Lowest and largest seq of the experiment's decisions (two queries: SQLite answers a lone min()
    or max() from the index in a few steps, but scans the whole range for both in one query)."""
    where = Decision.experiment_id == experiment_id
    return (connection.execute(select(func.min(Decision.seq)).where(where)).scalar(),
            connection.execute(select(func.max(Decision.seq)).where(where)).scalar())


def _read_rows(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
               after: _Cursor, low: int, top: int) -> tuple[_Columns, np.ndarray]:
    """The decisions of the experiment with ``after.seq < seq <= top`` as :class:`_Columns` (their
    rewards and activations complete), plus what arrived past ``after`` for the earlier decisions:
    their rewards with an id above ``after.reward`` (in the returned rewards) and the seqs of the
    decisions with an activation above ``after.activation`` (the returned array; it may hold seqs of
    other experiments and of the returned decisions).

    Four kinds of query, three on connections of their own so that they overlap: the decisions'
    packed codes, country and hour; their unit keys; the rewards; the activations (SQLite, when fewer
    than the decisions, a walk of ``activations``; else an ``EXISTS`` probe per decision in the scan).
    """
    if len(arms) > _NO_ARM:
        raise ValueError(f"at most {_NO_ARM} arms")
    dialect = connection.dialect.name
    parts = _sql_parts(dialect)
    raw: Any = connection.connection.driver_connection  # sqlite3's or psycopg's connection
    sqlite = dialect == "sqlite"
    params = (experiment_id, after.seq, top)
    span = top - max(low, after.seq + 1) + 1  # at least the number of decisions read
    copied = after.seq != _BEFORE_ALL
    # activations: walk them (SQLite, fewer than the decisions) or probe them per decision read; past a
    # report copy, probe the decisions read and walk the activations after the copy's cursor
    walk: tuple[Any, ...] | None = None
    if copied:
        walk = (after.activation if sqlite else datetime.fromisoformat(str(after.activation)), low, top)
    elif sqlite and span > 0 and (connection.execute(text("SELECT max(rowid) FROM activations")).scalar() or 0) <= span:
        walk = (_BEFORE_ALL, low, top)
    probe = copied or walk is None
    if walk is not None and not sqlite:
        walk = (*walk, experiment_id)
    # rewards: scan them when there are fewer than decisions, else probe them per decision
    first_id = connection.execute(select(func.min(Reward.id))).scalar()
    last_id = connection.execute(select(func.max(Reward.id))).scalar()
    rewards_first = copied or (first_id is not None and last_id is not None and last_id - first_id + 1 <= span)
    window = float(slot["reward_window_s"])
    reward_queries: list[tuple[str, tuple[Any, ...]]] = [
        (_reward_query(parts, rewards_first, tail=False), (experiment_id, top, after.reward, window))]
    if copied and after.reward != _BEFORE_ALL:
        reward_queries.append((_reward_query(parts, False, tail=True), (*params, after.reward, window)))
    factory = raw.text_factory if sqlite else None
    if sqlite:
        raw.text_factory = bytes  # the joined columns need no str decoding
        _map_file(raw)
    # The rewards and activations are read on a second connection while this one scans the decisions
    # (each query waits in the database, not in Python). Both are bounded by the same largest seq.
    with ThreadPoolExecutor(max_workers=2) as pool:
        side = pool.submit(_side_queries, connection.engine, parts, reward_queries, walk)
        unit_groups = pool.submit(_unit_groups, connection.engine, parts, params) if span > 0 else None
        try:
            n, blobs = _one_row(raw, _main_query(parts, arms, probe), params) if span > 0 else (0, [])
        finally:
            if sqlite:
                raw.text_factory = factory
        rewards, activated = side.result()
        try:
            units_seen, first_row, h1_rows, h2_rows = (unit_groups.result() if unit_groups is not None
                                                       else (0, None, None, None))
        except _Unsplittable:
            units_seen, first_row, h1_rows, h2_rows = -1, None, None, None
    columns = _Columns.empty()
    columns.rewards = rewards
    if not n:
        return columns, activated
    packed = np.fromstring(blobs[0], dtype=np.int64, sep=",")
    seq = packed >> _PACKED_BITS
    if packed.size != n:
        raise RuntimeError("the report's decision columns do not line up")
    if n > 1 and not bool(np.all(seq[1:] > seq[:-1])):  # every column was joined in this order
        raise RuntimeError("the report scan did not return the decisions in log order")
    no_unit = (packed & 8) > 0
    if units_seen == n and first_row is not None and h1_rows is not None and h2_rows is not None:
        units, firsts = _unit_codes(first_row, no_unit)
        keyed = ~no_unit[firsts]
        columns.h1 = np.where(keyed, h1_rows[firsts], np.uint64(0))
        columns.h2 = np.where(keyed, h2_rows[firsts], np.uint64(0))
    else:  # keys the joined text cannot carry (or the log lost rows between the two scans)
        rows = _rows(raw, f"SELECT COALESCE(d.unit_key, '') FROM {parts['scan']} WHERE {_range(parts)} "
                          "ORDER BY d.seq", params)
        units = _codes([r[0] if r[0] else object() for r in rows])[0]  # no unit key: its own unit
        keyed = np.zeros(int(units.max()) + 1, dtype=bool)
        columns.h1 = columns.h2 = np.zeros(keyed.size, dtype=np.uint64)
        columns.hashed = False
    dims: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for dimension, column, shift, labels in (("device_type", "device_type", 8, _DEVICES),
                                             ("country", "country", None, ()),
                                             ("day_part", "daypart", 11, _DAYPARTS)):
        if shift is None:
            dims[dimension] = _column_codes(raw, parts, column, params, n, blobs[1])
            continue
        vocabulary = (packed >> shift) & 7
        if bool((vocabulary == _OTHER).any()):  # a value outside the vocabulary: read the strings
            dims[dimension] = _column_codes(raw, parts, column, params, n)
        else:
            dims[dimension] = _vocabulary_codes(vocabulary, labels)
    dims["hour"] = _column_codes(raw, parts, "hour", params, n, blobs[2])
    columns.seq, columns.flags, columns.unit, columns.keyed, columns.dims = seq, packed & _FLAG_BITS, units, keyed, dims
    return columns, activated


def _map_file(raw: Any) -> None:
    """Read the SQLite file through a memory map: the activation and reward probes jump around the
    file, and each page fetched through read() costs a system call (about 30% of the scan)."""
    raw.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")


def _side_queries(engine: Engine, parts: Mapping[str, str], reward_queries: Sequence[tuple[str, Sequence[Any]]],
                  walk: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """On a connection of its own: the reward rows as an (r, 3) float64 array (seq, reward id, value; ids
    and seqs are exact below 2**53) and, with ``walk`` (the parameters of :func:`_activation_query`),
    the activated seqs."""
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        if connection.dialect.name == "sqlite":
            _map_file(raw)
        rows = [row for sql, params in reward_queries for row in _rows(raw, sql, params)]
        rewards = np.array(rows, dtype=np.float64).reshape(len(rows), 3)
        activated = np.zeros(0, dtype=np.int64)
        if walk is not None:
            _, (joined,) = _one_row(raw, "SELECT 0, " + _activation_query(parts)[len("SELECT "):], walk)
            if joined:
                activated = np.fromstring(joined, dtype=np.int64, sep=",")
    return rewards, activated


def fetch_experiment_data(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
                          bucket: str = "day", *, use_copy: bool = True) -> ExperimentData:
    """The experiment's exposures as numpy columns, from its report copy and the log past the copy's cursors.

    Rows are the experiment's decisions up to the largest ``seq`` when the pull starts, in log
    order. Per decision: arm, unit (``unit_key``, else the event), fallback and deferred flags,
    activation, device type, country and day part (the columns of migration 0005; missing ->
    "unknown"), time bucket. Rewards are the rows received within ``reward_window_s`` of their
    decision, aggregated here with the slot's rule in reward-id order: ``sum``, ``max``, or
    ``first`` (lowest id); then clipped to the reward range; the slot's default reward when none
    came (the learner's rule). ``use_copy`` False reads everything from the log and writes no copy.
    """
    columns, source = _experiment_columns(connection, experiment_id, arms, slot, use_copy)
    return _exposures(columns, slot, bucket, source)


def _experiment_columns(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
                        use_copy: bool) -> tuple[_Columns, dict[str, Any]]:
    source: dict[str, Any] = {"copied_decisions": 0, "read_decisions": 0, "copy_chunks": 0, "copy_written": False,
                              "copy_dropped": False}
    low, top = _seq_range(connection, experiment_id)
    if top is None:
        return _Columns.empty(), source
    low, top = int(low), int(top)
    fingerprint = _fingerprint(connection.dialect.name, arms, slot)
    stored: _Copy | None = None
    if use_copy:
        try:
            stored = _load_copy(connection, experiment_id, fingerprint)
            if stored is not None and _counts_at(connection, experiment_id, stored.cursor) != stored.counts:
                raise _StaleCopy  # rows below the cursors appeared or went (a late commit, a purge)
        except _StaleCopy:
            _drop_copy(connection.engine, experiment_id)
            stored, source["copy_dropped"] = None, True
    base = stored.columns if stored is not None else _Columns.empty()
    after = stored.cursor if stored is not None else _Cursor()
    counts = stored.counts if stored is not None else _Counts(0, 0, 0)
    threshold = _write_threshold(base.seq.size)
    target = None
    if use_copy and connection.dialect.name == "sqlite":  # how many to copy is known once they are read
        if top - max(after.seq, low - 1) >= threshold:  # the seq span bounds their number
            target = _copy_target(connection, experiment_id, top, after, counts, None)
    elif use_copy:
        pending = _count_decisions(connection, experiment_id, after.seq, top)
        if pending >= threshold:
            target = _copy_target(connection, experiment_id, top, after, counts, pending)
    tail, activated = _read_rows(connection, experiment_id, arms, slot, after, low, top)
    try:
        columns = _extend(base, tail, activated)
    except _Unsplittable:  # unit keys the copy cannot take: read the whole log, leave the copy as it is
        stored, target, base = None, None, _Columns.empty()
        tail, activated = _read_rows(connection, experiment_id, arms, slot, _Cursor(), low, top)
        columns = _extend(base, tail, activated)
    source.update(copied_decisions=int(base.seq.size), read_decisions=int(tail.seq.size),
                  copy_chunks=stored.chunks if stored is not None else 0)
    if target is not None and target[1].decisions < 0:  # SQLite: the decisions up to the cursor, as read
        end = int(np.searchsorted(columns.seq, target[0].seq, side="right"))
        target = (target[0], dataclasses.replace(target[1], decisions=end)) if end - base.seq.size >= threshold \
            else None
    if target is not None and columns.hashed:
        source["copy_written"] = _save_copy(connection.engine, experiment_id, fingerprint, columns, stored, tail,
                                            activated, target)
    return columns, source
