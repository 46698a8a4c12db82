"""Create, start, stop, list and read experiments: the functions the routes, the reports and the
dashboard share.

Learning
    Each arm uses its own policy name and the learner learns per policy from
    decisions logged under that name, so an arm learns only from its own
    decisions. Two arms may not share a ``vw`` policy. ``learning_start``
    ``"snapshot"`` copies the slot policy's latest snapshot into the arm's
    policy when the experiment starts (a new snapshot version with the same
    model bytes and cursor); it requires the arm's VW configuration to equal the
    slot policy's, because a VW model keeps the options it was trained with.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine, func, insert, select, update

from analysis.experiments import AnalysisConfig, ExperimentError
from api import schemas
from api.db.catalog import catalog_blocks
from api.db.experiment_models import Experiment, ExperimentArm
from api.db.models import Policy, Slot, Snapshot, utcnow
from api.db.queries import inserted_id
from api.errors import ApiError
from api.experiments.schemas import ExperimentIn
from api.state import AppState
from bandits.choosers import MODEL_KINDS, check_against_catalog
from bandits.errors import InvalidPolicy
from bandits.policies import PolicyConfig

__all__ = [
    "analysis_config",
    "check_policy_for_slot",
    "create_experiment",
    "experiment_dict",
    "list_experiments",
    "read_experiment",
    "refresh_experiment_book",
    "slot_row",
    "start_experiment",
    "stop_experiment",
]


_decode = schemas.decode_request


def slot_row(connection: Connection, name: str) -> Any:
    return connection.execute(select(Slot.__table__).where(Slot.name == name)).mappings().first()


def _catalog_ids(connection: Connection, slot: Any) -> list[str]:
    return [b["id"] for b in catalog_blocks(connection, slot["id"], slot["catalog_version"]) or []]


def _policy_config(request: schemas.PolicyRequest, field: str) -> PolicyConfig:
    try:
        config: PolicyConfig = schemas.policy_config(request)
        return config
    except InvalidPolicy as error:
        raise ApiError(422, "invalid_request", error.message, _field(field, error.field)) from error


def _same_model(slot: PolicyConfig, arm: PolicyConfig) -> bool:
    """Whether the slot's snapshot can seed the arm: the same kind, and the options a model keeps (all of
    VW's; for linear, those its snapshot's configuration digest covers)."""
    if slot.kind != arm.kind:
        return False
    if arm.kind == "linear":
        assert slot.linear is not None and arm.linear is not None
        return slot.linear.digest() == arm.linear.digest()
    return slot.vw == arm.vw


def _field(prefix: str, inner: str | None) -> str:
    """``arms.1.policy`` + ``policy.rules.fallback`` -> ``arms.1.policy.rules.fallback``."""
    if not inner:
        return prefix
    rest = inner[len("policy"):].lstrip(".") if inner.startswith("policy") else inner
    return f"{prefix}.{rest}" if rest else prefix


def check_policy_for_slot(config: PolicyConfig, catalog: Sequence[str], field: str) -> None:
    """422 when a rules/fixed policy names a block the slot's catalog lacks (or rules are invalid)."""
    try:
        check_against_catalog(config, catalog, field)
    except InvalidPolicy as error:
        raise ApiError(422, "invalid_request", error.message, error.field) from error


def analysis_config(metric: str, analysis: Mapping[str, Any], binary: bool = False) -> AnalysisConfig:
    # stored and requested values are plain JSON: AnalysisConfig.__post_init__ validates each one
    # (an unknown metric is InvalidConfig naming "metric")
    values: dict[str, Any] = {**{k: v for k, v in analysis.items() if k != "binary"}, "metric": metric}
    return AnalysisConfig(binary=bool(analysis.get("binary", binary)), **values)


def create_experiment(state: AppState, body: bytes) -> dict[str, Any]:
    payload: ExperimentIn = _decode(body, ExperimentIn)
    names = [a.name for a in payload.arms]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ApiError(422, "invalid_request", f"duplicate arm name '{name}'", f"arms.{index}.name")
    total = math.fsum(a.share for a in payload.arms)
    if abs(total - 1.0) > 1e-6:
        raise ApiError(422, "invalid_request", f"arm shares must sum to 1, got {total:g}", "arms")
    if payload.control not in names:
        raise ApiError(422, "invalid_request", f"control '{payload.control}' is not one of the arms", "control")
    analysis = msgspec.structs.asdict(payload.analysis) if payload.analysis else {}
    analysis = {k: v for k, v in analysis.items() if v is not None}
    try:
        analysis_config(payload.metric, analysis)
    except ExperimentError as error:
        raise ApiError(422, "invalid_request", error.message, f"analysis.{error.field}") from error
    guardrails = {k: v for k, v in msgspec.structs.asdict(payload.guardrails).items() if v is not None} \
        if payload.guardrails else {}

    with state.engine.begin() as connection:
        slot = slot_row(connection, payload.slot)
        if slot is None:
            raise ApiError(422, "invalid_request", f"slot '{payload.slot}' does not exist", "slot")
        catalog = _catalog_ids(connection, slot)
        slot_policy = connection.execute(select(Policy.kind, Policy.config).where(
            Policy.name == (slot["policy_name"] or slot["name"]))).first()
        count = connection.execute(select(func.count()).select_from(Experiment)
                                   .where(Experiment.slot_id == slot["id"])).scalar_one()
        name = payload.name or f"{payload.slot}-{count + 1}"
        experiment_id = inserted_id(connection.execute(insert(Experiment).values(
            name=name, slot_id=slot["id"], status="draft", control_arm=payload.control, metric=payload.metric,
            learning_start=payload.learning_start, analysis=analysis, guardrails=guardrails,
            salt=secrets.token_hex(16), revision=1, created_at=utcnow(),
        )))
        learning: dict[str, int] = {}
        for index, arm in enumerate(payload.arms):
            field = f"arms.{index}.policy"
            if isinstance(arm.policy, str):
                row = connection.execute(select(Policy.kind, Policy.config).where(Policy.name == arm.policy)).first()
                if row is None:
                    raise ApiError(422, "invalid_request", f"policy '{arm.policy}' does not exist", field)
                config = PolicyConfig.from_dict(row.config)
                policy_name = arm.policy
            else:
                config = _policy_config(arm.policy, field)
                policy_name = f"{payload.slot}:x{experiment_id}:{arm.name}"
                if len(policy_name) > 128:
                    raise ApiError(422, "invalid_request", "slot and arm names are too long for an arm policy name",
                                   f"arms.{index}.name")
            check_policy_for_slot(config, catalog, field)
            start = arm.start or payload.learning_start
            if config.kind in MODEL_KINDS:
                if policy_name in learning:
                    raise ApiError(422, "invalid_request",
                                   f"arms {learning[policy_name]} and {index} share the learning policy "
                                   f"'{policy_name}': each arm must learn only from its own decisions", field)
                learning[policy_name] = index
                if start == "snapshot":
                    slot_config = PolicyConfig.from_dict(slot_policy.config) if slot_policy is not None else None
                    if slot_config is None or not _same_model(slot_config, config):
                        raise ApiError(
                            422, "invalid_request",
                            "learning_start 'snapshot' needs the arm's model configuration to equal the slot "
                            "policy's (a model keeps the options it was trained with); use 'scratch' for this arm",
                            f"arms.{index}.start")
            if not isinstance(arm.policy, str):
                from api.db import queries

                queries.upsert_policy(connection, policy_name, config.kind, config.to_dict())
            connection.execute(insert(ExperimentArm).values(
                experiment_id=experiment_id, position=index, name=arm.name, policy_name=policy_name,
                share=arm.share, start=arm.start,
            ))
    state.registry.refresh()
    return experiment_dict(state.engine, experiment_id)


def experiment_dict(engine: Engine, experiment_id: int) -> dict[str, Any]:
    with engine.connect() as connection:
        return read_experiment(connection, experiment_id)


def read_experiment(connection: Connection, experiment_id: int) -> dict[str, Any]:
    row = connection.execute(select(Experiment.__table__, Slot.name.label("slot_name"))
                             .join(Slot, Slot.id == Experiment.slot_id)
                             .where(Experiment.id == experiment_id)).mappings().first()
    if row is None:
        raise ApiError(404, "unknown_experiment", f"no experiment with id {experiment_id}", "experiment_id")
    arms = connection.execute(
        select(ExperimentArm.name, ExperimentArm.policy_name, ExperimentArm.share, ExperimentArm.start,
               Policy.kind).join(Policy, Policy.name == ExperimentArm.policy_name, isouter=True)
        .where(ExperimentArm.experiment_id == experiment_id).order_by(ExperimentArm.position)
    ).all()
    return {
        "id": row["id"], "name": row["name"], "slot": row["slot_name"], "status": row["status"],
        "control": row["control_arm"], "metric": row["metric"], "learning_start": row["learning_start"],
        "analysis": row["analysis"], "guardrails": row["guardrails"],
        "arms": [{"name": a.name, "policy": a.policy_name, "kind": a.kind, "share": a.share,
                  "start": a.start or row["learning_start"]} for a in arms],
        "created_at": _iso(row["created_at"]), "started_at": _iso(row["started_at"]),
        "stopped_at": _iso(row["stopped_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def start_experiment(state: AppState, experiment_id: int) -> dict[str, Any]:
    with state.engine.begin() as connection:
        info = read_experiment(connection, experiment_id)
        if info["status"] != "draft":
            raise ApiError(409, "experiment_not_draft", f"experiment {experiment_id} is {info['status']}; only a draft "
                           "can start", "status")
        slot_id = connection.execute(select(Experiment.slot_id).where(Experiment.id == experiment_id)).scalar_one()
        other = connection.execute(select(Experiment.id).where(
            Experiment.slot_id == slot_id, Experiment.status == "running")).first()
        if other is not None:
            raise ApiError(409, "experiment_running", f"experiment {other.id} is already running on slot "
                           f"'{info['slot']}'; stop it first", "slot")
        slot_policy = connection.execute(select(Slot.policy_name, Slot.name).where(Slot.id == slot_id)).first()
        source = (slot_policy.policy_name or slot_policy.name) if slot_policy else None
        for arm in info["arms"]:
            if arm["kind"] in MODEL_KINDS and arm["start"] == "snapshot" and source and arm["policy"] != source:
                _copy_snapshot(connection, source, arm["policy"])
        connection.execute(update(Experiment).where(Experiment.id == experiment_id).values(
            status="running", started_at=utcnow(), revision=Experiment.revision + 1))
    state.registry.refresh()
    refresh_experiment_book(state)
    return experiment_dict(state.engine, experiment_id)


def _copy_snapshot(connection: Connection, source: str, target: str) -> None:
    """The arm's policy starts from the slot policy's latest model (same bytes and cursor)."""
    latest = connection.execute(select(Snapshot.model, Snapshot.cursor, Snapshot.version)
                                .where(Snapshot.policy_name == source)
                                .order_by(Snapshot.version.desc()).limit(1)).first()
    if latest is None:
        return  # nothing learned yet: the arm starts from scratch like the slot would
    version = (connection.execute(select(func.max(Snapshot.version)).where(Snapshot.policy_name == target))
               .scalar_one() or 0) + 1
    connection.execute(insert(Snapshot).values(
        policy_name=target, version=version, model=latest.model, cursor=latest.cursor,
        metrics={"copied_from": source, "source_version": latest.version}, created_at=utcnow()))


def refresh_experiment_book(state: AppState) -> None:
    """Reload the running experiments into the worker's book (after a start or stop here, so that
    this worker's decisions see it at once; other workers see it at their next poll)."""
    if state.experiment_book is not None:
        state.experiment_book.refresh()


def stop_experiment(state: AppState, experiment_id: int) -> dict[str, Any]:
    with state.engine.begin() as connection:
        info = read_experiment(connection, experiment_id)
        if info["status"] != "running":
            raise ApiError(409, "experiment_not_running", f"experiment {experiment_id} is {info['status']}", "status")
        connection.execute(update(Experiment).where(Experiment.id == experiment_id).values(
            status="stopped", stopped_at=utcnow(), revision=Experiment.revision + 1))
    refresh_experiment_book(state)
    return experiment_dict(state.engine, experiment_id)


def list_experiments(engine: Engine, slot: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        query = select(Experiment.id).join(Slot, Slot.id == Experiment.slot_id).order_by(Experiment.id.desc())
        if slot:
            query = query.where(Slot.name == slot)
        return [read_experiment(connection, i) for i in connection.execute(query).scalars().all()]
