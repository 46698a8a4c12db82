"""The columnar logged-bandit dataset every estimator and replay reads.

A :class:`BanditLog` holds ``n`` events. Candidate sets may differ in size,
so per-candidate columns are 2-D arrays padded to ``max_actions`` with a
validity mask. Rows are in log order (time order). Loaders (DSJSON, CSV, the
service database through ``api``) build it; nothing here touches a file or a
database.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.errors import LogError
from bandits.features import Features
from bandits.policies import Candidate

__all__ = ["BanditLog", "LogError"]


@dataclass(frozen=True, eq=False)
class BanditLog:
    """Logged decisions with their propensities and rewards.

    Attributes:
        event_ids: (n,) str. Unique per event.
        timestamps: (n,) float64, seconds since the Unix epoch (UTC).
        action_ids: (n, A) object (str), padded with "".
        action_mask: (n, A) bool, True where a candidate exists.
        logging_pmf: (n, A) float64, the logged pmf (0 on padding); rows sum to 1.
        chosen: (n,) int64, index of the chosen candidate in its row.
        reward: (n,) float64, the (aggregated) reward of each event.
        arms: (n,) object (str), experiment arm or policy name ("" when none).
        contexts: per event the structured context features (for replay), or empty.
        candidates: per event the candidates with features (for replay), or empty.
        learnable: (n,) bool, False for events VW must skip (deferred, never activated).
        meta: free-form provenance (source file, slot, reward range...).
    """

    event_ids: np.ndarray
    timestamps: np.ndarray
    action_ids: np.ndarray
    action_mask: np.ndarray
    logging_pmf: np.ndarray
    chosen: np.ndarray
    reward: np.ndarray
    arms: np.ndarray
    contexts: tuple[Features, ...] = ()
    candidates: tuple[tuple[Candidate, ...], ...] = ()
    learnable: np.ndarray | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.chosen)
        for name in ("event_ids", "timestamps", "reward", "arms"):
            if len(getattr(self, name)) != n:
                raise LogError(f"{name} has {len(getattr(self, name))} rows, expected {n}", field=name)
        for name in ("action_ids", "action_mask", "logging_pmf"):
            value = getattr(self, name)
            if value.ndim != 2 or value.shape[0] != n:
                raise LogError(f"{name} must be (n, max_actions)", field=name)
        if self.contexts and len(self.contexts) != n:
            raise LogError("contexts must be empty or one per event", field="contexts")
        if self.candidates and len(self.candidates) != n:
            raise LogError("candidates must be empty or one per event", field="candidates")
        if n:
            if self.chosen.min() < 0 or self.chosen.max() >= self.action_ids.shape[1]:
                raise LogError("chosen index outside the candidate set", field="chosen")
            if not self.action_mask[np.arange(n), self.chosen].all():
                raise LogError("chosen index points at padding", field="chosen")
            if not np.isfinite(self.reward).all():
                raise LogError("rewards must be finite", field="reward")
            p = self.propensity
            if not ((p > 0) & (p <= 1)).all():
                raise LogError("logged propensities must be in (0, 1]", field="logging_pmf")
        if self.learnable is None:
            object.__setattr__(self, "learnable", np.ones(n, dtype=bool))

    @property
    def n(self) -> int:
        return len(self.chosen)

    def __len__(self) -> int:
        return self.n

    @property
    def max_actions(self) -> int:
        return int(self.action_ids.shape[1])

    @property
    def n_actions(self) -> np.ndarray:
        counts: np.ndarray = self.action_mask.sum(axis=1)
        return counts

    @property
    def propensity(self) -> np.ndarray:
        """(n,) logged probability of the chosen candidate."""
        chosen: np.ndarray = self.logging_pmf[np.arange(self.n), self.chosen]
        return chosen

    @property
    def chosen_ids(self) -> np.ndarray:
        ids: np.ndarray = self.action_ids[np.arange(self.n), self.chosen]
        return ids

    def subset(self, rows: np.ndarray | Sequence[int]) -> BanditLog:
        """The events at ``rows`` (a boolean mask or indices), in the same column layout."""
        index = np.asarray(rows)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        return BanditLog(
            event_ids=self.event_ids[index],
            timestamps=self.timestamps[index],
            action_ids=self.action_ids[index],
            action_mask=self.action_mask[index],
            logging_pmf=self.logging_pmf[index],
            chosen=self.chosen[index],
            reward=self.reward[index],
            arms=self.arms[index],
            contexts=tuple(self.contexts[i] for i in index) if self.contexts else (),
            candidates=tuple(self.candidates[i] for i in index) if self.candidates else (),
            learnable=None if self.learnable is None else self.learnable[index],
            meta=self.meta,
        )

    @classmethod
    def from_records(
        cls,
        records: Sequence[Mapping[str, Any]],
        meta: Mapping[str, Any] | None = None,
    ) -> BanditLog:
        """Build from per-event dicts with keys ``event_id``, ``timestamp``, ``action_ids``,
        ``pmf``, ``chosen``, ``reward`` and optionally ``arm``, ``context``, ``candidates``
        (list of Candidate), ``learnable``."""
        n = len(records)
        width = max((len(r["action_ids"]) for r in records), default=1)
        action_ids = np.full((n, width), "", dtype=object)
        mask = np.zeros((n, width), dtype=bool)
        pmf = np.zeros((n, width), dtype=np.float64)
        for row, record in enumerate(records):
            k = len(record["action_ids"])
            if len(record["pmf"]) != k:
                raise LogError(f"event {row}: pmf and action_ids differ in length", field="pmf")
            action_ids[row, :k] = list(record["action_ids"])
            mask[row, :k] = True
            pmf[row, :k] = record["pmf"]
        with_context = any("context" in r for r in records)
        with_candidates = any("candidates" in r for r in records)
        return cls(
            event_ids=np.array([str(r["event_id"]) for r in records], dtype=object),
            timestamps=np.array([float(r.get("timestamp", 0.0)) for r in records], dtype=np.float64),
            action_ids=action_ids,
            action_mask=mask,
            logging_pmf=pmf,
            chosen=np.array([int(r["chosen"]) for r in records], dtype=np.int64),
            reward=np.array([float(r["reward"]) for r in records], dtype=np.float64),
            arms=np.array([str(r.get("arm", "")) for r in records], dtype=object),
            contexts=tuple(r.get("context", {}) for r in records) if with_context else (),
            candidates=tuple(tuple(r.get("candidates", ())) for r in records) if with_candidates else (),
            learnable=np.array([bool(r.get("learnable", True)) for r in records], dtype=bool),
            meta=dict(meta or {}),
        )
