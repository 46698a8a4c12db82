"""The report copy: what a report derived from rows that never change, kept per experiment.

Report copy (table ``report_chunks``, migration 0006)
    The report's scans (``api.reports.scan``) cost about 1.5 CPU-seconds per
    million decisions, nearly all of it per-row work on rows that never change. So the report keeps what it
    derived from them, per experiment: the encoded columns (seq, flags, unit
    codes, segment and hour codes), two 64-bit hashes per unit key, the
    windowed reward rows and the activation flags, as ``.npz`` chunks with
    their cursors (largest decision seq, reward id, activation key: SQLite
    rowid, PostgreSQL created_at) and the row counts at or below them. A
    report loads the chunks, checks the counts (any row that appeared below a
    cursor, a late commit, or went, a purge, voids the copy, which is then
    dropped and rebuilt), and reads only what lies past the cursors: the
    decisions after the seq cursor (with all their rewards and activations),
    the rewards above the reward cursor and the activations above the
    activation cursor of earlier decisions. Codes continue the copy's
    numbering (a unit key by its hashes, a label by its text), so the
    columns, and every number of the report, equal those of a read of the
    whole log (``tests/api/test_reports.py``: appends, restarts, compaction,
    late commits, erase, purge; SQLite and PostgreSQL). The report writes a
    chunk when at least :data:`REPORT_COPY_MIN_DECISIONS` decisions and 10% of
    the copy lie past it; a copy of :data:`REPORT_COPY_MAX_CHUNKS` chunks is
    rewritten as one. PostgreSQL copies only rows older than
    :data:`REPORT_COPY_MARGIN_S`: it commits ids out of order. A keeper in
    every serving worker (:func:`keep_report_copies`, every
    :data:`REPORT_COPY_KEEP_INTERVAL_S`) writes the missing copies and
    extends the lagging ones of running experiments, one worker per
    experiment (a claim row), so that a report seldom builds a copy itself.
    Only report readers and the keeper write the table; ``queries.erase_unit``
    and ``purge_older_than`` drop the copies they void. Unit keys that the joined text cannot carry
    (legacy keys holding the separator) keep that experiment on full reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import Connection, Engine, delete, func, insert, select, text
from sqlalchemy.exc import IntegrityError

from api.db.engine import write_lock
from api.db.experiment_models import ReportChunk
from api.db.models import Decision, Reward, utcnow
from api.reports.columns import _Columns, _mark_activated
from api.reports.sql import _DIMENSIONS

__all__ = ["REPORT_COPY_GROWTH", "REPORT_COPY_MARGIN_S", "REPORT_COPY_MAX_CHUNKS", "REPORT_COPY_MIN_DECISIONS"]


REPORT_COPY_MIN_DECISIONS = 20_000
"""An experiment's report copy is written once this many decisions are not in it yet ..."""
REPORT_COPY_GROWTH = 0.1
"""... and at least this fraction of the decisions already in it (so it grows by chunks of >= 10%)."""
REPORT_COPY_MAX_CHUNKS = 8
"""A copy of this many chunks is rewritten as one (the next chunk replaces them all)."""
REPORT_COPY_MARGIN_S = 10.0
"""PostgreSQL: rows younger than this are not copied yet (a lower id may still commit after a higher one)."""
_COPY_FORMAT = 1
_BEFORE_ALL = -(1 << 62)  # a cursor below every seq, id and rowid: the empty copy reaches nothing


def _write_threshold(copied: int) -> float:
    """How many decisions past a copy of ``copied`` decisions make its next chunk worth writing (the
    report and the keeper apply the same rule; read at call time, so tests can lower the limits)."""
    return max(REPORT_COPY_MIN_DECISIONS, REPORT_COPY_GROWTH * copied)


@dataclass(frozen=True)
class _Cursor:
    """How far a report copy reaches: the experiment's decisions with seq <= ``seq``, the rewards with
    id <= ``reward``, the activations with key <= ``activation`` (SQLite rowid; PostgreSQL created_at,
    ISO text)."""

    seq: int = _BEFORE_ALL
    reward: int = _BEFORE_ALL
    activation: int | str = _BEFORE_ALL

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "reward": self.reward, "activation": self.activation}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Cursor:
        return cls(int(data["seq"]), int(data["reward"]), data["activation"])


@dataclass(frozen=True)
class _Counts:
    """Rows at or below a cursor when it was taken (decisions of the experiment, all rewards, all activations)."""

    decisions: int
    rewards: int
    activations: int


@dataclass(frozen=True)
class _Copy:
    columns: _Columns
    cursor: _Cursor
    counts: _Counts
    chunks: int
    last_position: int


class _StaleCopy(Exception):
    """The stored chunks do not form a copy of this experiment's log under the current settings."""


def _fingerprint(dialect: str, arms: Sequence[str], slot: Mapping[str, Any]) -> str:
    """What the copied columns depend on besides the log: format, dialect, the arms' order, the reward window."""
    key = json.dumps([_COPY_FORMAT, dialect, list(arms), float(slot["reward_window_s"])])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _activation_bound(connection: Connection, key: int | str) -> Any:
    return key if connection.dialect.name == "sqlite" else datetime.fromisoformat(str(key))


def _count_decisions(connection: Connection, experiment_id: int, after: int, upto: int) -> int:
    where = (Decision.experiment_id == experiment_id, Decision.seq > after, Decision.seq <= upto)
    return int(connection.execute(select(func.count()).select_from(Decision).where(*where)).scalar_one())


def _counts_at(connection: Connection, experiment_id: int, cursor: _Cursor, decisions: int | None = None) -> _Counts:
    """The rows at or below ``cursor`` now (``decisions``: already known)."""
    if decisions is None:
        decisions = _count_decisions(connection, experiment_id, _BEFORE_ALL, cursor.seq)
    rewards = connection.execute(select(func.count()).select_from(Reward).where(Reward.id <= cursor.reward)).scalar_one()
    if connection.dialect.name == "sqlite":
        activations = connection.execute(text("SELECT count(*) FROM activations WHERE rowid <= :key"),
                                         {"key": cursor.activation}).scalar_one()
    else:
        activations = connection.execute(text("SELECT count(*) FROM activations WHERE created_at <= :key"),
                                         {"key": _activation_bound(connection, cursor.activation)}).scalar_one()
    return _Counts(int(decisions), int(rewards), int(activations))


def _load_copy(connection: Connection, experiment_id: int, fingerprint: str) -> _Copy | None:
    """The experiment's report copy from its chunks, or None without one. Raises :class:`_StaleCopy`."""
    rows = connection.execute(
        select(ReportChunk.position, ReportChunk.fingerprint, ReportChunk.meta, ReportChunk.data)
        .where(ReportChunk.experiment_id == experiment_id, ReportChunk.position >= 0)
        .order_by(ReportChunk.position)).all()
    if not rows:
        return None
    chain = _Cursor()
    parts: list[Any] = []
    labels: dict[str, list[str]] = {d: [] for d in _DIMENSIONS}
    for row in rows:
        meta = row.meta
        if row.fingerprint != fingerprint or meta.get("format") != _COPY_FORMAT or \
                _Cursor.from_dict(meta["base"]) != chain:
            raise _StaleCopy
        chain = _Cursor.from_dict(meta["cursor"])
        parts.append(np.load(io.BytesIO(row.data)))
        for dimension in _DIMENSIONS:
            labels[dimension] += meta["labels"][dimension]
    counts = _Counts(**rows[-1].meta["counts"])

    def joined(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([p[name] for p in parts]).astype(dtype, copy=False)

    seq = joined("seq", np.int64)
    if seq.size != counts.decisions or (seq.size > 1 and not bool(np.all(seq[1:] > seq[:-1]))):
        raise _StaleCopy
    columns = _Columns(
        seq=seq, flags=joined("flags", np.int64), unit=joined("unit", np.int64), keyed=joined("keyed", bool),
        h1=joined("h1", np.uint64), h2=joined("h2", np.uint64),
        dims={d: (joined(d, np.int64), tuple(labels[d])) for d in _DIMENSIONS},
        rewards=np.concatenate([p["rewards"] for p in parts]).reshape(-1, 3),
    )
    _mark_activated(columns.seq, columns.flags, joined("activated", np.int64))
    return _Copy(columns, chain, counts, len(rows), int(rows[-1].position))


def _drop_copy(engine: Engine, experiment_id: int) -> None:
    with write_lock(engine), engine.begin() as connection:
        connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id == experiment_id,
                                                     ReportChunk.position >= 0))


def _copy_target(connection: Connection, experiment_id: int, top: int, after: _Cursor, counts: _Counts,
                 pending: int | None) -> tuple[_Cursor, _Counts] | None:
    """How far the copy may reach now, with the rows below that cursor counted before they are read.

    SQLite commits one writer at a time and hands out ids and rowids in commit order, so everything
    up to the largest seq, reward id and activation rowid is already visible and no row below them
    can appear later: the experiment's decisions up to the cursor are counted as they are read
    (``pending`` None; the count is -1 here). PostgreSQL hands out ids at insert time and commits in
    any order, so only rows older than :data:`REPORT_COPY_MARGIN_S` are copied, and they are counted
    first (``pending``: the decisions after ``after.seq`` up to ``top``, counted just before); a row
    below a cursor that commits later anyway changes a count, and the next report rebuilds the copy
    (it is never silently wrong).
    """
    seq: int | None
    if connection.dialect.name == "sqlite":
        seq = top
        reward = connection.execute(select(func.max(Reward.id))).scalar()
        activation: int | str = connection.execute(text("SELECT max(rowid) FROM activations")).scalar() or _BEFORE_ALL
    else:
        cutoff = datetime.now(UTC) - timedelta(seconds=REPORT_COPY_MARGIN_S)
        seq = connection.execute(select(Decision.seq).where(
            Decision.experiment_id == experiment_id, Decision.seq <= top, Decision.created_at <= cutoff)
            .order_by(Decision.seq.desc()).limit(1)).scalar()
        reward = connection.execute(select(Reward.id).where(Reward.created_at <= cutoff)
                                    .order_by(Reward.id.desc()).limit(1)).scalar()
        moment = cutoff.isoformat(timespec="microseconds")
        activation = max(moment, str(after.activation)) if after.seq != _BEFORE_ALL else moment
    if seq is None or seq <= after.seq:
        return None
    cursor = _Cursor(int(seq), max(int(reward) if reward is not None else _BEFORE_ALL, after.reward), activation)
    if pending is None:
        decisions = -1
    else:
        decisions = counts.decisions + (pending if cursor.seq == top else
                                        _count_decisions(connection, experiment_id, after.seq, cursor.seq))
    return cursor, _counts_at(connection, experiment_id, cursor, decisions)


def _narrow(codes: np.ndarray, size: int) -> np.ndarray:
    dtype = np.uint8 if size <= 1 << 8 else np.uint16 if size <= 1 << 16 else np.int32
    return codes.astype(dtype)


def _save_copy(engine: Engine, experiment_id: int, fingerprint: str, columns: _Columns, stored: _Copy | None,
               tail: _Columns, activated: np.ndarray, target: tuple[_Cursor, _Counts]) -> bool:
    """Write the rows up to the target cursor that the copy lacks as its next chunk (all of them, as
    the only chunk, when there is no copy yet or it has :data:`REPORT_COPY_MAX_CHUNKS` chunks)."""
    cursor, counts = target
    end = int(np.searchsorted(columns.seq, cursor.seq, side="right"))
    if end != counts.decisions:  # the log moved between the count and the read: copy next time
        return False
    full = stored is None or stored.chunks >= REPORT_COPY_MAX_CHUNKS
    base = _Columns.empty() if full or stored is None else stored.columns
    start, unit_start = base.seq.size, base.keyed.size
    unit_end = int(columns.unit[:end].max()) + 1 if end else 0
    arrays: dict[str, np.ndarray] = {
        "seq": columns.seq[start:end], "flags": columns.flags[start:end].astype(np.uint8),
        "unit": columns.unit[start:end].astype(np.int64 if unit_end > 1 << 31 else np.int32),
        "keyed": columns.keyed[unit_start:unit_end], "h1": columns.h1[unit_start:unit_end],
        "h2": columns.h2[unit_start:unit_end],
    }
    labels: dict[str, list[str]] = {}
    for dimension in _DIMENSIONS:
        codes, names = columns.dims[dimension]
        label_end = int(codes[:end].max()) + 1 if end else 0
        arrays[dimension] = _narrow(codes[start:end], label_end)
        labels[dimension] = list(names[len(base.dims[dimension][1]):label_end])
    rows = columns.rewards if full else tail.rewards
    arrays["rewards"] = rows[(rows[:, 1] <= cursor.reward) & (rows[:, 0] <= cursor.seq)]
    earlier = activated[activated <= base.seq[-1]] if base.seq.size else np.zeros(0, dtype=np.int64)
    if earlier.size:  # activations that came for decisions already copied
        position = np.searchsorted(base.seq, earlier)
        earlier = earlier[base.seq[np.minimum(position, base.seq.size - 1)] == earlier]
    arrays["activated"] = earlier.astype(np.int64)
    meta = {"format": _COPY_FORMAT, "base": (_Cursor() if full or stored is None else stored.cursor).to_dict(),
            "cursor": cursor.to_dict(), "counts": dataclasses.asdict(counts), "rows": end - start,
            "labels": labels}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    chunk = 0 if stored is None else stored.last_position + 1
    try:  # the file's write lock, as the log writer takes it (SQLite's busy handler would sleep instead)
        with write_lock(engine), engine.begin() as connection:
            if full:
                connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id == experiment_id,
                                                             ReportChunk.position >= 0))
            connection.execute(insert(ReportChunk).values(
                experiment_id=experiment_id, position=chunk, fingerprint=fingerprint, meta=meta,
                data=buffer.getvalue(), created_at=utcnow()))
    except IntegrityError:  # another report wrote this chunk first
        return False
    return True


_CLAIM = -1  # position of the marker row that claims an experiment's copy for one keeper
_CLAIM_TTL_S = 600.0


def _claim_copy(engine: Engine, experiment_id: int) -> bool:
    """Insert the experiment's claim marker (unique position -1); False when another keeper holds a fresh one."""
    now = utcnow()
    try:
        with write_lock(engine), engine.begin() as connection:
            connection.execute(delete(ReportChunk).where(  # a claim left by a keeper that died
                ReportChunk.experiment_id == experiment_id, ReportChunk.position == _CLAIM,
                ReportChunk.created_at < now - timedelta(seconds=_CLAIM_TTL_S)))
            connection.execute(insert(ReportChunk).values(
                experiment_id=experiment_id, position=_CLAIM, fingerprint="claim", meta={}, data=b"", created_at=now))
    except IntegrityError:
        return False
    return True


def _release_copy(engine: Engine, experiment_id: int) -> None:
    with write_lock(engine), engine.begin() as connection:
        connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id == experiment_id,
                                                     ReportChunk.position == _CLAIM))
