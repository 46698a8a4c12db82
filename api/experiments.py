"""Experiments on slots: the admin API, the unit -> arm resolver, the report, beacons, ``slotbandit report``.

An experiment compares policies ("arms") on one slot. Lifecycle: ``draft`` ->
``running`` -> ``stopped``; at most one running experiment per slot (409
otherwise). While one runs, every consented decision of the slot is assigned
to an arm and logs ``experiment_id`` and ``arm``; the arm's policy chooses.

Assignment (sticky, uniform, independent across experiments)
    ``u = H(salt_e, unit) in [0, 1)`` with ``H`` the first 53 bits of
    SHA-256(salt || 0x00 || unit) and ``salt_e`` random per experiment; the
    arm is the first whose cumulative share exceeds ``u``. The unit is the
    request's ``unit_id``, else the event id (then every decision is its own
    unit). Running experiments live in memory (:class:`ExperimentBook`),
    refreshed by polling a cheap revision query as ``api.registry`` does, so
    the decide hot path does one dict lookup and one hash.

Learning
    Each arm uses its own policy name and the learner learns per policy from
    decisions logged under that name, so an arm learns only from its own
    decisions. Two arms may not share a ``vw`` policy. ``learning_start``
    ``"snapshot"`` copies the slot policy's latest snapshot into the arm's
    policy when the experiment starts (a new snapshot version with the same
    model bytes and cursor); it requires the arm's VW configuration to equal the
    slot policy's, because a VW model keeps the options it was trained with.

Report (:func:`build_report`)
    One scan of the experiment's decisions (the covering index
    ``ix_decisions_experiment_report`` of migration 0005) returns each column
    joined into one string in log order: seq with arm, flags, device type and
    day part packed into one integer (closed vocabularies, encoded by SQL),
    the unit key, the country, the timestamp. numpy splits and encodes them
    (codes numbered by first appearance, as a Python dict would) with no
    Python loop per decision. The activated decisions (a walk of
    ``activations`` when they are fewer than the decisions, else a probe per
    decision) and the rewards received within ``reward_window_s`` (rows:
    seq, reward id, value) come from two more queries; numpy aggregates the
    rewards with the slot's ``reward_aggregation`` in reward-id order, clips
    to the reward range and puts the slot's default reward where none came
    (the learner's rule). Then per-unit sufficient statistics
    (``analysis.experiments.ArmStats``) per arm, per (segment, arm) and per
    first-exposure bucket; ``analysis.experiments`` does all statistics.
    Decisions made with ``defer_activation`` and never activated were never
    shown: they are excluded (and counted). The numbers equal those of the
    plain row-by-row computation (``tests/api/test_reports.py``).
    Measured on 1,000,000 decisions (``benchmarks/report.py``): see that file.
    A report is cached in the process per (experiment, bucket, offline, data
    marks); a repeated view with nothing new in the log costs the few index
    lookups of the marks.

Beacons (the browser snippet)
    ``navigator.sendBeacon`` cannot send an Authorization header. Every
    decision (``POST /v1/slots/{slot}/decide``) carries
    ``token = HMAC-SHA256(secret, "beacon" 0x00 event_id)``
    (128 bits hex); ``POST /v1/beacon/{event_id}/activate?t=TOKEN`` and
    ``POST /v1/beacon/{event_id}/reward?t=TOKEN`` (text/plain JSON body
    ``{"value": v, "reward_id": "click"}``) accept that token for that event only.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import copy
import csv
import hashlib
import hmac
import io
import json
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from msgspec import Meta, Struct
from sqlalchemy import Connection, Engine, func, insert, select, text, update

from analysis.experiments import (
    AnalysisConfig,
    ArmStats,
    ExperimentError,
    analyze_experiment,
    analyze_segments,
    cumulative_series,
)
from api import schemas
from api.auth import require_admin
from api.db.experiment_models import Experiment, ExperimentArm
from api.db.models import CatalogVersion, Decision, Policy, Reward, Slot, Snapshot, utcnow
from api.decide import ArmAssignment, event_token
from api.errors import ApiError
from api.periodic import Periodic
from api.registry import SlotState
from bandits.context import DAYPARTS, DEVICE_TYPES
from bandits.errors import InvalidPolicy
from bandits.policies import Candidate, PolicyConfig, VWConfig, build_chooser, check_against_catalog

__all__ = [
    "ROUTES",
    "ExperimentBook",
    "RunningExperiment",
    "add_commands",
    "build_report",
    "clear_report_cache",
    "report_csv",
    "report_markdown",
    "shutdown",
    "startup",
    "unit_draw",
]

log = logging.getLogger("slotbandit.experiments")

MAX_ARMS = 10
SEGMENT_DIMENSIONS = ("device_type", "country", "day_part")
TOP_COUNTRIES = 12
OFFLINE_MAX_EVENTS = 2000
"""The offline section evaluates every arm's current policy on at most this many of the latest decisions."""


# ----------------------------------------------------------------------------- assignment


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


# ----------------------------------------------------------------------------- request bodies

Share = Annotated[float, Meta(gt=0.0, le=1.0)]
Start = Literal["snapshot", "scratch"]


class ArmIn(Struct, forbid_unknown_fields=True):
    name: schemas.Name
    policy: schemas.Name | schemas.PolicyRequest
    share: Share
    start: Start | None = None


class GuardrailsIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    max_fallback_rate: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    max_latency_ms: Annotated[float, Meta(gt=0.0, le=60_000.0)] | None = None


class AnalysisIn(Struct, forbid_unknown_fields=True, omit_defaults=True):
    binary: bool | None = None
    level: float | None = None
    power: float | None = None
    target_relative_lift: float | None = None
    sequential: bool | None = None
    planned_units: int | None = None
    burn_in_units: int | None = None


class ExperimentIn(Struct, forbid_unknown_fields=True):
    slot: schemas.Name
    arms: Annotated[list[ArmIn], Meta(min_length=2, max_length=MAX_ARMS)]
    control: schemas.Name
    name: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    metric: Literal["reward_per_decision", "reward_per_unit"] = "reward_per_decision"
    learning_start: Start = "scratch"
    analysis: AnalysisIn | None = None
    guardrails: GuardrailsIn | None = None


_decode = schemas.decode_request


def _state(request: Request) -> State:  # type: ignore[type-arg]
    return request.app.state


# ----------------------------------------------------------------------------- create / start / stop


def _slot_row(connection: Connection, name: str) -> Any:
    return connection.execute(select(Slot.__table__).where(Slot.name == name)).mappings().first()


def _catalog_ids(connection: Connection, slot: Any) -> list[str]:
    if not slot["catalog_version"]:
        return []
    blocks = connection.execute(
        select(CatalogVersion.blocks).where(CatalogVersion.slot_id == slot["id"],
                                            CatalogVersion.version == slot["catalog_version"])
    ).scalar_one_or_none() or []
    return [b["id"] for b in blocks]


def _policy_config(request: schemas.PolicyRequest, field: str) -> PolicyConfig:
    try:
        vw = VWConfig.from_dict(schemas.vw_options(request.vw)) if request.kind == "vw" else None
        return PolicyConfig(kind=request.kind, vw=vw, block=request.block, rules=request.rules)
    except InvalidPolicy as error:
        raise ApiError(422, "invalid_request", error.message, _field(field, error.field)) from error


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


def _analysis_config(metric: str, analysis: Mapping[str, Any], binary: bool = False) -> AnalysisConfig:
    values = {k: v for k, v in analysis.items() if k != "binary"}
    return AnalysisConfig(metric=metric, binary=bool(analysis.get("binary", binary)), **values)  # type: ignore[arg-type]


def create_experiment(state: State, body: bytes) -> dict[str, Any]:
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
        _analysis_config(payload.metric, analysis)
    except ExperimentError as error:
        raise ApiError(422, "invalid_request", error.message, f"analysis.{error.field}") from error
    guardrails = {k: v for k, v in msgspec.structs.asdict(payload.guardrails).items() if v is not None} \
        if payload.guardrails else {}

    with state.engine.begin() as connection:
        slot = _slot_row(connection, payload.slot)
        if slot is None:
            raise ApiError(422, "invalid_request", f"slot '{payload.slot}' does not exist", "slot")
        catalog = _catalog_ids(connection, slot)
        slot_policy = connection.execute(select(Policy.kind, Policy.config).where(
            Policy.name == (slot["policy_name"] or slot["name"]))).first()
        count = connection.execute(select(func.count()).select_from(Experiment)
                                   .where(Experiment.slot_id == slot["id"])).scalar_one()
        name = payload.name or f"{payload.slot}-{count + 1}"
        experiment_id = connection.execute(insert(Experiment).values(
            name=name, slot_id=slot["id"], status="draft", control_arm=payload.control, metric=payload.metric,
            learning_start=payload.learning_start, analysis=analysis, guardrails=guardrails,
            salt=secrets.token_hex(16), revision=1, created_at=utcnow(),
        )).inserted_primary_key[0]  # type: ignore[index]
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
            if config.kind == "vw":
                if policy_name in learning:
                    raise ApiError(422, "invalid_request",
                                   f"arms {learning[policy_name]} and {index} share the learning policy "
                                   f"'{policy_name}': each arm must learn only from its own decisions", field)
                learning[policy_name] = index
                if start == "snapshot":
                    slot_vw = (PolicyConfig.from_dict(slot_policy.config).vw if slot_policy is not None
                               and slot_policy.kind == "vw" else None)
                    if slot_vw is None or slot_vw != config.vw:
                        raise ApiError(
                            422, "invalid_request",
                            "learning_start 'snapshot' needs the arm's VW configuration to equal the slot policy's "
                            "(a VW model keeps the options it was trained with); use 'scratch' for this arm",
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
        return _experiment_dict(connection, experiment_id)


def _experiment_dict(connection: Connection, experiment_id: int) -> dict[str, Any]:
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


def start_experiment(state: State, experiment_id: int) -> dict[str, Any]:
    with state.engine.begin() as connection:
        info = _experiment_dict(connection, experiment_id)
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
            if arm["kind"] == "vw" and arm["start"] == "snapshot" and source and arm["policy"] != source:
                _copy_snapshot(connection, source, arm["policy"])
        connection.execute(update(Experiment).where(Experiment.id == experiment_id).values(
            status="running", started_at=utcnow(), revision=Experiment.revision + 1))
    state.registry.refresh()
    state.experiment_book.refresh()
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


def stop_experiment(state: State, experiment_id: int) -> dict[str, Any]:
    with state.engine.begin() as connection:
        info = _experiment_dict(connection, experiment_id)
        if info["status"] != "running":
            raise ApiError(409, "experiment_not_running", f"experiment {experiment_id} is {info['status']}", "status")
        connection.execute(update(Experiment).where(Experiment.id == experiment_id).values(
            status="stopped", stopped_at=utcnow(), revision=Experiment.revision + 1))
    state.experiment_book.refresh()
    return experiment_dict(state.engine, experiment_id)


def list_experiments(engine: Engine, slot: FromQuery[str | None] = None) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        query = select(Experiment.id).join(Slot, Slot.id == Experiment.slot_id).order_by(Experiment.id.desc())
        if slot:
            query = query.where(Slot.name == slot)
        return [_experiment_dict(connection, i) for i in connection.execute(query).scalars().all()]


# ----------------------------------------------------------------------------- report data


@dataclass(frozen=True)
class ExperimentData:
    """The experiment's exposures as columns (one row per shown decision, in log order)."""

    arm: np.ndarray          # (n,) int: index into the experiment's arm list
    unit: np.ndarray         # (n,) int: unit code
    reward: np.ndarray       # (n,) float: aggregated reward
    rewarded: np.ndarray     # (n,) bool: at least one reward arrived in the window
    activated: np.ndarray    # (n,) bool
    fallback: np.ndarray     # (n,) bool
    segments: Mapping[str, tuple[np.ndarray, tuple[str, ...]]]  # dimension -> (codes, labels)
    bucket: np.ndarray       # (n,) int: time bucket code (chronological)
    bucket_labels: tuple[str, ...]
    excluded: int            # deferred decisions never activated


# Column transfer. Fetching 1,000,000 rows through the DB-API costs about a second per few
# columns on this machine (a Python object per value), and so does every string aggregate or
# string function per row in SQLite. So the report's scan returns one row: each column of the
# experiment's decisions, in log order, joined into one string (SQLite ``group_concat``,
# PostgreSQL ``string_agg``), and numpy splits and encodes it with no Python loop per row.
# Arm, device type and day part come from closed vocabularies (the experiment's arms,
# ``bandits.context.DEVICE_TYPES`` and ``DAYPARTS``), so SQL encodes them, with the flags, into
# one small integer per decision; a value outside them (legacy rows) sends that dimension to a
# second scan of its strings.
_SEP = 0x1F  # ASCII unit separator between values
_REPORT_INDEX = "ix_decisions_experiment_report"  # migration 0005: covers every column the scan reads
_MMAP_BYTES = 1 << 30
_PACKED_BITS = 14
_OTHER = 7  # vocabulary code of a device type or day part outside the vocabulary
_NO_ARM = 15
_NULL_UNIT = "#" * 32  # stands for a missing unit key (then the event is the unit), keeps unit keys fixed-width
_DEVICES = (*DEVICE_TYPES, *(() if "unknown" in DEVICE_TYPES else ("unknown",)))
_DAYPARTS = (*DAYPARTS, "unknown")
if max(len(_DEVICES), len(_DAYPARTS)) >= _OTHER:  # three bits per vocabulary, 7 for any other value
    raise ImportError("the device type or day part vocabulary outgrew the report's packed codes")
# bit layout of the packed integer: 0 fallback, 1 deferred, 2 activated, 3 no unit key,
# 4-7 arm position (15: not an arm of the experiment), 8-10 device type, 11-13 day part, 14- seq


def _sql_parts(dialect: str, bucket: str) -> dict[str, str]:
    width = 13 if bucket == "hour" else 10
    if dialect == "sqlite":
        return {
            "ph": "?",
            "agg": "group_concat({value}, {sep})",
            "sep": "char(31)",
            "int": "{value}",
            "bool": "({value})",
            "epoch_d": "(julianday(d.created_at) - 2440587.5) * 86400.0",
            "epoch_r": "(julianday(rw.created_at) - 2440587.5) * 86400.0",
            "bucket": "d.created_at",  # the stored ISO text; numpy keeps its first ``width`` bytes
            "bucket_width": str(width),
            "scan": f"decisions d INDEXED BY {_REPORT_INDEX}",
            "rewards_first": "rewards rw CROSS JOIN decisions d",  # SQLite: CROSS JOIN fixes the loop order
            "decisions_first": "decisions d CROSS JOIN rewards rw",
            "activations_first": "activations a CROSS JOIN decisions d",
        }
    fmt = "YYYY-MM-DD HH24" if bucket == "hour" else "YYYY-MM-DD"
    return {
        "ph": "%s",
        "agg": "string_agg({value}, {sep} ORDER BY d.seq)",
        "sep": "chr(31)",
        "int": "({value})::text",
        "bool": "({value})::int",
        "epoch_d": "extract(epoch from d.created_at)",
        "epoch_r": "extract(epoch from rw.created_at)",
        "bucket": f"to_char(d.created_at AT TIME ZONE 'UTC', '{fmt}')",
        "bucket_width": "0",
        "scan": "decisions d",
        "rewards_first": "rewards rw JOIN decisions d",  # PostgreSQL's planner picks the join order
        "decisions_first": "decisions d JOIN rewards rw",
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _vocabulary_case(column: str, labels: Sequence[str], other: int) -> str:
    whens = " ".join(f"WHEN {_quote(label)} THEN {i}" for i, label in enumerate(labels))
    missing = labels.index("unknown")
    return f"CASE {column} {whens} ELSE (CASE WHEN {column} IS NULL THEN {missing} ELSE {other} END) END"


def _main_query(parts: Mapping[str, str], arms: Sequence[str], probe_activations: bool) -> str:
    """One row: count, then the experiment's decisions column by column in log order (seq).

    Placeholders: experiment id, largest seq. ``probe_activations``: look each decision up in
    ``activations`` (else :func:`_activation_query` brings the activated decisions).
    """
    agg, sep, flag = parts["agg"], parts["sep"], parts["bool"]
    arm_case = " ".join(f"WHEN {_quote(a)} THEN {i}" for i, a in enumerate(arms))
    activated = (f"4 * {flag.format(value='EXISTS (SELECT 1 FROM activations a WHERE a.event_id = d.event_id)')} + "
                 if probe_activations else "")
    packed = (f"{flag.format(value='d.fallback')} + 2 * {flag.format(value='d.deferred')} + {activated}"
              f"8 * {flag.format(value='d.unit_key IS NULL')} + "
              f"16 * (CASE d.arm {arm_case} ELSE {_NO_ARM} END) + "
              f"256 * ({_vocabulary_case('d.device_type', _DEVICES, _OTHER)}) + "
              f"2048 * ({_vocabulary_case('d.daypart', _DAYPARTS, _OTHER)})")
    columns = [
        agg.format(value=parts["int"].format(value=f"d.seq * {1 << _PACKED_BITS} + {packed}"), sep="','"),
        agg.format(value="COALESCE(d.country, 'unknown')", sep=sep),
        agg.format(value=parts["bucket"], sep=sep),
    ]
    return (f"SELECT count(*), {', '.join(columns)} FROM {parts['scan']} "
            f"WHERE d.experiment_id = {parts['ph']} AND d.seq <= {parts['ph']}")


def _unit_query(parts: Mapping[str, str]) -> str:
    """The unit keys in log order (a second scan of the same rows, on another connection). Placeholders as
    :func:`_main_query`."""
    value = f"COALESCE(d.unit_key, {_quote(_NULL_UNIT)})"
    return (f"SELECT count(*), {parts['agg'].format(value=value, sep=parts['sep'])} FROM {parts['scan']} "
            f"WHERE d.experiment_id = {parts['ph']} AND d.seq <= {parts['ph']}")


def _activation_query(parts: Mapping[str, str]) -> str:
    """SQLite, when activations are fewer than the experiment's decisions: the seq of every activated
    decision in the seq range (any experiment; numpy keeps the experiment's). Each activation probes the
    unique event-id index of decisions, which holds the seq: no table read. Placeholders: lowest, largest seq.
    """
    return (f"SELECT {parts['agg'].format(value='d.seq', sep=repr(','))} FROM {parts['activations_first']} "
            f"ON d.event_id = a.event_id WHERE d.seq BETWEEN ? AND ?")


def _string_query(parts: Mapping[str, str], column: str) -> str:
    """One dimension's strings (missing -> 'unknown') in log order: the path for values outside a vocabulary."""
    value = f"COALESCE(d.{column}, 'unknown')" if column != "bucket" else parts["bucket"]
    return (f"SELECT count(*), {parts['agg'].format(value=value, sep=parts['sep'])} FROM {parts['scan']} "
            f"WHERE d.experiment_id = {parts['ph']} AND d.seq <= {parts['ph']}")


def _reward_query(parts: Mapping[str, str], rewards_first: bool) -> str:
    """Every reward of the experiment's decisions that arrived within the window: (seq, reward id, value) rows
    (rows, not joined text: SQLite prints at most 16 significant digits, and a reward must read back exactly).

    Placeholders: experiment id, largest seq, reward window in seconds.
    """
    source = parts["rewards_first"] if rewards_first else parts["decisions_first"]
    ph = parts["ph"]
    return (f"SELECT d.seq, rw.id, rw.value FROM {source} ON d.event_id = rw.event_id "
            f"WHERE d.experiment_id = {ph} AND d.seq <= {ph} AND {parts['epoch_r']} <= {parts['epoch_d']} + {ph}")


# ----------------------------------------------------------------------------- encoding joined columns


def _split(blob: bytes, n: int, prefix: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(matrix, starts, lengths)`` of the ``n`` separated values of ``blob``: ``matrix`` is (n, w)
    uint8, values left-aligned and zero-padded, ``w`` a multiple of 8.

    Raises :class:`_Unsplittable` when the blob does not hold exactly ``n`` values (a value contains
    the separator) or a value contains a NUL byte (zero padding would then be ambiguous).
    """
    buf = np.frombuffer(blob, dtype=np.uint8)
    if n == 0 or (buf.size and int(buf.min()) == 0):
        raise _Unsplittable
    ends = np.flatnonzero(buf == _SEP)
    if ends.size != n - 1:
        raise _Unsplittable
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends + 1
    lengths = np.empty(n, dtype=np.int64)
    lengths[:-1] = ends - starts[:-1]
    lengths[-1] = buf.size - starts[-1]
    if prefix:  # keep the first ``prefix`` bytes of every value (bucket labels from timestamps)
        if int(lengths.min()) < prefix:
            raise _Unsplittable
        lengths = np.full(n, prefix, dtype=np.int64)
        matrix = np.zeros((n, -(-prefix // 8) * 8), dtype=np.uint8)
        for j in range(prefix):
            matrix[:, j] = buf[starts + j]
        return matrix, starts, lengths
    longest = int(lengths.max())
    matrix = np.zeros((n, max(8, -(-longest // 8) * 8)), dtype=np.uint8)
    if longest and int(lengths.min()) == longest:  # fixed width: a strided view, no gather
        matrix[:, :longest] = np.lib.stride_tricks.as_strided(buf, shape=(n, longest), strides=(longest + 1, 1))
    else:
        for j in range(longest):
            rows = np.flatnonzero(lengths > j)
            matrix[rows, j] = buf[starts[rows] + j]
    return matrix, starts, lengths


class _Unsplittable(Exception):
    """A joined column cannot be split back into its values."""


def _first_seen(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes of integer ``keys`` numbered in order of first appearance, and each code's first row."""
    n = keys.size
    order = np.argsort(keys)
    ordered = keys[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
    starts = np.flatnonzero(new)
    firsts = np.minimum.reduceat(order, starts)
    group = np.cumsum(new) - 1
    by_first = np.argsort(firsts)
    rank = np.empty(firsts.size, dtype=np.int64)
    rank[by_first] = np.arange(firsts.size)
    codes = np.empty(n, dtype=np.int64)
    codes[order] = rank[group]
    return codes, firsts[by_first]


def _few_first_seen(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_first_seen` for keys with few distinct values: distinct values from runs (rows in log
    order repeat their neighbours' buckets) or a sample, then one ``searchsorted``; no sort of all rows."""
    n = keys.size
    change = np.flatnonzero(keys[1:] != keys[:-1]) + 1
    if change.size > n // 8:  # not run-like: sample the distinct values instead
        known = np.unique(keys[:: max(1, n // 4096)])
    else:
        known = np.unique(keys[np.r_[0, change]])
    position = np.minimum(np.searchsorted(known, keys), known.size - 1)
    missing = known[position] != keys
    if missing.any():
        known = np.union1d(known, keys[missing])
        position = np.searchsorted(known, keys)
    first = np.full(known.size, n, dtype=np.int64)
    np.minimum.at(first, position, np.arange(n))
    by_first = np.argsort(first)
    rank = np.empty(known.size, dtype=np.int64)
    rank[by_first] = np.arange(known.size)
    return rank[position], first[by_first]


def _label(blob: bytes, starts: np.ndarray, lengths: np.ndarray, row: int) -> str:
    start = int(starts[row])
    return blob[start:start + int(lengths[row])].decode("utf-8")


def _string_codes(blob: bytes, n: int, prefix: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """First-seen codes and labels of a joined low-cardinality string column (country, bucket, ...)."""
    matrix, starts, lengths = _split(blob, n, prefix)
    words = matrix.view("<u8")
    if words.shape[1] == 1:  # at most 8 bytes, no NUL: the padded bytes are the value
        codes, first = _few_first_seen(words[:, 0])
    else:
        codes, first = _first_seen(_hash_rows(words, lengths))
        _check_groups(words, lengths, codes, first)
    return codes, tuple(_label(blob, starts, lengths, int(r)) for r in first)


def _hash_rows(words: np.ndarray, lengths: np.ndarray, seed: int = 0x9E3779B97F4A7C15) -> np.ndarray:
    """A 64-bit multiply-xorshift hash of each row's words and length (wrapping uint64 arithmetic)."""
    h = lengths.astype(np.uint64) * np.uint64(seed)
    for k in range(words.shape[1]):
        h ^= words[:, k]
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x94D049BB133111EB)
    return h


def _check_groups(words: np.ndarray, lengths: np.ndarray, codes: np.ndarray, first: np.ndarray) -> None:
    """Every row equals its code's first row byte for byte (a hash collision would merge two values)."""
    rep = first[codes]
    if not (np.array_equal(lengths, lengths[rep]) and np.array_equal(words, words[rep])):
        raise _Unsplittable


def _unit_groups(engine: Engine, parts: Mapping[str, str], params: tuple[int, int]) -> tuple[int, np.ndarray]:
    """On a connection of its own: the number of decisions and, per decision, the first row with
    the same unit key (raises :class:`_Unsplittable` for keys the joined text cannot carry)."""
    with engine.connect() as connection:
        raw: Any = connection.connection.driver_connection
        sqlite = connection.dialect.name == "sqlite"
        factory = raw.text_factory if sqlite else None
        if sqlite:
            raw.text_factory = bytes
            _map_file(raw)
        try:
            n, (blob,) = _one_row(raw, _unit_query(parts), params)
        finally:
            if sqlite:
                raw.text_factory = factory
    if not n:
        return 0, np.zeros(0, dtype=np.int64)
    matrix, _, lengths = _split(blob, n)
    words = matrix.view("<u8")
    codes, first = _first_seen(_hash_rows(words, lengths))
    # A unit key is an HMAC (random bits), so a 64-bit hash collision among a million units has a
    # probability near 3e-8; a second, independent 64-bit hash must agree within every group.
    check = _hash_rows(words, lengths, seed=0xD6E8FEB86659FD93)
    if not np.array_equal(check, check[first[codes]]):
        _check_groups(words, lengths, codes, first)  # raises: two different keys shared the first hash
    return n, first[codes]


def _unit_codes(first_row: np.ndarray, no_unit: np.ndarray) -> np.ndarray:
    """Unit codes in order of first appearance; a decision without a unit key is its own unit."""
    n = first_row.size
    first_row = first_row.copy()
    own = np.flatnonzero(no_unit)
    first_row[own] = own
    distinct = first_row == np.arange(n)
    return (np.cumsum(distinct) - 1)[first_row]


def _vocabulary_codes(raw: np.ndarray, labels: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    codes, first = _few_first_seen(raw)
    return codes, tuple(labels[int(raw[r])] for r in first)


def _codes(values: Sequence[Any], order: Sequence[str] = ()) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of values (None -> "unknown") in order of first appearance: the Python path."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    labels = ["unknown" if v is None else str(v) for v in index]
    return codes, tuple(labels)


def _text(value: Any) -> bytes:
    return b"" if value is None else value if isinstance(value, bytes) else str(value).encode("utf-8")


def _one_row(raw: Any, sql: str, params: Sequence[Any]) -> tuple[int, list[bytes]]:
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    finally:
        cursor.close()
    return int(row[0]), [_text(v) for v in row[1:]]


def _rows(raw: Any, sql: str, params: Sequence[Any]) -> list[Any]:
    cursor = raw.cursor()
    try:
        cursor.execute(sql, params)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _column_codes(raw: Any, parts: Mapping[str, str], column: str, params: Sequence[Any], n: int,
                  blob: bytes | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """First-seen codes and labels of a string column, from ``blob`` or its own scan; Python path if unsplittable."""
    if blob is None:
        _, (blob,) = _one_row(raw, _string_query(parts, column), params)
    try:
        return _string_codes(blob, n, int(parts["bucket_width"]) if column == "bucket" else 0)
    except _Unsplittable:
        value = f"COALESCE(d.{column}, 'unknown')" if column != "bucket" else parts["bucket"]
        rows = _rows(raw, f"SELECT {value} FROM {parts['scan']} WHERE d.experiment_id = {parts['ph']} "
                          f"AND d.seq <= {parts['ph']} ORDER BY d.seq", params)
        width = int(parts["bucket_width"]) if column == "bucket" else 0
        return _codes([_text(r[0]).decode("utf-8")[:width or None] for r in rows])


def _seq_range(connection: Connection, experiment_id: int) -> tuple[Any, Any]:
    """Lowest and largest seq of the experiment's decisions (two queries: SQLite answers a lone min()
    or max() from the index in a few steps, but scans the whole range for both in one query)."""
    where = Decision.experiment_id == experiment_id
    return (connection.execute(select(func.min(Decision.seq)).where(where)).scalar(),
            connection.execute(select(func.max(Decision.seq)).where(where)).scalar())


def fetch_experiment_data(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
                          bucket: str = "day") -> ExperimentData:
    """Pull the experiment's decisions and their windowed rewards; encode them as numpy columns.

    Rows are the experiment's decisions up to the largest ``seq`` when the pull starts, in log
    order. Per decision: arm, unit (``unit_key``, else the event), fallback and deferred flags,
    activation, device type, country and day part (the columns of migration 0005; missing ->
    "unknown"), time bucket. Four queries, three of them on connections of their own so that they
    overlap: the decisions' packed codes, country and timestamp; their unit keys; the windowed
    rewards with (SQLite, when fewer than the decisions) the activated seqs; without that walk an
    ``EXISTS`` probe per decision marks the activated ones. Rewards arrive as (seq, reward id, value) rows of the
    rewards received within ``reward_window_s`` of their decision and are aggregated here with the
    slot's rule in reward-id order: ``sum``, ``max``, or ``first`` (lowest id); then clipped to the
    reward range; the slot's default reward when none came (the learner's rule).
    """
    if len(arms) > _NO_ARM:
        raise ValueError(f"at most {_NO_ARM} arms")
    dialect = connection.dialect.name
    parts = _sql_parts(dialect, bucket)
    raw = connection.connection.driver_connection
    sqlite = dialect == "sqlite"
    low, top = _seq_range(connection, experiment_id)
    params = (experiment_id, int(top) if top is not None else 0)
    span = int(top) - int(low) + 1 if top is not None else 0  # at least the number of decisions
    # SQLite: walk the activations instead of probing them per decision when they are fewer
    activations_first = sqlite and span > 0 and (connection.execute(
        text("SELECT max(rowid) FROM activations")).scalar() or 0) <= span
    # rewards: scan them when there are fewer than decisions, else probe them per decision
    first_id = connection.execute(select(func.min(Reward.id))).scalar()
    last_id = connection.execute(select(func.max(Reward.id))).scalar()
    rewards_first = first_id is not None and last_id is not None and last_id - first_id + 1 <= span
    factory = raw.text_factory if sqlite else None  # type: ignore[union-attr]
    if sqlite:
        raw.text_factory = bytes  # type: ignore[union-attr]  # the joined columns need no str decoding
        _map_file(raw)
    # The rewards and activations are read on a second connection while this one scans the decisions
    # (each query waits in the database, not in Python). Both are bounded by the same largest seq.
    with ThreadPoolExecutor(max_workers=2) as pool:
        side = pool.submit(_side_queries, connection.engine, parts, params, float(slot["reward_window_s"]),
                           rewards_first, (low, top) if activations_first and top is not None else None)
        unit_groups = pool.submit(_unit_groups, connection.engine, parts, params)
        try:
            n, blobs = _one_row(raw, _main_query(parts, arms, not activations_first), params)
        finally:
            if sqlite:
                raw.text_factory = factory  # type: ignore[union-attr]
        rewards, activated_seq = side.result()
        try:
            units_seen, first_row = unit_groups.result()
        except _Unsplittable:
            units_seen, first_row = -1, None
    if not n:
        empty = np.zeros(0, dtype=np.int64)
        return ExperimentData(arm=empty, unit=empty, reward=np.zeros(0), rewarded=np.zeros(0, dtype=bool),
                              activated=np.zeros(0, dtype=bool), fallback=np.zeros(0, dtype=bool),
                              segments={d: (empty, ()) for d in SEGMENT_DIMENSIONS}, bucket=empty,
                              bucket_labels=(), excluded=0)
    packed = np.fromstring(blobs[0], dtype=np.int64, sep=",")
    seq = packed >> _PACKED_BITS
    if packed.size != n:
        raise RuntimeError("the report's decision columns do not line up")
    if n > 1 and not bool(np.all(seq[1:] > seq[:-1])):  # every column was joined in this order
        raise RuntimeError("the report scan did not return the decisions in log order")
    no_unit = (packed & 8) > 0
    if units_seen == n and first_row is not None:
        units = _unit_codes(first_row, no_unit)
    else:  # keys the joined text cannot carry (or the log lost rows between the two scans)
        rows = _rows(raw, f"SELECT COALESCE(d.unit_key, '') FROM {parts['scan']} WHERE d.experiment_id = "
                          f"{parts['ph']} AND d.seq <= {parts['ph']} ORDER BY d.seq", params)
        units = _codes([r[0] if r[0] else object() for r in rows])[0]  # no unit key: its own unit
    segments: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for dimension, column, shift, labels in (("device_type", "device_type", 8, _DEVICES),
                                             ("country", "country", None, ()),
                                             ("day_part", "daypart", 11, _DAYPARTS)):
        if shift is None:
            segments[dimension] = _column_codes(raw, parts, column, params, n, blobs[1])
            continue
        vocabulary = (packed >> shift) & 7
        if bool((vocabulary == _OTHER).any()):  # a value outside the vocabulary: read the strings
            segments[dimension] = _column_codes(raw, parts, column, params, n)
        else:
            segments[dimension] = _vocabulary_codes(vocabulary, labels)
    bucket_codes, bucket_labels = _column_codes(raw, parts, "bucket", params, n, blobs[2])
    if activated_seq is not None:
        position = np.searchsorted(seq, activated_seq)
        found = position < n
        found[found] = seq[position[found]] == activated_seq[found]
        packed[position[found]] |= 4
    reward, rewarded = _aggregate_rewards(seq, rewards[:, 0].astype(np.int64), rewards[:, 1].astype(np.int64),
                                          rewards[:, 2], slot)
    activated = (packed & 4) > 0
    shown = ((packed & 2) == 0) | activated
    arm = (packed >> 4) & 15
    arm = np.where(arm == _NO_ARM, -1, arm)
    keep = shown & (arm >= 0)
    return ExperimentData(
        arm=arm[keep], unit=units[keep], reward=reward[keep], rewarded=rewarded[keep],
        activated=activated[keep], fallback=((packed & 1) > 0)[keep],
        segments={k: (codes[keep], labels) for k, (codes, labels) in segments.items()},
        bucket=bucket_codes[keep], bucket_labels=bucket_labels, excluded=int(n - shown.sum()),
    )


def _map_file(raw: Any) -> None:
    """Read the SQLite file through a memory map: the activation and reward probes jump around the
    file, and each page fetched through read() costs a system call (about 30% of the scan)."""
    raw.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")


def _side_queries(engine: Engine, parts: Mapping[str, str], params: tuple[int, int], window: float,
                  rewards_first: bool, activation_range: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """On a connection of its own: the windowed reward rows as an (r, 3) float64 array (seq, reward id,
    value; ids and seqs are exact below 2**53) and, with ``activation_range``, the activated seqs."""
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        if connection.dialect.name == "sqlite":
            _map_file(raw)
        rows = _rows(raw, _reward_query(parts, rewards_first), (*params, window))
        rewards = np.array(rows, dtype=np.float64).reshape(len(rows), 3)
        activated = None
        if activation_range is not None:
            _, (joined,) = _one_row(raw, "SELECT 0, " + _activation_query(parts)[len("SELECT "):], activation_range)
            activated = np.fromstring(joined, dtype=np.int64, sep=",") if joined else np.zeros(0, dtype=np.int64)
    return rewards, activated


def _aggregate_rewards(seq: np.ndarray, r_seq: np.ndarray, r_id: np.ndarray, value: np.ndarray,
                       slot: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per decision: the aggregated, clipped reward (default when none came) and whether any came."""
    n = seq.size
    rewarded = np.zeros(n, dtype=bool)
    reward = np.full(n, float(slot["default_reward"]))
    if not r_seq.size:
        return reward, rewarded
    position = np.searchsorted(seq, r_seq)
    found = (position < n) & (seq[np.minimum(position, n - 1)] == r_seq)
    order = np.lexsort((r_id[found], position[found]))
    position, value = position[found][order], value[found][order]
    start = np.flatnonzero(np.r_[True, position[1:] != position[:-1]])
    at = position[start]
    aggregation = slot["reward_aggregation"]
    if aggregation == "max":
        total = np.maximum.reduceat(value, start)
    elif aggregation == "first":
        total = value[start]
    else:  # sum, in reward-id order
        total = np.bincount(position, weights=value, minlength=n)[at]
    rewarded[at] = True
    reward[at] = np.clip(total, slot["reward_min"], slot["reward_max"])
    return reward, rewarded


def _unit_stats(group: np.ndarray, unit: np.ndarray, reward: np.ndarray, n_groups: int,
                by_unit: np.ndarray | None = None) -> list[ArmStats]:
    """Per-unit sufficient statistics per group: ``ArmStats`` of each group code in [0, n_groups).

    Each (group, unit) pair is one unit of that group with ``Y`` = its reward total
    and ``X`` = its decision count (the unit-level aggregation of ``analysis.experiments``).
    ``by_unit``: ``argsort(unit, kind="stable")``, shared by the calls of one report.

    Pairs are visited in (group, unit) order and each pair's rewards summed in row order,
    whichever way they are found, so the floating-point sums do not depend on the way.
    """
    if group.size == 0:
        return [ArmStats.empty() for _ in range(n_groups)]
    key = group * (int(unit.max()) + 1) + unit
    space = n_groups * (int(unit.max()) + 1)
    if space <= 8 * key.size:  # dense bins: no sort
        count = np.bincount(key, minlength=space)
        pairs = np.flatnonzero(count)
        y = np.bincount(key, weights=reward, minlength=space)[pairs]
        x = count[pairs].astype(np.float64)
        owner = pairs // (int(unit.max()) + 1)
    elif by_unit is not None and n_groups < (1 << 15):  # a stable radix sort by group of the unit order
        rows = by_unit[np.argsort(group[by_unit].astype(np.int16), kind="stable")]
        ordered = key[rows]
        new = np.empty(ordered.size, dtype=bool)
        new[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
        pair = np.cumsum(new) - 1
        y = np.bincount(pair, weights=reward[rows])
        x = np.bincount(pair).astype(np.float64)
        owner = group[rows[new]]
    else:
        pairs, inverse = np.unique(key, return_inverse=True)
        y = np.bincount(inverse, weights=reward)
        x = np.bincount(inverse).astype(np.float64)
        owner = pairs // (int(unit.max()) + 1)

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n_groups)

    units = np.bincount(owner, minlength=n_groups)
    sums = [total(y), total(y * y), total(x), total(x * x), total(x * y)]
    return [ArmStats(int(units[g]), float(sums[0][g]), float(sums[1][g]), int(round(sums[2][g])),
                     float(sums[3][g]), float(sums[4][g])) for g in range(n_groups)]


def _by_arm(stats: Sequence[ArmStats], arms: Sequence[str]) -> dict[str, ArmStats]:
    return {name: stats[i] for i, name in enumerate(arms)}


# ----------------------------------------------------------------------------- offline section


def _offline_section(connection: Connection, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                     policies: Mapping[str, Any] | None, control: str) -> dict[str, Any]:
    """Every arm's current policy evaluated on the latest logged decisions of the experiment (all arms)."""
    try:
        from analysis.estimators import EstimatorError, EventData, estimate
    except ImportError as error:  # pragma: no cover - the offline evaluation issue provides them
        return {"available": False, "reason": f"offline estimates unavailable: {error}"}

    rows = connection.execute(
        select(Decision.candidate_ids, Decision.pmf, Decision.chosen_index, Decision.context, Decision.catalog_version,
               Decision.inline_candidates, Decision.event_id)
        .where(Decision.experiment_id == experiment["id"]).order_by(Decision.seq.desc()).limit(OFFLINE_MAX_EVENTS)
    ).all()
    if len(rows) < 20:
        return {"available": False, "reason": f"offline estimates need at least 20 decisions, have {len(rows)}"}
    rows = rows[::-1]
    event_ids = [r.event_id for r in rows]
    rewards = _event_rewards(connection, event_ids, slot)
    catalogs: dict[int, dict[str, Candidate]] = {}
    for version in {r.catalog_version for r in rows if r.catalog_version}:
        blocks = connection.execute(select(CatalogVersion.blocks).where(
            CatalogVersion.slot_id == slot["id"], CatalogVersion.version == version)).scalar_one_or_none() or []
        catalogs[version] = {b["id"]: Candidate(b["id"], b.get("features", {})) for b in blocks}
    width = max(len(r.candidate_ids) for r in rows)
    n = len(rows)
    logging_pmf = np.zeros((n, width))
    mask = np.zeros((n, width), dtype=bool)
    chosen = np.array([r.chosen_index for r in rows], dtype=np.int64)
    candidates: list[tuple[Candidate, ...]] = []
    ids_matrix = np.full((n, width), "", dtype=object)
    for i, r in enumerate(rows):
        k = len(r.candidate_ids)
        logging_pmf[i, :k] = r.pmf
        mask[i, :k] = True
        ids_matrix[i, :k] = r.candidate_ids
        if r.inline_candidates:
            candidates.append(tuple(Candidate(c["id"], c.get("features", {})) for c in r.inline_candidates))
        else:
            catalog = catalogs.get(r.catalog_version or 0, {})
            candidates.append(tuple(catalog.get(b, Candidate(b)) for b in r.candidate_ids))
    _, codes = np.unique(ids_matrix.astype(str), return_inverse=True)
    codes = np.where(mask, codes.reshape(n, width), -1)
    try:
        data = EventData.from_arrays(reward=rewards, chosen=chosen,
                                     logging_pmf=logging_pmf / logging_pmf.sum(1, keepdims=True), mask=mask, codes=codes)
    except EstimatorError as error:
        return {"available": False, "reason": f"the logged decisions cannot be evaluated: {error} ({error.field})"}
    reward_range = (float(slot["reward_min"]), float(slot["reward_max"]))
    targets: dict[str, np.ndarray] = {}
    out: list[dict[str, Any]] = []
    for arm in experiment["arms"]:
        chooser = _chooser(policies, arm["policy"], connection)
        if chooser is None:
            out.append({"arm": arm["name"], "policy": arm["policy"], "error": "policy not loadable"})
            continue
        pi = np.zeros((n, width))
        lock = getattr(chooser, "lock", None)
        for i, r in enumerate(rows):
            if lock is not None:
                with lock:
                    p = chooser.pmf(r.context, candidates[i])
            else:
                p = chooser.pmf(r.context, candidates[i])
            pi[i, :len(p)] = p
        pi /= pi.sum(1, keepdims=True)
        targets[arm["name"]] = pi
        entry: dict[str, Any] = {"arm": arm["name"], "policy": arm["policy"], "kind": arm["kind"]}
        for method in ("snips", "dr"):
            est = estimate(data, pi, method, "normal", reward_range=reward_range)
            entry[method] = {"value": est.value, "ci": [est.ci_low, est.ci_high], "stderr": est.stderr,
                             "ess": est.diagnostics.ess, "flags": list(est.flags)}
        out.append(entry)
    comparisons: list[dict[str, Any]] = []
    if control in targets and len(targets) > 1:
        try:
            from analysis.compare import compare

            others = {k: v for k, v in targets.items() if k != control}
            for c in compare(data, others, targets[control], baseline_name=control, method="dr",
                             reward_range=reward_range):
                comparisons.append({"arm": c.candidate, "control": c.baseline, "difference": c.difference,
                                    "ci": [c.ci_low, c.ci_high], "p_value": c.p_value,
                                    "p_value_adjusted": c.p_adjusted, "significant": c.significant, "note": c.note})
        except ImportError as error:  # pragma: no cover
            comparisons.append({"error": f"paired comparisons unavailable: {error}"})
    return {
        "available": True, "events": n, "method": "snips and dr (normal 95% intervals) on the latest decisions "
        "of every arm; each arm's current policy (vw: its latest snapshot)", "estimates": out,
        "paired_dr_vs_control": comparisons,
    }


def _offline_apart(engine: Engine, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                   policies: Mapping[str, Any] | None, control: str) -> dict[str, Any]:
    with engine.connect() as connection:
        return _offline_section(connection, experiment, slot, policies, control)


def _chooser(policies: Mapping[str, Any] | None, name: str, connection: Connection) -> Any:
    if policies is not None and name in policies:
        return policies[name].chooser
    row = connection.execute(select(Policy.config).where(Policy.name == name)).first()
    if row is None:
        return None
    config = PolicyConfig.from_dict(row.config)
    model = None
    if config.kind == "vw":
        model = connection.execute(select(Snapshot.model).where(Snapshot.policy_name == name)
                                   .order_by(Snapshot.version.desc()).limit(1)).scalar_one_or_none()
    return build_chooser(config, model)


def _event_rewards(connection: Connection, event_ids: Sequence[str], slot: Mapping[str, Any]) -> np.ndarray:
    values: dict[str, list[float]] = {}
    for start in range(0, len(event_ids), 500):
        chunk = event_ids[start:start + 500]
        for event_id, value in connection.execute(select(Reward.event_id, Reward.value)
                                                  .where(Reward.event_id.in_(chunk)).order_by(Reward.id)).all():
            values.setdefault(event_id, []).append(value)
    rules: dict[str, Callable[[list[float]], float]] = {"sum": sum, "max": max, "first": lambda v: v[0]}
    agg = rules.get(slot["reward_aggregation"], sum)
    out = np.empty(len(event_ids))
    for i, event_id in enumerate(event_ids):
        got = values.get(event_id)
        out[i] = min(max(agg(got), slot["reward_min"]), slot["reward_max"]) if got else slot["default_reward"]
    return out


# ----------------------------------------------------------------------------- the report


REPORT_CACHE_SIZE = 8
REPORT_CACHE_TTL_S = 60.0
"""Reports are cached per (experiment, bucket, offline, data marks) for at most this long. The marks
(decision seq range, last reward id, activation count, experiment and slot settings, arm policy
versions) change with every append to the log; the TTL bounds what they cannot see: a unit erased
in place (``erase_unit``) shows in the report within a minute."""


@dataclass(frozen=True)
class _CachedReport:
    body: dict[str, Any]
    verdicts: tuple[str, ...]
    stored: float


_report_cache: OrderedDict[tuple[Any, ...], _CachedReport] = OrderedDict()
_report_cache_lock = threading.Lock()


def clear_report_cache() -> None:
    """Forget every cached report (the next report of each experiment is computed from the log)."""
    with _report_cache_lock:
        _report_cache.clear()


def _data_marks(connection: Connection, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                policies: Mapping[str, Any] | None, offline: bool) -> tuple[Any, ...]:
    """What the report depends on, cheaply: each part changes when the log or the settings change."""
    seqs = _seq_range(connection, experiment["id"])
    last_reward = connection.execute(select(func.max(Reward.id))).scalar()
    if connection.dialect.name == "sqlite":  # activations are append-only; the rowid grows with each
        activations = connection.execute(text("SELECT max(rowid) FROM activations")).scalar()
    else:
        activations = connection.execute(text("SELECT count(*) FROM activations")).scalar()
    versions: tuple[Any, ...] = ()
    if offline:
        names = [a["policy"] for a in experiment["arms"]]
        if policies is not None and all(name in policies for name in names):
            versions = tuple((policies[n].revision, policies[n].model_version) for n in names)
        else:
            versions = tuple(connection.execute(
                select(Policy.name, Policy.revision, select(func.max(Snapshot.version))
                       .where(Snapshot.policy_name == Policy.name).scalar_subquery())
                .where(Policy.name.in_(names)).order_by(Policy.name)).all())
    settings = json.dumps([experiment, dict(slot)], sort_keys=True, default=str)
    return (tuple(seqs), last_reward, activations, versions, settings)


def build_report(engine: Engine, experiment_id: int, *, policies: Mapping[str, Any] | None = None,
                 bucket: Literal["day", "hour", "auto"] = "auto", offline: bool = True,
                 latency: Mapping[str, float] | None = None, cache: bool = True) -> dict[str, Any]:
    """The experiment's report as JSON-ready data (see the module docstring).

    ``policies``: the registry's policies (name -> PolicyState) for the offline
    section; without it the policies are loaded from the database.
    ``latency``: service-wide decide latency quantiles in ms (from ``/metrics``) for the latency guardrail.
    ``cache``: reuse this process's report of the same data (see :data:`REPORT_CACHE_TTL_S`);
    ``timing_ms.cached`` says whether it did.
    """
    started = time.perf_counter()
    with engine.connect() as connection:
        experiment = _experiment_dict(connection, experiment_id)
        slot = _slot_row(connection, experiment["slot"])
        if bucket == "auto":  # hourly points for the first three days, daily after
            begun = datetime.fromisoformat(experiment["started_at"] or experiment["created_at"])
            ended = datetime.fromisoformat(experiment["stopped_at"]) if experiment["stopped_at"] else datetime.now(UTC)
            bucket = "hour" if (ended - begun).total_seconds() < 3 * 86400 else "day"
        key = (engine.url.render_as_string(hide_password=True), experiment_id, bucket, offline,
               _data_marks(connection, experiment, slot, policies, offline))
        with _report_cache_lock:
            hit = _report_cache.get(key) if cache else None
            if hit is not None and time.monotonic() - hit.stored > REPORT_CACHE_TTL_S:
                hit = None
        fetched = time.perf_counter()
        if hit is None:
            body, verdicts, fetched = _report_body(connection, experiment, slot, policies, bucket, offline)
            hit = _CachedReport(body, verdicts, time.monotonic())
            if cache:
                with _report_cache_lock:
                    _report_cache[key] = hit
                    while len(_report_cache) > REPORT_CACHE_SIZE:
                        _report_cache.popitem(last=False)
            cached = False
        else:
            cached = True
    report = copy.deepcopy(hit.body)
    guardrails = _guardrails(experiment["guardrails"], report["arms"], latency)
    report["guardrails"] = guardrails
    report["verdicts"] = list(hit.verdicts) + [g["verdict"] for g in guardrails if g["breached"]]
    report["generated_at"] = datetime.now(UTC).isoformat()
    report["timing_ms"] = {"fetch": round((fetched - started) * 1000, 1),
                           "total": round((time.perf_counter() - started) * 1000, 1), "cached": cached}
    return report


def _report_body(connection: Connection, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                 policies: Mapping[str, Any] | None, bucket: str,
                 offline: bool) -> tuple[dict[str, Any], tuple[str, ...], float]:
    """The report from the log, without the parts that change between views (guardrails, time
    stamps); returns it, the statistical verdicts, and when the decisions were fetched."""
    arms = [a["name"] for a in experiment["arms"]]
    shares = {a["name"]: a["share"] for a in experiment["arms"]}
    control = experiment["control"]
    # the offline section (its own queries and policy evaluations) runs beside the scan, on its own connection
    with ThreadPoolExecutor(max_workers=1) as pool:
        estimates = pool.submit(_offline_apart, connection.engine, experiment, slot, policies, control) \
            if offline else None
        data = fetch_experiment_data(connection, experiment["id"], arms, slot, bucket)
        fetched = time.perf_counter()
        offline_section = (estimates.result() if estimates is not None
                           else {"available": False, "reason": "offline section not requested"})
    binary = bool(data.reward.size) and bool(np.all((data.reward == 0.0) | (data.reward == 1.0)))
    config = _analysis_config(experiment["metric"], experiment["analysis"], binary)
    n_arms = len(arms)
    by_unit = np.argsort(data.unit, kind="stable")
    arm_stats = _by_arm(_unit_stats(data.arm, data.unit, data.reward, n_arms, by_unit), arms)
    result = analyze_experiment(arm_stats, control=control, shares=shares, config=config)

    counts = {
        "decisions": np.bincount(data.arm, minlength=n_arms),
        "activations": np.bincount(data.arm, weights=data.activated, minlength=n_arms),
        "rewarded_decisions": np.bincount(data.arm, weights=data.rewarded, minlength=n_arms),
        "fallbacks": np.bincount(data.arm, weights=data.fallback, minlength=n_arms),
        "reward_sum": np.bincount(data.arm, weights=data.reward, minlength=n_arms),
    }
    arm_rows = []
    for i, arm in enumerate(experiment["arms"]):
        r = result.arm(arm["name"]).__dict__
        decisions = int(counts["decisions"][i])
        arm_rows.append({
            "arm": arm["name"], "policy": arm["policy"], "kind": arm["kind"], "share": arm["share"],
            "units": r["units"], "decisions": decisions, "activations": int(counts["activations"][i]),
            "rewarded_decisions": int(counts["rewarded_decisions"][i]),
            "reward_sum": float(counts["reward_sum"][i]),
            "fallback_rate": float(counts["fallbacks"][i] / decisions) if decisions else None,
            "mean": r["mean"], "ci": list(r["ci"]) if r["ci"] else None, "stderr": r["stderr"],
            "codes": list(r["codes"]),
        })

    segments: dict[str, Any] = {}
    for dimension in SEGMENT_DIMENSIONS:
        codes, labels = data.segments[dimension]
        if dimension == "country" and len(labels) > TOP_COUNTRIES:
            counts_by = np.bincount(codes, minlength=len(labels))
            top = np.argsort(-counts_by)[:TOP_COUNTRIES - 1]
            remap = np.full(len(labels), TOP_COUNTRIES - 1)
            remap[top] = np.arange(len(top))
            codes = remap[codes]
            labels = tuple(labels[t] for t in top) + ("other",)
        stats = _unit_stats(codes * n_arms + data.arm, data.unit, data.reward, len(labels) * n_arms, by_unit)
        by_segment = {label: _by_arm(stats[s * n_arms:(s + 1) * n_arms], arms) for s, label in enumerate(labels)}
        segments[dimension] = analyze_segments(by_segment, dimension=dimension, control=control, shares=shares,
                                               config=config).to_dict()

    # time series: each unit counted in the bucket of its first exposure (exact cumulative sums)
    n_buckets = len(data.bucket_labels)
    if data.arm.size:
        key = data.arm * (int(data.unit.max()) + 1) + data.unit
        first = np.full(int(key.max()) + 1, key.size, dtype=np.int64)
        np.minimum.at(first, key, np.arange(key.size))  # each (arm, unit)'s first row
        unit_bucket = data.bucket[first[key]]
    else:
        unit_bucket = data.bucket
    series_stats = _unit_stats(unit_bucket * n_arms + data.arm, data.unit, data.reward, n_buckets * n_arms, by_unit)
    buckets = [(data.bucket_labels[b], _by_arm(series_stats[b * n_arms:(b + 1) * n_arms], arms))
               for b in range(n_buckets)]
    series = cumulative_series(buckets, control=control, shares=shares, config=config).to_dict()
    series["bucket"] = bucket

    analysis = result.to_dict()
    body = {
        "experiment": experiment,
        "generated_at": None,
        "summary": {"decisions": int(data.arm.size), "units": int(sum(r["units"] for r in arm_rows)),
                    "excluded_never_activated": data.excluded, "binary": config.binary,
                    "sequential": config.sequential, "metric": config.metric, "level": config.level,
                    "reward_aggregation": slot["reward_aggregation"],
                    "reward_range": [slot["reward_min"], slot["reward_max"]]},
        "verdicts": [],
        "arms": arm_rows,
        "comparisons": analysis["comparisons"],
        "srm": analysis["srm"],
        "guardrails": [],
        "segments": segments,
        "time_series": series,
        "offline": offline_section,
        "timing_ms": {},
    }
    return body, tuple(result.verdicts), fetched


def _guardrails(limits: Mapping[str, float], arm_rows: Sequence[Mapping[str, Any]],
                latency: Mapping[str, float] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    limit = limits.get("max_fallback_rate")
    if limit is not None:
        for row in arm_rows:
            rate = row["fallback_rate"]
            breached = rate is not None and rate > limit
            out.append({"arm": row["arm"], "name": "fallback_rate", "value": rate, "limit": limit,
                        "breached": breached,
                        "verdict": f"guardrail: arm {row['arm']} serves the fallback on {rate:.2%} of decisions "
                                   f"(limit {limit:.2%})" if breached else ""})
    limit = limits.get("max_latency_ms")
    if limit is not None:
        p95 = latency.get("p95") if latency else None
        breached = p95 is not None and p95 > limit
        out.append({"arm": None, "name": "latency_p95_ms", "value": p95, "limit": limit, "breached": breached,
                    "scope": "service-wide decide latency of this worker (not per arm)",
                    "verdict": f"guardrail: decide latency p95 {p95:.1f} ms exceeds {limit:g} ms" if breached else ""})
    return out


def latency_quantiles(metrics: Any) -> dict[str, float] | None:
    """p50/p95 of this worker's decide latency (ms) from its Prometheus histogram (bucket upper bounds)."""
    try:
        samples = [s for m in metrics.decide_latency.collect() for s in m.samples if s.name.endswith("_bucket")]
    except AttributeError:
        return None
    buckets = sorted((float(s.labels["le"]), s.value) for s in samples)
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    out: dict[str, float] = {}
    for name, q in (("p50", 0.5), ("p95", 0.95)):
        bound = next(le for le, count in buckets if count >= q * total)
        out[name] = bound * 1000.0 if math.isfinite(bound) else float("inf")
    return out


# ----------------------------------------------------------------------------- report formats


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _ci(ci: Sequence[float] | None, digits: int = 4) -> str:
    return f"[{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]" if ci else "—"


def report_markdown(report: Mapping[str, Any]) -> str:
    e = report["experiment"]
    lines = [f"# Experiment {e['id']}: {e['name']}", "",
             f"Slot `{e['slot']}`, status **{e['status']}**, control `{e['control']}`, metric {e['metric']}, "
             f"{report['summary']['decisions']} decisions from {report['summary']['units']} units.", ""]
    lines += [f"- {v}" for v in report["verdicts"]] + [""]
    lines += ["## Arms", "", "| arm | policy | share | units | decisions | activations | mean | 95% CI | fallback rate |",
              "|---|---|---|---|---|---|---|---|---|"]
    for a in report["arms"]:
        lines.append(f"| {a['arm']} | {a['policy']} ({a['kind']}) | {a['share']:g} | {a['units']} | {a['decisions']} | "
                     f"{a['activations']} | {_fmt(a['mean'])} | {_ci(a['ci'])} | {_fmt(a['fallback_rate'])} |")
    lines += ["", "## Against control", "", "| arm | lift | 95% CI | relative | relative CI | p | p (Holm) |",
              "|---|---|---|---|---|---|---|"]
    for c in report["comparisons"]:
        lines.append(f"| {c['arm']} | {_fmt(c['absolute_lift'])} | {_ci(c['absolute_ci'])} | {_fmt(c['relative_lift'])} | "
                     f"{_ci(c['relative_ci'])} | {_fmt(c['p_value'])} | {_fmt(c['p_value_adjusted'])} |")
    srm = report["srm"]
    lines += ["", f"Sample ratio check: p = {_fmt(srm['p_value'])}, mismatch: {srm['mismatch']}", ""]
    for dimension, breakdown in report["segments"].items():
        lines += [f"## By {dimension}", "", "| segment | arm | units | mean | lift | p (Holm) |", "|---|---|---|---|---|---|"]
        for segment, result in breakdown["results"].items():
            comps = {c["arm"]: c for c in result["comparisons"]}
            for arm in result["arms"]:
                c = comps.get(arm["arm"], {})
                lines.append(f"| {segment} | {arm['arm']} | {arm['units']} | {_fmt(arm['mean'])} | "
                             f"{_fmt(c.get('absolute_lift'))} | {_fmt(c.get('p_value_adjusted'))} |")
        lines.append("")
    offline = report["offline"]
    lines += ["## Offline estimates", ""]
    if not offline.get("available"):
        lines.append(offline.get("reason", "offline estimates unavailable"))
    else:
        lines += [f"{offline['events']} events; {offline['method']}", "", "| arm | SNIPS | CI | DR | CI |", "|---|---|---|---|---|"]
        for est in offline["estimates"]:
            if "error" in est:
                lines.append(f"| {est['arm']} | {est['error']} | | | |")
                continue
            lines.append(f"| {est['arm']} | {_fmt(est['snips']['value'])} | {_ci(est['snips']['ci'])} | "
                         f"{_fmt(est['dr']['value'])} | {_ci(est['dr']['ci'])} |")
    return "\n".join(lines) + "\n"


def report_csv(report: Mapping[str, Any]) -> str:
    """One row per (segment dimension, segment, arm); the whole experiment is dimension 'all'."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["dimension", "segment", "arm", "units", "decisions", "mean", "ci_low", "ci_high",
                     "absolute_lift", "lift_ci_low", "lift_ci_high", "relative_lift", "p_value", "p_value_adjusted"])

    def rows(dimension: str, segment: str, arms: Sequence[Mapping[str, Any]], comparisons: Sequence[Mapping[str, Any]]) -> None:
        comps = {c["arm"]: c for c in comparisons}
        for a in arms:
            c = comps.get(a["arm"], {})
            ci = a.get("ci") or (None, None)
            lci = c.get("absolute_ci") or (None, None)
            writer.writerow([dimension, segment, a["arm"], a["units"], a["decisions"], a["mean"], ci[0], ci[1],
                             c.get("absolute_lift"), lci[0], lci[1], c.get("relative_lift"), c.get("p_value"),
                             c.get("p_value_adjusted")])

    rows("all", "all", report["arms"], report["comparisons"])
    for dimension, breakdown in report["segments"].items():
        for segment, result in breakdown["results"].items():
            rows(dimension, segment, result["arms"], result["comparisons"])
    return out.getvalue()


# ----------------------------------------------------------------------------- beacons


def _check_token(state: State, event_id: str, token: str | None) -> None:
    if not token or not hmac.compare_digest(token, event_token(state.decider.secret, event_id)):
        raise ApiError(401, "unauthorized", "missing or wrong beacon token for this event", "t")


# ----------------------------------------------------------------------------- routes


@post("/v1/experiments", guards=[require_admin], status_code=201)
async def post_experiment(request: Request) -> dict[str, Any]:  # type: ignore[type-arg]
    return await asyncio.to_thread(create_experiment, _state(request), await request.body())


@get("/v1/experiments", guards=[require_admin], sync_to_thread=True)
def get_experiments(request: Request, slot: FromQuery[str | None] = None) -> dict[str, Any]:  # type: ignore[type-arg]
    return {"experiments": list_experiments(_state(request).engine, slot)}


@get("/v1/experiments/{experiment_id:int}", guards=[require_admin], sync_to_thread=True)
def get_experiment(request: Request, experiment_id: FromPath[int]) -> dict[str, Any]:  # type: ignore[type-arg]
    return experiment_dict(_state(request).engine, experiment_id)


@post("/v1/experiments/{experiment_id:int}/start", guards=[require_admin], status_code=200, sync_to_thread=True)
def post_start(request: Request, experiment_id: FromPath[int]) -> dict[str, Any]:  # type: ignore[type-arg]
    return start_experiment(_state(request), experiment_id)


@post("/v1/experiments/{experiment_id:int}/stop", guards=[require_admin], status_code=200, sync_to_thread=True)
def post_stop(request: Request, experiment_id: FromPath[int]) -> dict[str, Any]:  # type: ignore[type-arg]
    return stop_experiment(_state(request), experiment_id)


def report_for(state: State, experiment_id: int, bucket: FromQuery[str] = "auto", offline: FromQuery[bool] = True) -> dict[str, Any]:
    if bucket not in ("day", "hour", "auto"):
        raise ApiError(422, "invalid_request", "bucket must be 'day', 'hour' or 'auto'", "bucket")
    return build_report(state.engine, experiment_id, policies=state.registry.policies, bucket=bucket,  # type: ignore[arg-type]
                        offline=offline, latency=latency_quantiles(state.metrics))


@get("/v1/experiments/{experiment_id:int}/report", guards=[require_admin], sync_to_thread=True)
def get_report(request: Request, experiment_id: FromPath[int], bucket: FromQuery[str] = "auto",  # type: ignore[type-arg]
               offline: FromQuery[bool] = True) -> dict[str, Any]:
    return report_for(_state(request), experiment_id, bucket, offline)


def _beacon_body(raw: bytes) -> bytes:
    return raw.strip() or b"{}"


@post("/v1/beacon/{event_id:str}/activate", status_code=200)
async def beacon_activate(request: Request, event_id: FromPath[str], t: FromQuery[str | None] = None) -> dict[str, Any]:  # type: ignore[type-arg]
    from api import app as core

    state = _state(request)
    _check_token(state, event_id, t)
    return await core.record_activation(state, event_id)


@post("/v1/beacon/{event_id:str}/reward", status_code=200)
async def beacon_reward(request: Request, event_id: FromPath[str], t: FromQuery[str | None] = None) -> dict[str, Any]:  # type: ignore[type-arg]
    from api import app as core

    state = _state(request)
    _check_token(state, event_id, t)
    return await core.record_reward(state, event_id, _beacon_body(await request.body()))


ROUTES = [post_experiment, get_experiments, get_experiment, post_start, post_stop, get_report,
          beacon_activate, beacon_reward]


# ----------------------------------------------------------------------------- lifecycle hooks


async def startup(app: Any) -> None:
    state = app.state
    book = ExperimentBook(state.engine)
    await asyncio.to_thread(book.refresh)
    state.experiment_book = book
    state.decider.resolve_arm = book.resolve
    if state.settings.demo:
        from api.auth import create_key

        state.demo_key = await asyncio.to_thread(create_key, state.engine, "decide", "demo page")

    state.experiment_poller = Periodic("experiment-refresh", state.settings.reload_interval_s, book.refresh).start()


async def shutdown(app: Any) -> None:
    poller = getattr(app.state, "experiment_poller", None)
    if poller is not None:
        await asyncio.to_thread(poller.stop)


# ----------------------------------------------------------------------------- CLI


def _report_command(args: argparse.Namespace, settings: Any) -> int:
    import sys

    from api.db.engine import make_engine

    engine = make_engine(settings.database_url)
    try:
        experiment_id = _resolve_experiment(engine, args.experiment)
        if experiment_id is None:
            print(f"no experiment '{args.experiment}'", file=sys.stderr)
            return 2
        report = build_report(engine, experiment_id, bucket=args.bucket, offline=not args.no_offline)
    finally:
        engine.dispose()
    if args.format == "json":
        text = json.dumps(report, indent=2)
    elif args.format == "md":
        text = report_markdown(report)
    elif args.format == "csv":
        text = report_csv(report)
    else:
        from api.dashboard import render_report_page

        text = render_report_page(report, standalone=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as stream:
            stream.write(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _resolve_experiment(engine: Engine, ref: str) -> int | None:
    with engine.connect() as connection:
        if ref.isdigit():
            found = connection.execute(select(Experiment.id).where(Experiment.id == int(ref))).scalar_one_or_none()
            if found is not None:
                return int(found)
        found = connection.execute(select(Experiment.id).where(Experiment.name == ref)
                                   .order_by(Experiment.id.desc()).limit(1)).scalar_one_or_none()
        return int(found) if found is not None else None


def add_commands(subparsers: Any, command: Any) -> None:
    report = subparsers.add_parser("report", help="print an experiment's report (md, html, json or csv)")
    report.add_argument("experiment", help="experiment id or name")
    report.add_argument("--format", choices=["md", "html", "json", "csv"], default="md")
    report.add_argument("--bucket", choices=["day", "hour", "auto"], default="auto",
                        help="time-series bucket (auto: hourly for the first three days)")
    report.add_argument("--no-offline", action="store_true", help="skip the offline estimates")
    report.add_argument("--output", "-o", help="write to this file instead of stdout")
    command("report")(_report_command)
