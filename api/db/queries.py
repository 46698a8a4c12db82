"""Query helpers: plain functions that take an engine or connection (no hidden state)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import Connection, CursorResult, Engine, delete, func, insert, select, update

from api.db.experiment_models import ReportChunk
from api.db.models import Activation, Block, CatalogVersion, Decision, Policy, Reward, Slot, utcnow

__all__ = [
    "JsonMemo",
    "inserted_id",
    "active_block_ids",
    "deactivate_block",
    "erase_unit",
    "find_decision",
    "purge_older_than",
    "upsert_block",
    "upsert_policy",
    "upsert_slot",
]

_decisions = Decision.__table__


class JsonMemo:
    """Stored JSON text -> value with msgspec, decoded once per distinct text (callers must not mutate
    the values): log readers meet the same candidate sets, pmfs and contexts over and over.

    ``size`` bounds how many values are kept (None: all); ``float_lists`` turns lists of numbers into
    lists of floats (a pmf stored as ``[1, 0]`` reads as ``[1.0, 0.0]``).
    """

    def __init__(self, size: int | None = None, *, float_lists: bool = False) -> None:
        self.size = size
        self.float_lists = float_lists
        self.values: dict[str, Any] = {}

    def __call__(self, text: str | None) -> Any:
        if text is None:
            return None
        value = self.values.get(text)
        if value is None:
            value = msgspec.json.decode(text)
            if self.float_lists and isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
                value = [float(v) for v in value]
            if self.size is None or len(self.values) < self.size:
                self.values[text] = value
        return value


def upsert_policy(connection: Connection, name: str, kind: str, config: dict[str, Any]) -> bool:
    """Create or change a policy; True when it was created. Bumps its revision on change."""
    row = connection.execute(select(Policy.id, Policy.config).where(Policy.name == name)).first()
    if row is None:
        connection.execute(insert(Policy).values(name=name, kind=kind, config=config))
        return True
    if row.config != config:
        connection.execute(
            update(Policy).where(Policy.name == name).values(
                kind=kind, config=config, revision=Policy.revision + 1, updated_at=utcnow()
            )
        )
    return False


def upsert_slot(connection: Connection, name: str, values: dict[str, Any]) -> bool:
    """Create or change a slot with the given column values; True when created."""
    row = connection.execute(select(Slot.id).where(Slot.name == name)).first()
    if row is None:
        connection.execute(insert(Slot).values(name=name, **values))
        return True
    if values:
        connection.execute(
            update(Slot).where(Slot.name == name).values(**values, revision=Slot.revision + 1, updated_at=utcnow())
        )
    return False


def _new_catalog_version(connection: Connection, slot_id: int) -> int:
    """Freeze the slot's active blocks as a new catalog version and point the slot at it."""
    version = (connection.execute(select(Slot.catalog_version).where(Slot.id == slot_id)).scalar_one() or 0) + 1
    blocks = [
        {"id": block_id, "features": features}
        for block_id, features in connection.execute(
            select(Block.block_id, Block.features).where(Block.slot_id == slot_id, Block.active.is_(True)).order_by(Block.id)
        ).all()
    ]
    connection.execute(insert(CatalogVersion).values(slot_id=slot_id, version=version, blocks=blocks))
    connection.execute(
        update(Slot).where(Slot.id == slot_id).values(
            catalog_version=version, revision=Slot.revision + 1, updated_at=utcnow()
        )
    )
    return version


def upsert_block(connection: Connection, slot_id: int, block_id: str, features: dict[str, Any]) -> tuple[bool, int]:
    """Add, change or re-activate a block. Returns (created, catalog version); unchanged -> same version."""
    row = connection.execute(
        select(Block.id, Block.features, Block.active).where(Block.slot_id == slot_id, Block.block_id == block_id)
    ).first()
    if row is None:
        connection.execute(insert(Block).values(slot_id=slot_id, block_id=block_id, features=features, active=True))
        return True, _new_catalog_version(connection, slot_id)
    if row.features == features and row.active:
        version = connection.execute(select(Slot.catalog_version).where(Slot.id == slot_id)).scalar_one()
        return False, version
    connection.execute(update(Block).where(Block.id == row.id).values(features=features, active=True, updated_at=utcnow()))
    return False, _new_catalog_version(connection, slot_id)


def active_block_ids(connection: Connection, slot_id: int) -> set[str]:
    """The ids of the slot's active blocks."""
    return set(connection.execute(
        select(Block.block_id).where(Block.slot_id == slot_id, Block.active.is_(True))
    ).scalars())


def deactivate_block(connection: Connection, slot_id: int, block_id: str) -> int | None:
    """Deactivate a block; returns the new catalog version, or None if the block is unknown."""
    row = connection.execute(select(Block.id, Block.active).where(Block.slot_id == slot_id, Block.block_id == block_id)).first()
    if row is None:
        return None
    if not row.active:
        return connection.execute(select(Slot.catalog_version).where(Slot.id == slot_id)).scalar_one()
    connection.execute(update(Block).where(Block.id == row.id).values(active=False, updated_at=utcnow()))
    return _new_catalog_version(connection, slot_id)


def find_decision(connection: Connection, event_id: str) -> dict[str, Any] | None:
    row = connection.execute(select(_decisions).where(_decisions.c.event_id == event_id)).mappings().first()
    return dict(row) if row else None


def erase_unit(engine: Engine, unit_key: str) -> int:
    """Forget a unit: its pseudonym and user features go from every decision. Returns decisions touched.

    The report copies of the experiments those decisions belong to are dropped in the same
    transaction (they hold the unit's hashed key and its grouping; the next report rebuilds them).
    """
    with engine.begin() as connection:
        rows = connection.execute(
            select(_decisions.c.seq, _decisions.c.context, _decisions.c.experiment_id)
            .where(_decisions.c.unit_key == unit_key)
        ).all()
        for seq, context, _ in rows:
            scrubbed = {k: v for k, v in (context or {}).items() if k != "user"}
            connection.execute(update(_decisions).where(_decisions.c.seq == seq).values(unit_key=None, context=scrubbed))
        experiments = {r.experiment_id for r in rows if r.experiment_id is not None}
        if experiments:
            connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id.in_(experiments)))
    return len(rows)


def purge_older_than(engine: Engine, days: float, now: datetime | None = None) -> dict[str, int]:
    """Delete decisions older than ``days`` with their activations and rewards (retention)."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    with engine.begin() as connection:
        old = select(_decisions.c.event_id).where(_decisions.c.created_at < cutoff)
        rewards = connection.execute(delete(Reward).where(Reward.event_id.in_(old))).rowcount
        activations = connection.execute(delete(Activation).where(Activation.event_id.in_(old))).rowcount
        decisions = connection.execute(delete(_decisions).where(_decisions.c.created_at < cutoff)).rowcount
        if decisions or rewards or activations:
            connection.execute(delete(ReportChunk))  # report copies are rebuilt from what is left
    return {"decisions": decisions, "activations": activations, "rewards": rewards}


def counts(connection: Connection) -> dict[str, int]:
    return {
        "decisions": connection.execute(select(func.count()).select_from(_decisions)).scalar_one(),
        "rewards": connection.execute(select(func.count()).select_from(Reward)).scalar_one(),
        "activations": connection.execute(select(func.count()).select_from(Activation)).scalar_one(),
    }


def rewards_of(connection: Connection, event_id: str) -> list[dict[str, Any]]:
    rows = connection.execute(
        select(Reward.reward_id, Reward.value, Reward.created_at).where(Reward.event_id == event_id).order_by(Reward.id)
    ).all()
    return [{"reward_id": r.reward_id, "value": r.value, "created_at": r.created_at.isoformat()} for r in rows]


def reward_values(connection: Connection, event_id: str) -> list[tuple[str | None, float]]:
    """(reward id, value) of every reward of an event, in the order they were stored."""
    rows = connection.execute(
        select(Reward.reward_id, Reward.value).where(Reward.event_id == event_id).order_by(Reward.id)
    ).all()
    return [(r.reward_id, r.value) for r in rows]


def activated_at(connection: Connection, event_id: str) -> datetime | None:
    return connection.execute(select(Activation.created_at).where(Activation.event_id == event_id)).scalar_one_or_none()


def inserted_id(result: CursorResult[Any]) -> int:
    """The primary key of the one row an ``INSERT`` wrote."""
    key = result.inserted_primary_key
    if key is None:
        raise RuntimeError("the statement inserted no row")
    return int(key[0])
