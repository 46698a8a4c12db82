"""Which arm a unit gets: the sticky hash draw and the running experiments kept in memory.

Assignment (sticky, uniform, independent across experiments)
    ``u = H(salt_e, unit) in [0, 1)`` with ``H`` the first 53 bits of
    SHA-256(salt || 0x00 || unit) and ``salt_e`` random per experiment; the
    arm is the first whose cumulative share exceeds ``u``. The unit is the
    request's ``unit_id``, else the event id (then every decision is its own
    unit). Running experiments live in memory (:class:`ExperimentBook`),
    refreshed by polling a cheap revision query as ``api.registry`` does, so
    the decide hot path does one dict lookup and one hash.
"""

from __future__ import annotations

import bisect
import hashlib
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Engine, select

from api.db.experiment_models import Experiment, ExperimentArm
from api.decide import ArmAssignment
from api.registry import SlotState

__all__ = ["ExperimentBook", "RunningExperiment", "unit_draw"]


def unit_draw(salt: bytes, unit: str) -> float:
    """A number in [0, 1) fixed by (salt, unit): 53 bits of SHA-256(salt || 0x00 || unit)."""
    digest = hashlib.sha256(salt + b"\x00" + unit.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


@dataclass(frozen=True)
class RunningExperiment:
    id: int
    slot_id: int
    salt: bytes
    bounds: tuple[float, ...]
    """Cumulative shares; the last is forced to 1."""
    arms: tuple[ArmAssignment, ...]
    revision: int

    def assign(self, unit: str) -> ArmAssignment:
        index = bisect.bisect_right(self.bounds, unit_draw(self.salt, unit))
        return self.arms[min(index, len(self.arms) - 1)]


class ExperimentBook:
    """Running experiments by slot id, in memory; :meth:`refresh` polls the database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.running: dict[int, RunningExperiment] = {}

    def refresh(self) -> None:
        with self._engine.connect() as connection:
            rows = connection.execute(
                select(Experiment.id, Experiment.slot_id, Experiment.revision, Experiment.salt)
                .where(Experiment.status == "running")
            ).all()
            current = {e.id: e for e in self.running.values()}
            fresh: dict[int, RunningExperiment] = {}
            for row in rows:
                known = current.get(row.id)
                if known is not None and known.revision == row.revision:
                    fresh[row.slot_id] = known
                    continue
                arms = connection.execute(
                    select(ExperimentArm.name, ExperimentArm.policy_name, ExperimentArm.share)
                    .where(ExperimentArm.experiment_id == row.id).order_by(ExperimentArm.position)
                ).all()
                cumulative = list(np.cumsum([a.share for a in arms]))
                cumulative[-1] = 1.0
                fresh[row.slot_id] = RunningExperiment(
                    row.id, row.slot_id, row.salt.encode("ascii"), tuple(float(c) for c in cumulative),
                    tuple(ArmAssignment(row.id, a.name, a.policy_name) for a in arms), row.revision,
                )
        self.running = fresh  # one reference swap: the decide path reads it once

    def resolve(self, slot: SlotState, unit: str) -> ArmAssignment | None:
        """The decide hook (``Decider.resolve_arm``): the unit's arm, or None without a running experiment."""
        running = self.running.get(slot.id)
        return running.assign(unit) if running is not None else None
