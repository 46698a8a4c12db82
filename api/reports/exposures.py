"""The report's rows: the shown decisions of the experiment's arms with their aggregated rewards
(:class:`ExperimentData`), made from the decoded columns. No SQL here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.reports.columns import _Columns
from api.reports.sql import _NO_ARM
from bandits.rewards import RewardRule, aggregate_many

__all__ = ["SEGMENT_DIMENSIONS", "ExperimentData"]


SEGMENT_DIMENSIONS = ("device_type", "country", "day_part")


@dataclass(frozen=True)
class ExperimentData:
    """The experiment's exposures as columns (one row per shown decision, in log order)."""

    arm: np.ndarray          # (n,) int: index into the experiment's arm list
    unit: np.ndarray         # (n,) int: unit code
    reward: np.ndarray       # (n,) float: aggregated reward
    rewarded: np.ndarray     # (n,) bool: at least one reward arrived in the window
    activated: np.ndarray    # (n,) bool
    fallback: np.ndarray     # (n,) bool
    segments: Mapping[str, tuple[np.ndarray, tuple[str, ...]]]  # dimension -> (codes, labels)
    bucket: np.ndarray       # (n,) int: time bucket code (chronological)
    bucket_labels: tuple[str, ...]
    excluded: int            # deferred decisions never activated
    source: Mapping[str, Any] = field(default_factory=dict)
    """Where the rows came from: decisions taken from the report copy, read from the log, copy chunks written."""
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n,) int: each row's decision seq (the offline section finds its sample's rewards by it)."""


def _exposures(columns: _Columns, slot: Mapping[str, Any], bucket: str, source: Mapping[str, Any]) -> ExperimentData:
    """The shown decisions of the experiment's arms with their aggregated rewards (the report's rows)."""
    n = columns.seq.size
    if not n:
        empty = np.zeros(0, dtype=np.int64)
        return ExperimentData(arm=empty, unit=empty, reward=np.zeros(0), rewarded=np.zeros(0, dtype=bool),
                              activated=np.zeros(0, dtype=bool), fallback=np.zeros(0, dtype=bool),
                              segments={d: (empty, ()) for d in SEGMENT_DIMENSIONS}, bucket=empty,
                              bucket_labels=(), excluded=0, source=source, seq=empty)
    rows = columns.rewards
    reward, rewarded = _aggregate_rewards(columns.seq, rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64),
                                          rows[:, 2], slot)
    flags = columns.flags
    activated = (flags & 4) > 0
    shown = ((flags & 2) == 0) | activated
    arm = (flags >> 4) & 15
    arm = np.where(arm == _NO_ARM, -1, arm)
    keep = shown & (arm >= 0)
    hours, hour_labels = columns.dims["hour"]
    if bucket == "hour":
        bucket_codes, bucket_labels = hours, hour_labels
    else:  # day buckets numbered by first appearance: hour codes are, so the first hour of each day decides
        days: dict[str, int] = {}
        remap = np.array([days.setdefault(label[:10], len(days)) for label in hour_labels], dtype=np.int64)
        bucket_codes, bucket_labels = remap[hours], tuple(days)
    return ExperimentData(
        arm=arm[keep], unit=columns.unit[keep], reward=reward[keep], rewarded=rewarded[keep],
        activated=activated[keep], fallback=((flags & 1) > 0)[keep],
        segments={d: (columns.dims[d][0][keep], columns.dims[d][1]) for d in SEGMENT_DIMENSIONS},
        bucket=bucket_codes[keep], bucket_labels=bucket_labels, excluded=int(n - shown.sum()), source=source,
        seq=columns.seq[keep],
    )


def _aggregate_rewards(seq: np.ndarray, r_seq: np.ndarray, r_id: np.ndarray, value: np.ndarray,
                       slot: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per decision (``seq``, ascending): the slot's reward rule (``bandits.rewards.aggregate_many``)
    over the reward rows ``(r_seq, r_id, value)`` of those decisions, in reward-id (arrival) order;
    rows of other decisions are ignored."""
    n = seq.size
    position = np.searchsorted(seq, r_seq)
    found = (position < n) & (seq[np.minimum(position, n - 1)] == r_seq) if n else np.zeros(r_seq.size, dtype=bool)
    order = np.lexsort((r_id[found], position[found]))
    rule = RewardRule(slot["reward_aggregation"], slot["default_reward"], slot["reward_min"], slot["reward_max"])
    return aggregate_many(position[found][order], value[found][order], n, rule)
