"""Experiment tables: an experiment on a slot and its arms (models on ``api.db.models.Base``).

An experiment is ``draft`` -> ``running`` -> ``stopped``; at most one per slot
is running (checked in ``api.experiments.lifecycle`` inside the transaction that starts
it). ``salt`` keys the unit -> arm hash of this experiment alone, so that
assignments are independent across experiments. Decisions refer to an
experiment by ``decisions.experiment_id`` and to an arm by its name
(``decisions.arm``).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from api.db.models import Base, Decision, utcnow

__all__ = ["Experiment", "ExperimentArm", "ReportChunk"]


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (Index("ix_experiments_slot_status", "slot_id", "status"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    slot_id: Mapped[int] = mapped_column(ForeignKey("slots.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="draft")
    """draft | running | stopped"""
    control_arm: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(32), default="reward_per_decision")
    """Primary metric: reward_per_decision (mean reward) or reward_per_unit."""
    learning_start: Mapped[str] = mapped_column(String(16), default="scratch")
    """How learning arms start: 'snapshot' (a copy of the slot policy's latest model) or 'scratch'."""
    analysis: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """AnalysisConfig overrides (binary, sequential, level, planned_units, ...)."""
    guardrails: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """max_fallback_rate, max_latency_ms."""
    salt: Mapped[str] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ExperimentArm(Base):
    __tablename__ = "experiment_arms"
    __table_args__ = (UniqueConstraint("experiment_id", "name", name="uq_experiment_arms_experiment_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(128))
    policy_name: Mapped[str] = mapped_column(String(128))
    share: Mapped[float] = mapped_column(Float)
    start: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """Per-arm override of the experiment's learning_start."""


class ReportChunk(Base):
    """Part of the report's binary copy of an experiment's log (migration 0006; ``api.reports.copy``,
    "Report copy"). Written by report readers only. Chunk ``position`` k covers the decisions after
    chunk k-1's cursor up to its own (``meta``: base and cursor of decision seq, reward id and
    activation key, the row counts at the cursor, new labels); ``data`` is an ``.npz`` of the
    encoded columns. Deleting an experiment's chunks is always safe: the next report rebuilds them.
    """

    __tablename__ = "report_chunks"
    __table_args__ = (UniqueConstraint("experiment_id", "position", name="uq_report_chunks_experiment_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    """What the encoding depends on (format version, dialect, arms, reward window); another value voids the chunk."""
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


# The report reads one experiment's decisions: index them by (experiment_id, seq).
# Declared here (attached to the decisions table) so that the metadata matches 0003.
Index("ix_decisions_experiment_seq", Decision.__table__.c.experiment_id, Decision.__table__.c.seq)
