"""Tables of the learning loop (migration ``0002_learning``), on the shared ``Base``.

``learner_leases``
    One row per policy: which learner may write its snapshots, until when.
    Taken and renewed with one conditional ``UPDATE`` (atomic on SQLite and
    PostgreSQL), re-checked inside every snapshot transaction (a fence).
``learned_decisions``
    Optional ledger (``SLOTBANDIT_LEARNER_LEDGER=1``): one row per decision a
    policy learned, written in the snapshot's transaction. Its primary key
    ``(policy_name, seq)`` makes learning a decision twice an integrity error,
    which is how the crash test proves exactly-once.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, DateTime, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from api.db.models import Base, utcnow

__all__ = ["LearnedDecision", "LearnerLease"]


class LearnerLease(Base):
    """The learner that holds a policy (``holder``) until ``expires_at``."""

    __tablename__ = "learner_leases"
    policy_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LearnedDecision(Base):
    """A decision learned by a policy, with the reward it was learned with and the snapshot that holds it."""

    __tablename__ = "learned_decisions"
    policy_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    reward: Mapped[float] = mapped_column(Float)
    snapshot_version: Mapped[int] = mapped_column(BigInteger)
