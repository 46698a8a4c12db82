"""What a serving worker knows: slots, their catalogs, their policies and the models in use.

Loaded from the database at start and refreshed by polling cheap revision
counters (``slots.revision``, ``policies.revision``, latest snapshot version),
so several workers converge within ``reload_interval_s`` of a change and a new
model is hot-swapped without dropping a request (the swap is one reference
assignment; the decide path reads the reference once). A slot this worker has not
seen yet is read through to the database (:meth:`Registry.read_through`), and
admin reads reload first, so an admin write on one worker is read back on every
other at once.

New models matter sooner than admin changes (the learner snapshots about once a
second): :meth:`Registry.refresh_models` looks only at the newest snapshot
version of each policy, one small query on the (policy, version) index, every
``model_poll_interval_s`` (0.2 s). A new model is loaded and its catalog's
block examples parsed on the polling thread before the swap, so the first
decision on it costs what any other does. A snapshot that cannot be loaded is
tried once per version, not on every poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, func, select

from api.db.catalog import candidates_of, catalog_blocks
from api.db.models import Policy, Slot, Snapshot
from bandits.choosers import MODEL_KINDS, build_chooser
from bandits.policies import Candidate, Chooser, PolicyConfig

__all__ = ["PolicyState", "Registry", "SlotState"]

log = logging.getLogger("slotbandit.registry")


@dataclass(frozen=True)
class SlotState:
    id: int
    name: str
    default_block: str | None
    timezone: str
    reward_window_s: int
    default_reward: float
    reward_aggregation: str
    reward_min: float
    reward_max: float
    learning_mode: str
    require_activation: bool
    policy_name: str
    catalog_version: int
    revision: int
    candidates: tuple[Candidate, ...] = ()
    holdout_share: float = 0.0
    """Share of units served the baseline and never learned from (``api.champion.holdout``)."""
    auto_optimize: Mapping[str, Any] | None = None
    """The auto-optimize setting (``api.champion.settings``), None when off."""
    by_id: Mapping[str, Candidate] = field(default_factory=dict)
    features_by_id: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Block id -> features of this catalog version, built once (the decide response needs it)."""

    @property
    def catalog_key(self) -> str:
        return f"{self.id}:{self.catalog_version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "default_block": self.default_block,
            "timezone": self.timezone,
            "reward_window_s": self.reward_window_s,
            "default_reward": self.default_reward,
            "reward_aggregation": self.reward_aggregation,
            "reward_range": [self.reward_min, self.reward_max],
            "learning_mode": self.learning_mode,
            "require_activation": self.require_activation,
            "policy": self.policy_name,
            "catalog_version": self.catalog_version,
            "holdout_share": self.holdout_share,
            "auto_optimize": dict(self.auto_optimize) if self.auto_optimize else {"mode": "off"},
            "blocks": [{"id": c.id, "features": dict(c.features)} for c in self.candidates],
        }


@dataclass(frozen=True)
class PolicyState:
    name: str
    config: PolicyConfig
    chooser: Chooser
    model_version: int
    revision: int


class Registry:
    def __init__(self, engine: Engine, on_model: Any = None) -> None:
        self._engine = engine
        self.slots: dict[str, SlotState] = {}
        self.policies: dict[str, PolicyState] = {}
        self._lock = threading.Lock()
        self._on_model = on_model
        self._broken: set[tuple[str, int]] = set()
        """(policy, version) snapshots that failed to load: not tried again."""

    def slot_by_id(self, slot_id: int) -> SlotState | None:
        for slot in self.slots.values():
            if slot.id == slot_id:
                return slot
        return None

    def read_through(self, name: str, stale: SlotState | None = None) -> SlotState | None:
        """The slot ``name`` after a miss (or when ``stale``, the copy held, cannot serve: its first
        blocks may have just been added): one indexed read of its revision asks the database
        whether another worker changed it since the last poll; if so, reload what changed."""
        slot = self.slots.get(name)
        if slot is not None and slot is not stale:
            return slot
        with self._engine.connect() as connection:
            revision = connection.execute(select(Slot.revision).where(Slot.name == name)).scalar_one_or_none()
        if revision is None:
            return None
        if slot is None or slot.revision != revision:
            self.refresh()
        return self.slots.get(name)

    def refresh(self) -> None:
        """Reload whatever changed since the last call (safe to call from any thread)."""
        with self._lock, self._engine.connect() as connection:
            slot_revisions = dict(connection.execute(select(Slot.name, Slot.revision)).all())
            # challengers (api.champion) never serve: they are not loaded
            policy_revisions = dict(connection.execute(
                select(Policy.name, Policy.revision).where(Policy.source.is_(None))).all())
            versions = self._versions(connection)
            for name in list(self.slots):
                if name not in slot_revisions:
                    del self.slots[name]
            for name, revision in slot_revisions.items():
                current = self.slots.get(name)
                if current is None or current.revision != revision:
                    self.slots[name] = self._load_slot(connection, name)
            for name in list(self.policies):
                if name not in policy_revisions:
                    del self.policies[name]
            for name, revision in policy_revisions.items():
                served = self.policies.get(name)
                version = versions.get(name, 0) or 0
                if served is None or served.revision != revision or self._newer(served, version):
                    self.policies[name] = self._load_policy(connection, name, version)

    def refresh_models(self) -> None:
        """Load the policies whose newest snapshot version changed (the fast poll; safe from any thread)."""
        with self._lock, self._engine.connect() as connection:
            versions = self._versions(connection)
            for name, current in list(self.policies.items()):
                version = versions.get(name, 0) or 0
                if self._newer(current, version):
                    self.policies[name] = self._load_policy(connection, name, version)

    @staticmethod
    def _versions(connection: Any) -> dict[str, int]:
        return dict(
            connection.execute(select(Snapshot.policy_name, func.max(Snapshot.version)).group_by(Snapshot.policy_name)).all()
        )

    def _newer(self, current: PolicyState, version: int) -> bool:
        """Does the newest snapshot ``version`` differ from the model served (and is it not known broken)?"""
        return current.model_version != version and (current.name, version) not in self._broken

    def _load_slot(self, connection: Any, name: str) -> SlotState:
        row = connection.execute(select(Slot.__table__).where(Slot.name == name)).mappings().one()
        candidates = candidates_of(catalog_blocks(connection, row["id"], row["catalog_version"]))
        return SlotState(
            id=row["id"],
            name=row["name"],
            default_block=row["default_block"],
            timezone=row["timezone"],
            reward_window_s=row["reward_window_s"],
            default_reward=row["default_reward"],
            reward_aggregation=row["reward_aggregation"],
            reward_min=row["reward_min"],
            reward_max=row["reward_max"],
            learning_mode=row["learning_mode"],
            require_activation=row["require_activation"],
            policy_name=row["policy_name"] or row["name"],
            catalog_version=row["catalog_version"],
            revision=row["revision"],
            candidates=candidates,
            holdout_share=float(row.get("holdout_share") or 0.0),
            auto_optimize=row.get("auto_optimize") or None,
            by_id={c.id: c for c in candidates},
            features_by_id={c.id: c.features for c in candidates},
        )

    def _load_policy(self, connection: Any, name: str, version: int) -> PolicyState:
        row = connection.execute(select(Policy.__table__).where(Policy.name == name)).mappings().one()
        config = PolicyConfig.from_dict(row["config"])
        model: bytes | None = None
        trained: bool | None = None
        if config.kind in MODEL_KINDS and version:
            model, metrics = connection.execute(
                select(Snapshot.model, Snapshot.metrics).where(Snapshot.policy_name == name, Snapshot.version == version)
            ).one()
            if isinstance(metrics, dict) and metrics.get("trained") is False:
                trained = False  # a reset: fresh bytes that have learned nothing
        try:
            chooser = build_chooser(config, model, trained=trained)
        except Exception:  # a broken snapshot must not take the slot down: serve untrained
            log.exception("cannot load model %s v%s; serving it untrained", name, version)
            self._broken.add((name, version))
            chooser = build_chooser(config)
            version = 0
        self._warm(chooser, name)
        if self._on_model is not None:
            self._on_model(name, version)
        return PolicyState(name=name, config=config, chooser=chooser, model_version=version, revision=row["revision"])

    def _warm(self, chooser: Chooser, policy_name: str) -> None:
        """Parse the block examples of the catalogs this policy serves now, before the swap."""
        for slot in list(self.slots.values()):
            if slot.policy_name != policy_name or not slot.candidates:
                continue
            try:
                chooser.pmf({}, slot.candidates, slot.catalog_key)
            except Exception:  # noqa: BLE001 - a warm-up only; the decide path has its own fallback
                log.debug("warm-up of %s on %s failed", policy_name, slot.name, exc_info=True)
