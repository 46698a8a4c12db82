"""Audited policy revisions: a promotion swaps champion and challenger, a rollback swaps them back.

Promotion (:func:`promote`), in ONE transaction:

* the serving policy takes the winner's configuration (a new ``policies.revision``, so every
  worker reloads it) and, as its newest snapshot, the winner's model: a challenger's newest
  snapshot (model and cursor: the serving learner learns on after the challenger's position, the
  two cursors being positions in the same stream), or for a candidate configuration of the setting
  a model trained on the slot's log (as ``POST /v1/evaluations/{id}/apply`` does);
* a promoted challenger takes the old configuration and the old serving model (its cursor too),
  so the old champion keeps learning as a challenger and can win back; when the old serving policy
  was no model (``uniform``, ``fixed``, ``rules``) the challenger is removed instead;
* ledger rows past each new cursor are forgotten (they are learned again);
* a ``policy_revisions`` row keeps who, when, both configurations, both models with their
  cursors, and the evidence.

A running learner sees the newer versions (and the changed configurations) on its next step and
continues from them (``api.learner``). Rollback (:func:`rollback`) of the newest promotion of a
slot restores, the same way, the old configuration with the old model and cursor on the serving
policy, and the challenger's configuration with the model it had when promoted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from api.db.champion_models import PolicyRevision
from api.db.engine import write_lock
from api.db.learning_models import LearnedDecision
from api.db.models import Policy, utcnow
from api.db.queries import upsert_policy
from api.errors import ApiError
from api.learner import LearnerSettings, append_snapshot, latest_snapshot
from bandits.choosers import MODEL_KINDS, build_model
from bandits.policies import PolicyConfig

__all__ = ["list_revisions", "promote", "record_recommendation", "revision_dict", "rollback"]


def _keep() -> int:
    return LearnerSettings.from_env().keep_snapshots


def _fresh_model(config: Mapping[str, Any]) -> bytes:
    model = build_model(PolicyConfig.from_dict(config))
    try:
        return model.save()
    finally:
        model.close()


def _set_model(connection: Connection, policy: str, config: Mapping[str, Any], model: bytes | None, cursor: int,
               metrics: Mapping[str, Any]) -> int | None:
    """Give ``policy`` ``model`` at ``cursor`` as its newest snapshot (an untrained one when None)."""
    if config.get("kind") not in MODEL_KINDS:
        return None
    trained = model is not None
    if model is None:
        model, cursor = _fresh_model(config), 0
    connection.execute(delete(LearnedDecision).where(LearnedDecision.policy_name == policy,
                                                     LearnedDecision.seq > cursor))
    return append_snapshot(connection, policy, model, cursor, {**metrics, "trained": trained, "at": utcnow().isoformat()},
                           keep=_keep())


def _set_config(connection: Connection, policy: str, config: Mapping[str, Any]) -> int:
    upsert_policy(connection, policy, str(config["kind"]), dict(config))
    return int(connection.execute(select(Policy.revision).where(Policy.name == policy)).scalar_one())


def _retrying(work: Any, engine: Engine) -> Any:
    """Run ``work(connection)`` in one write transaction; again when a learner wrote the same snapshot
    version at the same moment (the unique (policy, version) key)."""
    for _attempt in range(3):
        try:
            with write_lock(engine), engine.begin() as connection:
                return work(connection)
        except IntegrityError:
            continue
    raise ApiError(409, "concurrent_snapshot", "snapshots are being written concurrently; try again", "slot")


def promote(engine: Engine, slot: str, policy: str, *, new_config: Mapping[str, Any], new_model: bytes,
            new_cursor: int, new_metrics: Mapping[str, Any], challenger: str | None, evidence: Mapping[str, Any],
            actor: str) -> dict[str, Any]:
    """Make ``new_config`` with ``new_model`` the serving policy of ``slot`` (module docstring)."""

    def work(connection: Connection) -> dict[str, Any]:
        row = connection.execute(select(Policy.config).where(Policy.name == policy)).first()
        if row is None:
            raise ApiError(409, "unknown_policy", f"the serving policy '{policy}' no longer exists", "slot")
        old_config = dict(row.config)
        old = latest_snapshot(connection, policy) if old_config.get("kind") in MODEL_KINDS else None
        old_model = old.model if old is not None and old.metrics.get("trained", True) else None
        old_cursor = old.cursor if old is not None else 0
        revision = _set_config(connection, policy, new_config)
        version = _set_model(connection, policy, new_config, new_model, new_cursor,
                             {**{k: v for k, v in new_metrics.items() if k != "window"}, "source": "promotion",
                              "promoted": challenger or evidence.get("candidate")})
        if challenger is not None:
            if old_config.get("kind") in MODEL_KINDS:
                _set_config(connection, challenger, old_config)
                _set_model(connection, challenger, old_config, old_model, old_cursor,
                           {**(old.metrics if old else {}), "source": "demotion"})
            else:  # the old champion learned nothing: the challenger's configuration now serves
                connection.execute(delete(Policy).where(Policy.name == challenger))
        stored = connection.execute(insert(PolicyRevision).values(
            slot_name=slot, policy_name=policy, action="promotion", actor=actor, challenger=challenger,
            policy_revision=revision, old_config=old_config, new_config=dict(new_config), old_model=old_model,
            old_cursor=old_cursor, new_model=new_model, new_cursor=new_cursor, snapshot_version=version,
            evidence=dict(evidence), created_at=utcnow()))
        return revision_dict(connection, int(stored.inserted_primary_key[0]))  # type: ignore[index]

    result: dict[str, Any] = _retrying(work, engine)
    return result


def record_recommendation(engine: Engine, slot: str, policy: str, *, new_config: Mapping[str, Any],
                          challenger: str | None, evidence: Mapping[str, Any], actor: str) -> dict[str, Any]:
    """A dry-run's recommendation: recorded with its evidence, nothing else changes."""
    with engine.begin() as connection:
        old_config = connection.execute(select(Policy.config).where(Policy.name == policy)).scalar()
        stored = connection.execute(insert(PolicyRevision).values(
            slot_name=slot, policy_name=policy, action="recommendation", actor=actor, challenger=challenger,
            old_config=old_config, new_config=dict(new_config), evidence=dict(evidence), created_at=utcnow()))
        return revision_dict(connection, int(stored.inserted_primary_key[0]))  # type: ignore[index]


def rollback(engine: Engine, revision_id: int, actor: str) -> dict[str, Any]:
    """Undo promotion ``revision_id`` (the newest one of its slot, not rolled back yet)."""

    def work(connection: Connection) -> dict[str, Any]:
        promotion = connection.execute(select(PolicyRevision.__table__).where(
            PolicyRevision.id == revision_id)).mappings().first()
        if promotion is None:
            raise ApiError(404, "unknown_revision", f"no policy revision {revision_id}", "id")
        if promotion["action"] != "promotion":
            raise ApiError(409, "not_a_promotion", f"revision {revision_id} is a {promotion['action']}: only "
                           "promotions are rolled back", "id")
        if promotion["rolled_back_by"] is not None:
            raise ApiError(409, "already_rolled_back",
                           f"revision {revision_id} was rolled back by revision {promotion['rolled_back_by']}", "id")
        newer = connection.execute(select(PolicyRevision.id).where(
            PolicyRevision.slot_name == promotion["slot_name"], PolicyRevision.action == "promotion",
            PolicyRevision.id > revision_id, PolicyRevision.rolled_back_by.is_(None))).first()
        if newer is not None:
            raise ApiError(409, "newer_promotion", f"promotion {newer.id} came later: roll that back first", "id")
        policy = promotion["policy_name"]
        current = connection.execute(select(Policy.config).where(Policy.name == policy)).scalar()
        if current != promotion["new_config"]:
            raise ApiError(409, "policy_changed", f"policy '{policy}' was changed since the promotion; "
                           "roll back by hand (PUT /v1/policies/{name}, model rollback)", "id")
        old_config, new_config = dict(promotion["old_config"]), dict(promotion["new_config"])
        revision = _set_config(connection, policy, old_config)
        version = _set_model(connection, policy, old_config, promotion["old_model"], int(promotion["old_cursor"] or 0),
                             {"source": "rollback", "rollback_of": revision_id})
        challenger = promotion["challenger"]
        if challenger is not None:
            exists = connection.execute(select(Policy.id).where(Policy.name == challenger)).first()
            if exists is None:
                connection.execute(insert(Policy).values(name=challenger, kind=new_config["kind"], config=new_config,
                                                         source=policy))
            else:
                _set_config(connection, challenger, new_config)
            _set_model(connection, challenger, new_config, promotion["new_model"], int(promotion["new_cursor"] or 0),
                       {"source": "rollback", "rollback_of": revision_id})
        stored = connection.execute(insert(PolicyRevision).values(
            slot_name=promotion["slot_name"], policy_name=policy, action="rollback", actor=actor,
            challenger=challenger, policy_revision=revision, old_config=new_config, new_config=old_config,
            snapshot_version=version, evidence={"rollback_of": revision_id}, rollback_of=revision_id,
            created_at=utcnow()))
        new_id = int(stored.inserted_primary_key[0])  # type: ignore[index]
        connection.execute(update(PolicyRevision).where(PolicyRevision.id == revision_id)
                           .values(rolled_back_by=new_id))
        return revision_dict(connection, new_id)

    result: dict[str, Any] = _retrying(work, engine)
    return result


_LISTED = [c for c in PolicyRevision.__table__.c if c.name not in ("old_model", "new_model")]


def _iso(moment: Any) -> str | None:
    if moment is None:
        return None
    from datetime import UTC

    text: str = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).isoformat()
    return text


def _as_dict(row: Any) -> dict[str, Any]:
    data = {key: row[key] for key in row.keys() if key != "created_at"}
    data["created_at"] = _iso(row["created_at"])
    return data


def revision_dict(connection: Connection, revision_id: int) -> dict[str, Any]:
    row = connection.execute(select(*_LISTED).where(PolicyRevision.id == revision_id)).mappings().first()
    if row is None:
        raise ApiError(404, "unknown_revision", f"no policy revision {revision_id}", "id")
    return _as_dict(row)


def list_revisions(engine: Engine, slot: str, limit: int = 100) -> list[dict[str, Any]]:
    """The slot's revisions, newest first (without the model bytes)."""
    with engine.connect() as connection:
        rows = connection.execute(select(*_LISTED).where(PolicyRevision.slot_name == slot)
                                  .order_by(PolicyRevision.id.desc()).limit(limit)).mappings().all()
    return [_as_dict(row) for row in rows]
