"""Tables of champion and challenger (migration ``0008_champion_challenger``), on the shared ``Base``.

``policy_revisions``
    The audit of a slot's serving policy: one row per promotion (``action = "promotion"``: who,
    when, old and new configuration, the evidence, and the two models that were swapped so the
    change can be undone exactly), per dry-run recommendation (``"recommendation"``: the evidence
    only, nothing changed) and per rollback (``"rollback"``, pointing at the promotion it undid).
``auto_optimize_state``
    One row per slot with auto-optimize on: the claim (``holder`` until ``claimed_until``) that
    makes one serving worker at a time run the slot's auto-optimize, taken with one conditional
    UPDATE like the learner's leases, and when it last ran with what outcome.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from api.db.models import Base, utcnow

__all__ = ["AutoOptimizeState", "PolicyRevision"]


class PolicyRevision(Base):
    """One audited change (or dry-run recommendation) of a slot's serving policy."""

    __tablename__ = "policy_revisions"
    __table_args__ = (Index("ix_policy_revisions_slot_id", "slot_name", "id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_name: Mapped[str] = mapped_column(String(128))
    policy_name: Mapped[str] = mapped_column(String(128))
    """The serving policy that changed (or would have)."""
    action: Mapped[str] = mapped_column(String(16))
    """``promotion`` | ``recommendation`` (dry-run: nothing changed) | ``rollback``."""
    actor: Mapped[str] = mapped_column(String(64))
    """``auto-optimize``, ``key:<id>`` (the admin key of the API call) or ``cli``."""
    challenger: Mapped[str | None] = mapped_column(String(128), nullable=True)
    """The challenger policy promoted (it now holds the old configuration), or None for a candidate
    configuration of the setting."""
    policy_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """``policies.revision`` of the serving policy after the change."""
    old_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    new_config: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    old_model: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """The serving policy's newest snapshot before the change (what a rollback restores)."""
    old_cursor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    new_model: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    """The model the serving policy got (the challenger's snapshot, or one trained on the log)."""
    new_cursor: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    snapshot_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """The serving policy's snapshot version written by the change."""
    evidence: Mapped[dict[str, Any]] = mapped_column(JSON)
    """evaluation_id, candidate, difference, ci, p_adjusted, level, health_ok, reason."""
    rollback_of: Mapped[int | None] = mapped_column(Integer, nullable=True)
    rolled_back_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AutoOptimizeState(Base):
    """The claim and the last run of one slot's auto-optimize."""

    __tablename__ = "auto_optimize_state"
    slot_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claimed_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_outcome: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
