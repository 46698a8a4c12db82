"""Stored offline evaluations (migration ``0004_evaluations``), on the shared ``Base``.

An evaluation is ``pending`` -> ``running`` -> ``done`` | ``failed``. ``request``
holds the validated request (slot, dates, candidates as ``VWConfig.to_dict()``,
method, interval, level), ``result`` the JSON of
:meth:`analysis.evaluation.Evaluation.to_dict` once done, ``applied`` the
record of ``POST /v1/evaluations/{id}/apply`` (candidate, policy revision,
snapshot version). Rows survive restarts: a server that stops while an
evaluation runs puts it back to ``pending``; one that died leaves a stale
``heartbeat_at``, and the next runner puts it back to ``pending``. Runners claim
pending rows with a conditional UPDATE, so several server processes share them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db.models import Base, utcnow

__all__ = ["StoredEvaluation"]


class StoredEvaluation(Base):
    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_slot_name", "slot_name"), Index("ix_evaluations_status", "status"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    slot_name: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    applied: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    """Renewed every few seconds while running; a stale one means its process died."""
