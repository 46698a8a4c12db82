"""Challengers: policies the learner trains on the serving policy's stream without serving them.

A challenger is a row of ``policies`` of a model kind (``vw`` or ``linear``) whose ``source`` names
the policy it learns from: the slot's serving policy when it was added. The learner gives it a
:class:`api.learner.PolicyLearner` over the source's decisions (their logged propensities, the
same reward rules), with its own lease, snapshots and progressive-validation metrics; the registry
never loads it, so no worker serves it and no slot or experiment can name it. Its snapshots are
managed like any policy's (``/v1/policies/{name}/snapshots``, ``.../model``, ``.../learning``).
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, insert, select, update

from api import schemas
from api.db.learning_models import LearnedDecision, LearnerLease
from api.db.models import Decision, Policy, Slot, Snapshot, utcnow
from api.errors import ApiError
from api.learner import latest_snapshot
from bandits.choosers import MODEL_KINDS
from bandits.policies import PolicyConfig

__all__ = ["MAX_CHALLENGERS", "challenger_dict", "delete_challenger", "list_challengers", "put_challenger",
           "serving_policy"]

MAX_CHALLENGERS = 5
"""Most challengers per serving policy (each is a model learned on every decision of the stream)."""
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
"""A challenger's name is also its candidate name in offline evaluations: 1-64 characters."""


def serving_policy(connection: Connection, slot: str) -> tuple[dict[str, Any], str]:
    """(the slot's row, the name of its serving policy); 404 for an unknown slot."""
    row = connection.execute(select(Slot.__table__).where(Slot.name == slot)).mappings().first()
    if row is None:
        raise ApiError(404, "unknown_slot", f"slot '{slot}' does not exist", "slot")
    return dict(row), row["policy_name"] or slot


def _challenger_row(connection: Connection, source: str, name: str) -> Any:
    row = connection.execute(select(Policy.name, Policy.kind, Policy.config, Policy.source, Policy.revision)
                             .where(Policy.name == name)).first()
    if row is None or row.source != source:
        raise ApiError(404, "unknown_challenger", f"'{name}' is not a challenger of policy '{source}'", "name")
    return row


def challenger_dict(connection: Connection, name: str) -> dict[str, Any]:
    """A challenger with its newest snapshot's learning metrics and how far it is behind its stream."""
    row = connection.execute(select(Policy.name, Policy.kind, Policy.config, Policy.source, Policy.revision)
                             .where(Policy.name == name)).one()
    snap = latest_snapshot(connection, name)
    cursor = snap.cursor if snap else 0
    pending = connection.execute(select(func.count()).select_from(Decision).where(
        Decision.policy_name == row.source, Decision.seq > cursor)).scalar_one()
    metrics = snap.metrics if snap else {}
    return {
        "name": row.name, "source": row.source, "revision": row.revision, **row.config,
        "snapshot": None if snap is None else {"version": snap.version, "cursor": snap.cursor},
        "decisions_pending": int(pending),
        "metrics": {key: metrics.get(key) for key in ("trained", "decisions_learned", "average_reward", "pv_loss",
                                                      "skipped", "window")},
    }


def put_challenger(engine: Engine, slot: str, name: str, body: bytes) -> tuple[dict[str, Any], bool]:
    """Add (or change) challenger ``name`` of the slot's serving policy; (its dict, created).

    The body is a policy (``{"kind": "linear", "linear": {...}}`` or ``{"kind": "vw", "vw": {...}}``);
    ``{"kind": "linear"}`` is the linear twin with default options. A changed configuration makes
    the learner start the challenger over from its newest snapshot, as for any policy.
    """
    if not NAME.match(name):
        raise ApiError(422, "invalid_request", "challenger names are 1-64 of A-Z a-z 0-9 . _ : - "
                       "(starting with a letter or digit)", "name")
    payload: schemas.PolicyRequest = schemas.decode_request(body, schemas.PolicyRequest)
    if payload.kind not in MODEL_KINDS:
        raise ApiError(422, "invalid_request", f"a challenger learns: its kind is one of {', '.join(MODEL_KINDS)}",
                       "kind")
    config: PolicyConfig = schemas.policy_config(payload)
    with engine.begin() as connection:
        _, source = serving_policy(connection, slot)
        if name == source or name in ("online", "baseline", "uniform"):
            raise ApiError(422, "invalid_request", f"'{name}' is the serving policy or a standard policy name",
                           "name")
        existing = connection.execute(select(Policy.source, Policy.config).where(Policy.name == name)).first()
        if existing is not None and existing.source != source:
            what = "a serving policy" if existing.source is None else f"a challenger of '{existing.source}'"
            raise ApiError(409, "policy_exists", f"policy '{name}' exists and is {what}", "name")
        if existing is None:
            count = connection.execute(select(func.count()).select_from(Policy)
                                       .where(Policy.source == source)).scalar_one()
            if count >= MAX_CHALLENGERS:
                raise ApiError(422, "invalid_request", f"policy '{source}' has {MAX_CHALLENGERS} challengers, the most "
                               "allowed", "name")
            connection.execute(insert(Policy).values(name=name, kind=config.kind, config=config.to_dict(),
                                                     source=source))
        elif existing.config != config.to_dict():
            connection.execute(update(Policy).where(Policy.name == name).values(
                kind=config.kind, config=config.to_dict(), revision=Policy.revision + 1, updated_at=utcnow()))
        return challenger_dict(connection, name), existing is None


def list_challengers(engine: Engine, slot: str) -> dict[str, Any]:
    """The slot's serving policy (with its own learning metrics) and its challengers."""
    with engine.connect() as connection:
        _, source = serving_policy(connection, slot)
        names = connection.execute(select(Policy.name).where(Policy.source == source)
                                   .order_by(Policy.name)).scalars().all()
        snap = latest_snapshot(connection, source)
        serving = {"name": source, "snapshot": None if snap is None else {"version": snap.version,
                                                                         "cursor": snap.cursor},
                   "metrics": {k: (snap.metrics if snap else {}).get(k)
                               for k in ("trained", "decisions_learned", "average_reward", "pv_loss", "window")}}
        return {"slot": slot, "serving": serving, "challengers": [challenger_dict(connection, n) for n in names]}


def delete_challenger(engine: Engine, slot: str, name: str) -> dict[str, Any]:
    """Remove a challenger with its snapshots, lease and ledger rows (a learner holding it drops it)."""
    with engine.begin() as connection:
        _, source = serving_policy(connection, slot)
        _challenger_row(connection, source, name)
        connection.execute(delete(Policy).where(Policy.name == name))
        connection.execute(delete(Snapshot).where(Snapshot.policy_name == name))
        connection.execute(delete(LearnerLease).where(LearnerLease.policy_name == name))
        connection.execute(delete(LearnedDecision).where(LearnedDecision.policy_name == name))
    return {"slot": slot, "challenger": name, "removed": True}
