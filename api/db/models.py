"""SQLAlchemy 2.x models. The schema is owned by the Alembic history in ``migrations/``.

Decisions, activations and rewards are append-only: the log is the source of
truth from which models and reports are rebuilt. A slot's catalog is kept as
immutable versions (``catalog_versions``) so that a decision always knows the
exact features its candidates had.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}
    # Every model here maps one Table (SQLAlchemy types it as any FromClause): say so once, so that
    # ``Model.__table__.insert()`` and ``update(Model.__table__)`` type-check without a cast.
    if TYPE_CHECKING:
        __table__: ClassVar[Table]


class Policy(Base):
    __tablename__ = "policies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    source: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """A challenger's: the policy whose decisions it learns without serving (migration 0008; ``api.champion``)."""


class Slot(Base):
    __tablename__ = "slots"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    default_block: Mapped[str | None] = mapped_column(String(256), nullable=True)
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    reward_window_s: Mapped[int] = mapped_column(Integer, default=3600)
    default_reward: Mapped[float] = mapped_column(Float, default=0.0)
    reward_aggregation: Mapped[str] = mapped_column(String(8), default="sum")
    reward_min: Mapped[float] = mapped_column(Float, default=0.0)
    reward_max: Mapped[float] = mapped_column(Float, default=1.0)
    learning_mode: Mapped[str] = mapped_column(String(16), default="online")
    require_activation: Mapped[bool] = mapped_column(Boolean, default=False)
    policy_name: Mapped[str | None] = mapped_column(String(128), nullable=True)
    catalog_version: Mapped[int] = mapped_column(Integer, default=0)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # server-side default only: an INSERT that does not name it (code written before 0008) works on both schemas
    holdout_share: Mapped[float] = mapped_column(Float, server_default="0")
    """Share of units served the baseline and never learned from (migration 0008; ``api.champion.holdout``)."""
    auto_optimize: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    """The auto-optimize setting (``api.champion.settings.AutoOptimize.to_dict()``); None = off."""


class Block(Base):
    """The current state of one block of a slot; history lives in ``catalog_versions``."""

    __tablename__ = "blocks"
    __table_args__ = (UniqueConstraint("slot_id", "block_id", name="uq_blocks_slot_block"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"))
    block_id: Mapped[str] = mapped_column(String(256))
    features: Mapped[dict[str, Any]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CatalogVersion(Base):
    """An immutable copy of a slot's active blocks (``[{id, features}]``) at one version."""

    __tablename__ = "catalog_versions"
    __table_args__ = (UniqueConstraint("slot_id", "version", name="uq_catalog_versions_slot_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    blocks: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Decision(Base):
    """One logged choice. ``seq`` is the log order the learner follows."""

    __tablename__ = "decisions"
    __table_args__ = (
        Index("ix_decisions_slot_seq", "slot_id", "seq"),
        Index("ix_decisions_unit_key", "unit_key"),
        Index("ix_decisions_created_at", "created_at"),
        # SQLite: never hand out a position again after a purge (migration 0007)
        {"sqlite_autoincrement": True},
    )
    seq: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256), unique=True)
    slot_id: Mapped[int] = mapped_column(Integer)
    policy_name: Mapped[str] = mapped_column(String(128))
    policy_kind: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[int] = mapped_column(Integer, default=0)
    trained: Mapped[bool] = mapped_column(Boolean, default=False)
    learning_mode: Mapped[str] = mapped_column(String(16))
    catalog_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    inline_candidates: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    candidate_ids: Mapped[list[Any]] = mapped_column(JSON)
    pmf: Mapped[list[Any]] = mapped_column(JSON)
    chosen_index: Mapped[int] = mapped_column(Integer)
    chosen_block: Mapped[str] = mapped_column(String(256))
    probability: Mapped[float] = mapped_column(Float)
    context: Mapped[dict[str, Any]] = mapped_column(JSON)
    unit_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    arm: Mapped[str | None] = mapped_column(String(128), nullable=True)
    consent: Mapped[bool] = mapped_column(Boolean, default=True)
    deferred: Mapped[bool] = mapped_column(Boolean, default=False)
    fallback: Mapped[bool] = mapped_column(Boolean, default=False)
    fallback_reason: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Report segments, copied from ``context`` when the decision is written (migration 0005).
    device_type: Mapped[str | None] = mapped_column(String(32), nullable=True)
    country: Mapped[str | None] = mapped_column(String(32), nullable=True)
    daypart: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Activation(Base):
    """The block of an event was really shown (one row per event)."""

    __tablename__ = "activations"
    event_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Reward(Base):
    __tablename__ = "rewards"
    __table_args__ = (
        UniqueConstraint("event_id", "reward_id", name="uq_rewards_event_reward"),
        Index("ix_rewards_event_id", "event_id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(256))
    reward_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    value: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Snapshot(Base):
    """A saved VW model of a policy and the cursor (decision seq) of the last event it learned."""

    __tablename__ = "snapshots"
    __table_args__ = (UniqueConstraint("policy_name", "version", name="uq_snapshots_policy_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    policy_name: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    model: Mapped[bytes] = mapped_column(LargeBinary)
    cursor: Mapped[int] = mapped_column(BigInteger, default=0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
