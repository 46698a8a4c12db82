"""Decoding the joined columns of the report's scan with numpy: split, code by first appearance,
hash unit keys, and join the report copy with the rows read past it (:class:`_Columns`). No SQL here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from api.reports.sql import _DIMENSIONS, _SEP

__all__: list[str] = []  # shared with the package's modules only


def _split(blob: bytes, n: int, prefix: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(matrix, starts, lengths)`` of the ``n`` separated values of ``blob``: ``matrix`` is (n, w)
    uint8, values left-aligned and zero-padded, ``w`` a multiple of 8.

    Raises :class:`_Unsplittable` when the blob does not hold exactly ``n`` values (a value contains
    the separator) or a value contains a NUL byte (zero padding would then be ambiguous).
    """
    buf = np.frombuffer(blob, dtype=np.uint8)
    if n == 0 or (buf.size and int(buf.min()) == 0):
        raise _Unsplittable
    ends = np.flatnonzero(buf == _SEP)
    if ends.size != n - 1:
        raise _Unsplittable
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends + 1
    lengths = np.empty(n, dtype=np.int64)
    lengths[:-1] = ends - starts[:-1]
    lengths[-1] = buf.size - starts[-1]
    if prefix:  # keep the first ``prefix`` bytes of every value (bucket labels from timestamps)
        if int(lengths.min()) < prefix:
            raise _Unsplittable
        lengths = np.full(n, prefix, dtype=np.int64)
    longest = int(lengths.max())
    width = max(8, -(-longest // 8) * 8)
    if longest and int(lengths.min()) == longest and not prefix:  # fixed width: a strided view, no gather
        matrix = np.zeros((n, width), dtype=np.uint8)
        matrix[:, :longest] = np.lib.stride_tricks.as_strided(buf, shape=(n, longest), strides=(longest + 1, 1))
        return matrix, starts, lengths
    # one gather of ``width`` bytes from every start (a sliding window over the zero-padded blob), then
    # the bytes past each value cleared
    padded = buf if int(starts[-1]) + width <= buf.size else np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    matrix = np.lib.stride_tricks.sliding_window_view(padded, width)[starts]
    matrix *= np.arange(width, dtype=np.int64) < lengths[:, None]
    return matrix, starts, lengths


class _Unsplittable(Exception):
    """A joined column cannot be split back into its values."""


def _first_seen(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of integer ``keys`` numbered in order of first appearance, and each code's first row."""
    n = keys.size
    order = np.argsort(keys)
    ordered = keys[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    firsts = np.minimum.reduceat(order, starts)
    group = np.cumsum(new) - 1
    by_first = np.argsort(firsts)
    rank = np.empty(firsts.size, dtype=np.int64)
    rank[by_first] = np.arange(firsts.size)
    codes = np.empty(n, dtype=np.int64)
    codes[order] = rank[group]
    return codes, firsts[by_first]


def _few_first_seen(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_first_seen` for keys with few distinct values: distinct values from runs (rows in log
    order repeat their neighbours' buckets) or a sample, then one ``searchsorted``; no sort of all rows."""
    n = keys.size
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    if change.size > n // 8:  # not run-like: sample the distinct values instead
        known = np.unique(keys[:: max(1, n // 4096)])
    else:
        known = np.unique(keys[np.r_[0, change]])
    position = np.minimum(np.searchsorted(known, keys), known.size - 1)
    missing = known[position] != keys
    if missing.any():
        known = np.union1d(known, keys[missing])
        position = np.searchsorted(known, keys)
    first = np.full(known.size, n, dtype=np.int64)
    np.minimum.at(first, position, np.arange(n))
    by_first = np.argsort(first)
    rank = np.empty(known.size, dtype=np.int64)
    rank[by_first] = np.arange(known.size)
    return rank[position], first[by_first]


def _label(blob: bytes, starts: np.ndarray, lengths: np.ndarray, row: int) -> str:
    start = int(starts[row])
    return blob[start:start + int(lengths[row])].decode("utf-8")


def _string_codes(blob: bytes, n: int, prefix: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """First-seen codes and labels of a joined low-cardinality string column (country, bucket, ...)."""
    matrix, starts, lengths = _split(blob, n, prefix)
    words = matrix.view("<u8")
    if words.shape[1] == 1:  # at most 8 bytes, no NUL: the padded bytes are the value
        codes, first = _few_first_seen(words[:, 0])
    else:  # a hash of the words, whose collisions the check below rules out
        codes, first = _few_first_seen(_hash_rows(words, lengths))
        _check_groups(words, lengths, codes, first)
    return codes, tuple(_label(blob, starts, lengths, int(r)) for r in first)


def _hash_rows(words: np.ndarray, lengths: np.ndarray, seed: int = 0x9E3779B97F4A7C15) -> np.ndarray:
    """A 64-bit multiply-xorshift hash of each row's length and of the words that hold its value
    (wrapping uint64 arithmetic). The zero padding past a value is not hashed, so a value hashes
    alike in matrices of any width: the report copy keeps unit hashes from one read to the next."""
    h = lengths.astype(np.uint64) * np.uint64(seed)
    for k in range(words.shape[1]):
        live = lengths > 8 * k
        if bool(live.all()):
            h ^= words[:, k]
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
            h *= np.uint64(0x94D049BB133111EB)
        elif bool(live.any()):
            rows = np.flatnonzero(live)
            part = h[rows] ^ words[rows, k]
            part *= np.uint64(0xBF58476D1CE4E5B9)
            part ^= part >> np.uint64(31)
            part *= np.uint64(0x94D049BB133111EB)
            h[rows] = part
        else:
            break
    return h


def _check_groups(words: np.ndarray, lengths: np.ndarray, codes: np.ndarray, first: np.ndarray) -> None:
    """Every row equals its code's first row byte for byte (a hash collision would merge two values)."""
    rep = first[codes]
    if not (np.array_equal(lengths, lengths[rep]) and np.array_equal(words, words[rep])):
        raise _Unsplittable


_SECOND_SEED = 0xD6E8FEB86659FD93


def _unit_codes(first_row: np.ndarray, no_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit codes in order of first appearance (a decision without a unit key is its own unit), and
    each code's first row."""
    n = first_row.size
    first_row = first_row.copy()
    own = np.flatnonzero(no_unit)
    first_row[own] = own
    distinct = first_row == np.arange(n)
    return (np.cumsum(distinct) - 1)[first_row], np.flatnonzero(distinct)


def _vocabulary_codes(raw: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    codes, first = _few_first_seen(raw)
    return codes, tuple(labels[int(raw[r])] for r in first)


def _codes(values: Sequence[Any], order: Sequence[str] = ()) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of values (None -> "unknown") in order of first appearance: the Python path."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    labels = ["unknown" if v is None else str(v) for v in index]
    return codes, tuple(labels)


@dataclass
class _Columns:
    """An experiment's decisions as encoded columns in log order, before the exposure filter: the
    report copy, the rows read past its cursors, or both joined by :func:`_extend`."""

    seq: np.ndarray      # (n,) int64, increasing
    flags: np.ndarray    # (n,) int64: bit 0 fallback, 1 deferred, 2 activated, 3 no unit key, 4-7 arm (15: none)
    unit: np.ndarray     # (n,) int64: unit code, numbered by first appearance
    keyed: np.ndarray    # (u,) bool per unit code: a unit key (else one decision without a key)
    h1: np.ndarray       # (u,) uint64: two independent hashes of the unit key (0 without a key)
    h2: np.ndarray
    dims: dict[str, tuple[np.ndarray, tuple[str, ...]]]  # _DIMENSIONS -> (codes by first appearance, labels)
    rewards: np.ndarray  # (r, 3) float64 rows: decision seq, reward id, value (rewards within the window)
    hashed: bool = True  # False: unit keys took the Python path (no hashes; the copy cannot take these rows)

    @classmethod
    def empty(cls) -> _Columns:
        i64, u64 = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
        return cls(i64, i64, i64, np.zeros(0, dtype=bool), u64, u64, {d: (i64, ()) for d in _DIMENSIONS},
                   np.zeros((0, 3)))


def _mark_activated(seq: np.ndarray, flags: np.ndarray, activated: np.ndarray) -> None:
    """Set the activated bit of the decisions whose seq is in ``activated`` (others' seqs are ignored)."""
    if not activated.size or not seq.size:
        return
    position = np.searchsorted(seq, activated)
    found = position < seq.size
    found[found] = seq[position[found]] == activated[found]
    flags[position[found]] |= 4


def _extend(base: _Columns, tail: _Columns, activated: np.ndarray) -> _Columns:
    """The report copy ``base`` followed by the rows read past its cursors (:func:`_read_rows`): tail codes
    mapped onto the copy's (a unit key by its two hashes, a label by its text), numbered by first
    appearance as a read of the whole log would number them. Raises :class:`_Unsplittable` when the
    tail's unit keys have no hashes or a key's first hash matches a different key in the copy."""
    if not base.seq.size and not base.keyed.size:
        out = _Columns(tail.seq, tail.flags.copy(), tail.unit, tail.keyed, tail.h1, tail.h2, dict(tail.dims),
                       np.concatenate([base.rewards, tail.rewards]), tail.hashed)
        _mark_activated(out.seq, out.flags, activated)
        return out
    if tail.seq.size and not tail.hashed:
        raise _Unsplittable
    units = base.keyed.size
    local = tail.keyed.size
    found = np.zeros(local, dtype=bool)
    mapped = np.empty(local, dtype=np.int64)
    known = np.flatnonzero(base.keyed)
    wanted = np.flatnonzero(tail.keyed)
    if known.size and wanted.size:
        order = np.argsort(base.h1[known])
        hashes = base.h1[known][order]
        position = np.minimum(np.searchsorted(hashes, tail.h1[wanted]), hashes.size - 1)
        hit = hashes[position] == tail.h1[wanted]
        codes = known[order[position[hit]]]
        if not np.array_equal(base.h2[codes], tail.h2[wanted[hit]]):
            raise _Unsplittable  # two different keys share the first hash
        mapped[wanted[hit]] = codes
        found[wanted[hit]] = True
    new = np.flatnonzero(~found)
    mapped[new] = units + np.arange(new.size)
    dims: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for dimension in _DIMENSIONS:
        codes_b, labels_b = base.dims[dimension]
        codes_t, labels_t = tail.dims[dimension]
        index = {label: i for i, label in enumerate(labels_b)}
        remap = np.array([index.setdefault(label, len(index)) for label in labels_t], dtype=np.int64)
        dims[dimension] = (np.concatenate([codes_b, remap[codes_t]]) if codes_t.size else codes_b, tuple(index))
    out = _Columns(
        seq=np.concatenate([base.seq, tail.seq]), flags=np.concatenate([base.flags, tail.flags]),
        unit=np.concatenate([base.unit, mapped[tail.unit]]) if tail.unit.size else base.unit,
        keyed=np.concatenate([base.keyed, tail.keyed[new]]), h1=np.concatenate([base.h1, tail.h1[new]]),
        h2=np.concatenate([base.h2, tail.h2[new]]), dims=dims,
        rewards=np.concatenate([base.rewards, tail.rewards]), hashed=base.hashed,
    )
    _mark_activated(out.seq, out.flags, activated)
    return out
