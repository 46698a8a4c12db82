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
    the country, the hour of the timestamp; a second scan the unit keys.
    numpy splits and encodes them (codes numbered by first appearance, as a
    Python dict would) with no Python loop per decision. The activated
    decisions (a walk of ``activations`` when they are fewer than the
    decisions, else a probe per decision) and the rewards received within
    ``reward_window_s`` (rows: seq, reward id, value) come from two more
    queries; numpy aggregates the rewards with the slot's
    ``reward_aggregation`` in reward-id order, clips to the reward range and
    puts the slot's default reward where none came (the learner's rule).
    Then per-unit sufficient statistics (``analysis.experiments.ArmStats``)
    per arm, per (segment, arm) and per first-exposure bucket, summed over
    the (arm, unit) pairs found once; ``analysis.experiments`` does all
    statistics. Decisions made with ``defer_activation`` and never activated
    were never shown: they are excluded (and counted). The numbers equal
    those of the plain row-by-row computation (``tests/api/test_reports.py``).
    A report is cached in the process per (experiment, bucket, offline, data
    marks); a repeated view with nothing new in the log costs the few index
    lookups of the marks. Measured on 1,000,000 decisions: ``benchmarks/report.py``.

Report copy (table ``report_chunks``, migration 0006)
    Those scans cost about 1.5 CPU-seconds per million decisions, nearly all
    of it per-row work on rows that never change. So the report keeps what it
    derived from them, per experiment: the encoded columns (seq, flags, unit
    codes, segment and hour codes), two 64-bit hashes per unit key, the
    windowed reward rows and the activation flags, as ``.npz`` chunks with
    their cursors (largest decision seq, reward id, activation key: SQLite
    rowid, PostgreSQL created_at) and the row counts at or below them. A
    report loads the chunks, checks the counts (any row that appeared below a
    cursor, a late commit, or went, a purge, voids the copy, which is then
    dropped and rebuilt), and reads only what lies past the cursors: the
    decisions after the seq cursor (with all their rewards and activations),
    the rewards above the reward cursor and the activations above the
    activation cursor of earlier decisions. Codes continue the copy's
    numbering (a unit key by its hashes, a label by its text), so the
    columns, and every number of the report, equal those of a read of the
    whole log (``tests/api/test_reports.py``: appends, restarts, compaction,
    late commits, erase, purge; SQLite and PostgreSQL). The report writes a
    chunk when at least :data:`REPORT_COPY_MIN_DECISIONS` decisions and 10% of
    the copy lie past it; a copy of :data:`REPORT_COPY_MAX_CHUNKS` chunks is
    rewritten as one. PostgreSQL copies only rows older than
    :data:`REPORT_COPY_MARGIN_S`: it commits ids out of order. A keeper in
    every serving worker (:func:`keep_report_copies`, every
    :data:`REPORT_COPY_KEEP_INTERVAL_S`) writes the missing copies and
    extends the lagging ones of running experiments, one worker per
    experiment (a claim row), so that a report seldom builds a copy itself.
    Only report readers and the keeper write the table; ``queries.erase_unit``
    and ``purge_older_than`` drop the copies they void. Unit keys that the joined text cannot carry
    (legacy keys holding the separator) keep that experiment on full reads.

Guardrails
    Every arm's fallback rate (decisions that served the slot's default
    because the policy failed) is tested against control's, one-sided,
    at the unit level, Holm-corrected (``analysis.experiments.guardrail_checks``);
    a significant increase adds a verdict line. ``max_fallback_rate`` adds an
    absolute limit per arm; ``max_latency_ms`` compares this worker's
    service-wide p95 decide latency (decisions store no latency, so there is
    no per-arm latency comparison).

Offline section
    Every arm's current policy (vw: its newest snapshot) estimated with SNIPS
    and DR, and DR paired against control, on the experiment's decisions: all
    of them up to :data:`OFFLINE_SAMPLE_EVENTS` (:data:`OFFLINE_VW_SAMPLE_EVENTS`
    with a ``vw`` arm), else that many evenly spaced in log order; of those,
    the ones the report counts (shown, of an arm), with the report's rewards.
    ``offline.sample`` in the JSON says how many and how.

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
import dataclasses
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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from msgspec import Meta, Struct
from sqlalchemy import Connection, Engine, delete, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from analysis.experiments import (
    AnalysisConfig,
    ArmStats,
    ExperimentError,
    analyze_experiment,
    analyze_segments,
    cumulative_series,
    guardrail_checks,
)
from api import hot_path, schemas
from api.auth import require_admin
from api.db.engine import write_lock
from api.db.experiment_models import Experiment, ExperimentArm, ReportChunk
from api.db.models import CatalogVersion, Decision, Policy, Reward, Slot, Snapshot, utcnow
from api.db.queries import JsonMemo
from api.decide import ArmAssignment, event_token
from api.errors import ApiError
from api.periodic import Periodic
from api.registry import SlotState
from bandits.choosers import build_chooser, check_against_catalog
from bandits.context import DAYPARTS, DEVICE_TYPES
from bandits.errors import InvalidPolicy
from bandits.policies import Candidate, PolicyConfig, VWConfig

__all__ = [
    "ROUTES",
    "ExperimentBook",
    "RunningExperiment",
    "add_commands",
    "build_report",
    "clear_report_cache",
    "keep_report_copies",
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
OFFLINE_SAMPLE_EVENTS = 20_000
"""The offline section evaluates every arm's current policy on all of the experiment's decisions when
they are at most this many, else on this many spread evenly over the log (see :func:`_offline_inputs`)."""
OFFLINE_VW_SAMPLE_EVENTS = 5_000
"""The same when an arm is a ``vw`` policy (a VW pmf costs about 30 microseconds per distinct context)."""


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
    source: Mapping[str, Any] = field(default_factory=dict)
    """Where the rows came from: decisions taken from the report copy, read from the log, copy chunks written."""
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n,) int: each row's decision seq (the offline section finds its sample's rewards by it)."""


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
_HOUR_WIDTH = 13  # "YYYY-MM-DD HH": the hour bucket; its first 10 characters are the day bucket
if max(len(_DEVICES), len(_DAYPARTS)) >= _OTHER:  # three bits per vocabulary, 7 for any other value
    raise ImportError("the device type or day part vocabulary outgrew the report's packed codes")
# bit layout of the packed integer: 0 fallback, 1 deferred, 2 activated, 3 no unit key,
# 4-7 arm position (15: not an arm of the experiment), 8-10 device type, 11-13 day part, 14- seq
_FLAG_BITS = 0xFF  # bits 0-7 of the packed integer are kept per decision as its flags
_DIMENSIONS = ("device_type", "country", "day_part", "hour")


def _sql_parts(dialect: str) -> dict[str, str]:
    if dialect == "sqlite":
        return {
            "ph": "?",
            "agg": "group_concat({value}, {sep})",
            "sep": "char(31)",
            "int": "{value}",
            "bool": "({value})",
            "epoch_d": "(julianday(d.created_at) - 2440587.5) * 86400.0",
            "epoch_r": "(julianday(rw.created_at) - 2440587.5) * 86400.0",
            "hour": "d.created_at",  # the stored ISO text; numpy keeps its first _HOUR_WIDTH bytes
            "hour_width": str(_HOUR_WIDTH),
            "scan": f"decisions d INDEXED BY {_REPORT_INDEX}",
            "rewards_first": "rewards rw CROSS JOIN decisions d",  # SQLite: CROSS JOIN fixes the loop order
            "decisions_first": "decisions d CROSS JOIN rewards rw",
            "activations_first": "activations a CROSS JOIN decisions d",
            "activation_key": "a.rowid",
        }
    return {
        "ph": "%s",
        "agg": "string_agg({value}, {sep} ORDER BY d.seq)",
        "sep": "chr(31)",
        "int": "({value})::text",
        "bool": "({value})::int",
        "epoch_d": "extract(epoch from d.created_at)",
        "epoch_r": "extract(epoch from rw.created_at)",
        "hour": "to_char(d.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24')",
        "hour_width": "0",
        "scan": "decisions d",
        "rewards_first": "rewards rw JOIN decisions d",  # PostgreSQL's planner picks the join order
        "decisions_first": "decisions d JOIN rewards rw",
        "activations_first": "activations a JOIN decisions d",
        "activation_key": "a.created_at",
    }


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _vocabulary_case(column: str, labels: Sequence[str], other: int) -> str:
    whens = " ".join(f"WHEN {_quote(label)} THEN {i}" for i, label in enumerate(labels))
    missing = labels.index("unknown")
    return f"CASE {column} {whens} ELSE (CASE WHEN {column} IS NULL THEN {missing} ELSE {other} END) END"


def _range(parts: Mapping[str, str]) -> str:
    """The decisions a scan reads. Placeholders: experiment id, seq after which to start, largest seq."""
    ph = parts["ph"]
    return f"d.experiment_id = {ph} AND d.seq > {ph} AND d.seq <= {ph}"


def _main_query(parts: Mapping[str, str], arms: Sequence[str], probe_activations: bool) -> str:
    """One row: count, then the decisions of :func:`_range` column by column in log order (seq).

    ``probe_activations``: look each decision up in ``activations`` (else :func:`_activation_query`
    brings the activated decisions).
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
        agg.format(value=parts["hour"], sep=sep),
    ]
    return f"SELECT count(*), {', '.join(columns)} FROM {parts['scan']} WHERE {_range(parts)}"


def _unit_query(parts: Mapping[str, str]) -> str:
    """The unit keys in log order (a second scan of the same rows, on another connection). Placeholders as
    :func:`_range`."""
    value = f"COALESCE(d.unit_key, {_quote(_NULL_UNIT)})"
    return (f"SELECT count(*), {parts['agg'].format(value=value, sep=parts['sep'])} FROM {parts['scan']} "
            f"WHERE {_range(parts)}")


def _activation_query(parts: Mapping[str, str]) -> str:
    """The seq of every decision in a seq range (SQLite: of any experiment; numpy keeps the experiment's)
    with an activation whose key (SQLite rowid, PostgreSQL created_at) is above a cursor. SQLite walks
    ``activations`` from the cursor and probes the unique event-id index of decisions, which holds the
    seq: no table read. Placeholders: activation cursor, lowest seq, largest seq (and the experiment id on
    PostgreSQL, whose planner needs it to start from the experiment's decisions)."""
    ph = parts["ph"]
    experiment = f" AND d.experiment_id = {ph}" if ph == "%s" else ""
    return (f"SELECT {parts['agg'].format(value=parts['int'].format(value='d.seq'), sep=repr(','))} "
            f"FROM {parts['activations_first']} ON d.event_id = a.event_id "
            f"WHERE {parts['activation_key']} > {ph} AND d.seq BETWEEN {ph} AND {ph}{experiment}")


def _string_query(parts: Mapping[str, str], column: str) -> str:
    """One dimension's strings (missing -> 'unknown') in log order: the path for values outside a vocabulary."""
    value = f"COALESCE(d.{column}, 'unknown')" if column != "hour" else parts["hour"]
    return (f"SELECT count(*), {parts['agg'].format(value=value, sep=parts['sep'])} FROM {parts['scan']} "
            f"WHERE {_range(parts)}")


def _reward_query(parts: Mapping[str, str], rewards_first: bool, tail: bool) -> str:
    """Windowed rewards of the experiment's decisions as (seq, reward id, value) rows (rows, not joined
    text: SQLite prints at most 16 significant digits, and a reward must read back exactly).

    ``tail`` False: every reward with an id above a cursor, of any decision up to the largest seq;
    placeholders: experiment id, largest seq, reward cursor, window in seconds. ``tail`` True: the
    rewards with an id up to the cursor of the decisions of :func:`_range`; placeholders: those of
    :func:`_range`, reward cursor, window. Together they are every reward not yet in the report copy.
    """
    source = parts["rewards_first"] if rewards_first else parts["decisions_first"]
    ph = parts["ph"]
    where = (f"{_range(parts)} AND rw.id <= {ph}" if tail
             else f"d.experiment_id = {ph} AND d.seq <= {ph} AND rw.id > {ph}")
    return (f"SELECT d.seq, rw.id, rw.value FROM {source} ON d.event_id = rw.event_id "
            f"WHERE {where} AND {parts['epoch_r']} <= {parts['epoch_d']} + {ph}")
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
    longest = int(lengths.max())
    width = max(8, -(-longest // 8) * 8)
    if longest and int(lengths.min()) == longest and not prefix:  # fixed width: a strided view, no gather
        matrix = np.zeros((n, width), dtype=np.uint8)
        matrix[:, :longest] = np.lib.stride_tricks.as_strided(buf, shape=(n, longest), strides=(longest + 1, 1))
        return matrix, starts, lengths
    # one gather of ``width`` bytes from every start (a sliding window over the zero-padded blob), then
    # the bytes past each value cleared
    padded = buf if int(starts[-1]) + width <= buf.size else np.concatenate([buf, np.zeros(width, dtype=np.uint8)])
    matrix = np.lib.stride_tricks.sliding_window_view(padded, width)[starts]
    matrix *= np.arange(width, dtype=np.int64) < lengths[:, None]
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
    else:  # a hash of the words, whose collisions the check below rules out
        codes, first = _few_first_seen(_hash_rows(words, lengths))
        _check_groups(words, lengths, codes, first)
    return codes, tuple(_label(blob, starts, lengths, int(r)) for r in first)


def _hash_rows(words: np.ndarray, lengths: np.ndarray, seed: int = 0x9E3779B97F4A7C15) -> np.ndarray:
    """A 64-bit multiply-xorshift hash of each row's length and of the words that hold its value
    (wrapping uint64 arithmetic). The zero padding past a value is not hashed, so a value hashes
    alike in matrices of any width: the report copy keeps unit hashes from one read to the next."""
    h = lengths.astype(np.uint64) * np.uint64(seed)
    for k in range(words.shape[1]):
        live = lengths > 8 * k
        if bool(live.all()):
            h ^= words[:, k]
            h *= np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
            h *= np.uint64(0x94D049BB133111EB)
        elif bool(live.any()):
            rows = np.flatnonzero(live)
            part = h[rows] ^ words[rows, k]
            part *= np.uint64(0xBF58476D1CE4E5B9)
            part ^= part >> np.uint64(31)
            part *= np.uint64(0x94D049BB133111EB)
            h[rows] = part
        else:
            break
    return h


def _check_groups(words: np.ndarray, lengths: np.ndarray, codes: np.ndarray, first: np.ndarray) -> None:
    """Every row equals its code's first row byte for byte (a hash collision would merge two values)."""
    rep = first[codes]
    if not (np.array_equal(lengths, lengths[rep]) and np.array_equal(words, words[rep])):
        raise _Unsplittable


_SECOND_SEED = 0xD6E8FEB86659FD93


def _unit_groups(engine: Engine, parts: Mapping[str, str],
                 params: tuple[int, int, int]) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """On a connection of its own: the number of decisions, per decision the first row with the same
    unit key, and two independent 64-bit hashes of each decision's key (raises :class:`_Unsplittable`
    for keys the joined text cannot carry)."""
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
        empty = np.zeros(0, dtype=np.uint64)
        return 0, np.zeros(0, dtype=np.int64), empty, empty
    matrix, _, lengths = _split(blob, n)
    words = matrix.view("<u8")
    first_hash = _hash_rows(words, lengths)
    codes, first = _first_seen(first_hash)
    # A unit key is an HMAC (random bits), so a 64-bit hash collision among a million units has a
    # probability near 3e-8; a second, independent 64-bit hash must agree within every group.
    check = _hash_rows(words, lengths, seed=_SECOND_SEED)
    if not np.array_equal(check, check[first[codes]]):
        _check_groups(words, lengths, codes, first)  # raises: two different keys shared the first hash
    return n, first[codes], first_hash, check


def _unit_codes(first_row: np.ndarray, no_unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit codes in order of first appearance (a decision without a unit key is its own unit), and
    each code's first row."""
    n = first_row.size
    first_row = first_row.copy()
    own = np.flatnonzero(no_unit)
    first_row[own] = own
    distinct = first_row == np.arange(n)
    return (np.cumsum(distinct) - 1)[first_row], np.flatnonzero(distinct)


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
    width = int(parts["hour_width"]) if column == "hour" else 0
    try:
        return _string_codes(blob, n, width)
    except _Unsplittable:
        value = f"COALESCE(d.{column}, 'unknown')" if column != "hour" else parts["hour"]
        rows = _rows(raw, f"SELECT {value} FROM {parts['scan']} WHERE {_range(parts)} ORDER BY d.seq", params)
        return _codes([_text(r[0]).decode("utf-8")[:width or None] for r in rows])


def _seq_range(connection: Connection, experiment_id: int) -> tuple[Any, Any]:
    """Lowest and largest seq of the experiment's decisions (two queries: SQLite answers a lone min()
    or max() from the index in a few steps, but scans the whole range for both in one query)."""
    where = Decision.experiment_id == experiment_id
    return (connection.execute(select(func.min(Decision.seq)).where(where)).scalar(),
            connection.execute(select(func.max(Decision.seq)).where(where)).scalar())


@dataclass
class _Columns:
    """An experiment's decisions as encoded columns in log order, before the exposure filter: the
    report copy, the rows read past its cursors, or both joined by :func:`_extend`."""

    seq: np.ndarray      # (n,) int64, increasing
    flags: np.ndarray    # (n,) int64: bit 0 fallback, 1 deferred, 2 activated, 3 no unit key, 4-7 arm (15: none)
    unit: np.ndarray     # (n,) int64: unit code, numbered by first appearance
    keyed: np.ndarray    # (u,) bool per unit code: a unit key (else one decision without a key)
    h1: np.ndarray       # (u,) uint64: two independent hashes of the unit key (0 without a key)
    h2: np.ndarray
    dims: dict[str, tuple[np.ndarray, tuple[str, ...]]]  # _DIMENSIONS -> (codes by first appearance, labels)
    rewards: np.ndarray  # (r, 3) float64 rows: decision seq, reward id, value (rewards within the window)
    hashed: bool = True  # False: unit keys took the Python path (no hashes; the copy cannot take these rows)

    @classmethod
    def empty(cls) -> _Columns:
        i64, u64 = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.uint64)
        return cls(i64, i64, i64, np.zeros(0, dtype=bool), u64, u64, {d: (i64, ()) for d in _DIMENSIONS},
                   np.zeros((0, 3)))


def _mark_activated(seq: np.ndarray, flags: np.ndarray, activated: np.ndarray) -> None:
    """Set the activated bit of the decisions whose seq is in ``activated`` (others' seqs are ignored)."""
    if not activated.size or not seq.size:
        return
    position = np.searchsorted(seq, activated)
    found = position < seq.size
    found[found] = seq[position[found]] == activated[found]
    flags[position[found]] |= 4


def _read_rows(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
               after: _Cursor, low: int, top: int) -> tuple[_Columns, np.ndarray]:
    """The decisions of the experiment with ``after.seq < seq <= top`` as :class:`_Columns` (their
    rewards and activations complete), plus what arrived past ``after`` for the earlier decisions:
    their rewards with an id above ``after.reward`` (in the returned rewards) and the seqs of the
    decisions with an activation above ``after.activation`` (the returned array; it may hold seqs of
    other experiments and of the returned decisions).

    Four kinds of query, three on connections of their own so that they overlap: the decisions'
    packed codes, country and hour; their unit keys; the rewards; the activations (SQLite, when fewer
    than the decisions, a walk of ``activations``; else an ``EXISTS`` probe per decision in the scan).
    """
    if len(arms) > _NO_ARM:
        raise ValueError(f"at most {_NO_ARM} arms")
    dialect = connection.dialect.name
    parts = _sql_parts(dialect)
    raw = connection.connection.driver_connection
    sqlite = dialect == "sqlite"
    params = (experiment_id, after.seq, top)
    span = top - max(low, after.seq + 1) + 1  # at least the number of decisions read
    copied = after.seq != _BEFORE_ALL
    # activations: walk them (SQLite, fewer than the decisions) or probe them per decision read; past a
    # report copy, probe the decisions read and walk the activations after the copy's cursor
    walk: tuple[Any, ...] | None = None
    if copied:
        walk = (after.activation if sqlite else datetime.fromisoformat(str(after.activation)), low, top)
    elif sqlite and span > 0 and (connection.execute(text("SELECT max(rowid) FROM activations")).scalar() or 0) <= span:
        walk = (_BEFORE_ALL, low, top)
    probe = copied or walk is None
    if walk is not None and not sqlite:
        walk = (*walk, experiment_id)
    # rewards: scan them when there are fewer than decisions, else probe them per decision
    first_id = connection.execute(select(func.min(Reward.id))).scalar()
    last_id = connection.execute(select(func.max(Reward.id))).scalar()
    rewards_first = copied or (first_id is not None and last_id is not None and last_id - first_id + 1 <= span)
    window = float(slot["reward_window_s"])
    reward_queries: list[tuple[str, tuple[Any, ...]]] = [
        (_reward_query(parts, rewards_first, tail=False), (experiment_id, top, after.reward, window))]
    if copied and after.reward != _BEFORE_ALL:
        reward_queries.append((_reward_query(parts, False, tail=True), (*params, after.reward, window)))
    factory = raw.text_factory if sqlite else None  # type: ignore[union-attr]
    if sqlite:
        raw.text_factory = bytes  # type: ignore[union-attr]  # the joined columns need no str decoding
        _map_file(raw)
    # The rewards and activations are read on a second connection while this one scans the decisions
    # (each query waits in the database, not in Python). Both are bounded by the same largest seq.
    with ThreadPoolExecutor(max_workers=2) as pool:
        side = pool.submit(_side_queries, connection.engine, parts, reward_queries, walk)
        unit_groups = pool.submit(_unit_groups, connection.engine, parts, params) if span > 0 else None
        try:
            n, blobs = _one_row(raw, _main_query(parts, arms, probe), params) if span > 0 else (0, [])
        finally:
            if sqlite:
                raw.text_factory = factory  # type: ignore[union-attr]
        rewards, activated = side.result()
        try:
            units_seen, first_row, h1_rows, h2_rows = (unit_groups.result() if unit_groups is not None
                                                       else (0, None, None, None))
        except _Unsplittable:
            units_seen, first_row, h1_rows, h2_rows = -1, None, None, None
    columns = _Columns.empty()
    columns.rewards = rewards
    if not n:
        return columns, activated
    packed = np.fromstring(blobs[0], dtype=np.int64, sep=",")
    seq = packed >> _PACKED_BITS
    if packed.size != n:
        raise RuntimeError("the report's decision columns do not line up")
    if n > 1 and not bool(np.all(seq[1:] > seq[:-1])):  # every column was joined in this order
        raise RuntimeError("the report scan did not return the decisions in log order")
    no_unit = (packed & 8) > 0
    if units_seen == n and first_row is not None and h1_rows is not None and h2_rows is not None:
        units, firsts = _unit_codes(first_row, no_unit)
        keyed = ~no_unit[firsts]
        columns.h1 = np.where(keyed, h1_rows[firsts], np.uint64(0))
        columns.h2 = np.where(keyed, h2_rows[firsts], np.uint64(0))
    else:  # keys the joined text cannot carry (or the log lost rows between the two scans)
        rows = _rows(raw, f"SELECT COALESCE(d.unit_key, '') FROM {parts['scan']} WHERE {_range(parts)} "
                          "ORDER BY d.seq", params)
        units = _codes([r[0] if r[0] else object() for r in rows])[0]  # no unit key: its own unit
        keyed = np.zeros(int(units.max()) + 1, dtype=bool)
        columns.h1 = columns.h2 = np.zeros(keyed.size, dtype=np.uint64)
        columns.hashed = False
    dims: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for dimension, column, shift, labels in (("device_type", "device_type", 8, _DEVICES),
                                             ("country", "country", None, ()),
                                             ("day_part", "daypart", 11, _DAYPARTS)):
        if shift is None:
            dims[dimension] = _column_codes(raw, parts, column, params, n, blobs[1])
            continue
        vocabulary = (packed >> shift) & 7
        if bool((vocabulary == _OTHER).any()):  # a value outside the vocabulary: read the strings
            dims[dimension] = _column_codes(raw, parts, column, params, n)
        else:
            dims[dimension] = _vocabulary_codes(vocabulary, labels)
    dims["hour"] = _column_codes(raw, parts, "hour", params, n, blobs[2])
    columns.seq, columns.flags, columns.unit, columns.keyed, columns.dims = seq, packed & _FLAG_BITS, units, keyed, dims
    return columns, activated


def _map_file(raw: Any) -> None:
    """Read the SQLite file through a memory map: the activation and reward probes jump around the
    file, and each page fetched through read() costs a system call (about 30% of the scan)."""
    raw.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")


def _side_queries(engine: Engine, parts: Mapping[str, str], reward_queries: Sequence[tuple[str, Sequence[Any]]],
                  walk: Sequence[Any] | None) -> tuple[np.ndarray, np.ndarray]:
    """On a connection of its own: the reward rows as an (r, 3) float64 array (seq, reward id, value; ids
    and seqs are exact below 2**53) and, with ``walk`` (the parameters of :func:`_activation_query`),
    the activated seqs."""
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        if connection.dialect.name == "sqlite":
            _map_file(raw)
        rows = [row for sql, params in reward_queries for row in _rows(raw, sql, params)]
        rewards = np.array(rows, dtype=np.float64).reshape(len(rows), 3)
        activated = np.zeros(0, dtype=np.int64)
        if walk is not None:
            _, (joined,) = _one_row(raw, "SELECT 0, " + _activation_query(parts)[len("SELECT "):], walk)
            if joined:
                activated = np.fromstring(joined, dtype=np.int64, sep=",")
    return rewards, activated


def _extend(base: _Columns, tail: _Columns, activated: np.ndarray) -> _Columns:
    """The report copy ``base`` followed by the rows read past its cursors (:func:`_read_rows`): tail codes
    mapped onto the copy's (a unit key by its two hashes, a label by its text), numbered by first
    appearance as a read of the whole log would number them. Raises :class:`_Unsplittable` when the
    tail's unit keys have no hashes or a key's first hash matches a different key in the copy."""
    if not base.seq.size and not base.keyed.size:
        out = _Columns(tail.seq, tail.flags.copy(), tail.unit, tail.keyed, tail.h1, tail.h2, dict(tail.dims),
                       np.concatenate([base.rewards, tail.rewards]), tail.hashed)
        _mark_activated(out.seq, out.flags, activated)
        return out
    if tail.seq.size and not tail.hashed:
        raise _Unsplittable
    units = base.keyed.size
    local = tail.keyed.size
    found = np.zeros(local, dtype=bool)
    mapped = np.empty(local, dtype=np.int64)
    known = np.flatnonzero(base.keyed)
    wanted = np.flatnonzero(tail.keyed)
    if known.size and wanted.size:
        order = np.argsort(base.h1[known])
        hashes = base.h1[known][order]
        position = np.minimum(np.searchsorted(hashes, tail.h1[wanted]), hashes.size - 1)
        hit = hashes[position] == tail.h1[wanted]
        codes = known[order[position[hit]]]
        if not np.array_equal(base.h2[codes], tail.h2[wanted[hit]]):
            raise _Unsplittable  # two different keys share the first hash
        mapped[wanted[hit]] = codes
        found[wanted[hit]] = True
    new = np.flatnonzero(~found)
    mapped[new] = units + np.arange(new.size)
    dims: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for dimension in _DIMENSIONS:
        codes_b, labels_b = base.dims[dimension]
        codes_t, labels_t = tail.dims[dimension]
        index = {label: i for i, label in enumerate(labels_b)}
        remap = np.array([index.setdefault(label, len(index)) for label in labels_t], dtype=np.int64)
        dims[dimension] = (np.concatenate([codes_b, remap[codes_t]]) if codes_t.size else codes_b, tuple(index))
    out = _Columns(
        seq=np.concatenate([base.seq, tail.seq]), flags=np.concatenate([base.flags, tail.flags]),
        unit=np.concatenate([base.unit, mapped[tail.unit]]) if tail.unit.size else base.unit,
        keyed=np.concatenate([base.keyed, tail.keyed[new]]), h1=np.concatenate([base.h1, tail.h1[new]]),
        h2=np.concatenate([base.h2, tail.h2[new]]), dims=dims,
        rewards=np.concatenate([base.rewards, tail.rewards]), hashed=base.hashed,
    )
    _mark_activated(out.seq, out.flags, activated)
    return out


def _exposures(columns: _Columns, slot: Mapping[str, Any], bucket: str, source: Mapping[str, Any]) -> ExperimentData:
    """The shown decisions of the experiment's arms with their aggregated rewards (the report's rows)."""
    n = columns.seq.size
    if not n:
        empty = np.zeros(0, dtype=np.int64)
        return ExperimentData(arm=empty, unit=empty, reward=np.zeros(0), rewarded=np.zeros(0, dtype=bool),
                              activated=np.zeros(0, dtype=bool), fallback=np.zeros(0, dtype=bool),
                              segments={d: (empty, ()) for d in SEGMENT_DIMENSIONS}, bucket=empty,
                              bucket_labels=(), excluded=0, source=source, seq=empty)
    rows = columns.rewards
    reward, rewarded = _aggregate_rewards(columns.seq, rows[:, 0].astype(np.int64), rows[:, 1].astype(np.int64),
                                          rows[:, 2], slot)
    flags = columns.flags
    activated = (flags & 4) > 0
    shown = ((flags & 2) == 0) | activated
    arm = (flags >> 4) & 15
    arm = np.where(arm == _NO_ARM, -1, arm)
    keep = shown & (arm >= 0)
    hours, hour_labels = columns.dims["hour"]
    if bucket == "hour":
        bucket_codes, bucket_labels = hours, hour_labels
    else:  # day buckets numbered by first appearance: hour codes are, so the first hour of each day decides
        days: dict[str, int] = {}
        remap = np.array([days.setdefault(label[:10], len(days)) for label in hour_labels], dtype=np.int64)
        bucket_codes, bucket_labels = remap[hours], tuple(days)
    return ExperimentData(
        arm=arm[keep], unit=columns.unit[keep], reward=reward[keep], rewarded=rewarded[keep],
        activated=activated[keep], fallback=((flags & 1) > 0)[keep],
        segments={d: (columns.dims[d][0][keep], columns.dims[d][1]) for d in SEGMENT_DIMENSIONS},
        bucket=bucket_codes[keep], bucket_labels=bucket_labels, excluded=int(n - shown.sum()), source=source,
        seq=columns.seq[keep],
    )


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


# ----------------------------------------------------------------------------- report copy

REPORT_COPY_MIN_DECISIONS = 20_000
"""An experiment's report copy is written once this many decisions are not in it yet ..."""
REPORT_COPY_GROWTH = 0.1
"""... and at least this fraction of the decisions already in it (so it grows by chunks of >= 10%)."""
REPORT_COPY_MAX_CHUNKS = 8
"""A copy of this many chunks is rewritten as one (the next chunk replaces them all)."""
REPORT_COPY_MARGIN_S = 10.0
"""PostgreSQL: rows younger than this are not copied yet (a lower id may still commit after a higher one)."""
_COPY_FORMAT = 1
_BEFORE_ALL = -(1 << 62)  # a cursor below every seq, id and rowid: the empty copy reaches nothing


@dataclass(frozen=True)
class _Cursor:
    """How far a report copy reaches: the experiment's decisions with seq <= ``seq``, the rewards with
    id <= ``reward``, the activations with key <= ``activation`` (SQLite rowid; PostgreSQL created_at,
    ISO text)."""

    seq: int = _BEFORE_ALL
    reward: int = _BEFORE_ALL
    activation: int | str = _BEFORE_ALL

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "reward": self.reward, "activation": self.activation}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> _Cursor:
        return cls(int(data["seq"]), int(data["reward"]), data["activation"])


@dataclass(frozen=True)
class _Counts:
    """Rows at or below a cursor when it was taken (decisions of the experiment, all rewards, all activations)."""

    decisions: int
    rewards: int
    activations: int


@dataclass(frozen=True)
class _Copy:
    columns: _Columns
    cursor: _Cursor
    counts: _Counts
    chunks: int
    last_position: int


class _StaleCopy(Exception):
    """The stored chunks do not form a copy of this experiment's log under the current settings."""


def _fingerprint(dialect: str, arms: Sequence[str], slot: Mapping[str, Any]) -> str:
    """What the copied columns depend on besides the log: format, dialect, the arms' order, the reward window."""
    key = json.dumps([_COPY_FORMAT, dialect, list(arms), float(slot["reward_window_s"])])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]


def _activation_bound(connection: Connection, key: int | str) -> Any:
    return key if connection.dialect.name == "sqlite" else datetime.fromisoformat(str(key))


def _count_decisions(connection: Connection, experiment_id: int, after: int, upto: int) -> int:
    where = (Decision.experiment_id == experiment_id, Decision.seq > after, Decision.seq <= upto)
    return int(connection.execute(select(func.count()).select_from(Decision).where(*where)).scalar_one())


def _counts_at(connection: Connection, experiment_id: int, cursor: _Cursor, decisions: int | None = None) -> _Counts:
    """The rows at or below ``cursor`` now (``decisions``: already known)."""
    if decisions is None:
        decisions = _count_decisions(connection, experiment_id, _BEFORE_ALL, cursor.seq)
    rewards = connection.execute(select(func.count()).select_from(Reward).where(Reward.id <= cursor.reward)).scalar_one()
    if connection.dialect.name == "sqlite":
        activations = connection.execute(text("SELECT count(*) FROM activations WHERE rowid <= :key"),
                                         {"key": cursor.activation}).scalar_one()
    else:
        activations = connection.execute(text("SELECT count(*) FROM activations WHERE created_at <= :key"),
                                         {"key": _activation_bound(connection, cursor.activation)}).scalar_one()
    return _Counts(int(decisions), int(rewards), int(activations))


def _load_copy(connection: Connection, experiment_id: int, fingerprint: str) -> _Copy | None:
    """The experiment's report copy from its chunks, or None without one. Raises :class:`_StaleCopy`."""
    rows = connection.execute(
        select(ReportChunk.position, ReportChunk.fingerprint, ReportChunk.meta, ReportChunk.data)
        .where(ReportChunk.experiment_id == experiment_id, ReportChunk.position >= 0)
        .order_by(ReportChunk.position)).all()
    if not rows:
        return None
    chain = _Cursor()
    parts: list[Any] = []
    labels: dict[str, list[str]] = {d: [] for d in _DIMENSIONS}
    for row in rows:
        meta = row.meta
        if row.fingerprint != fingerprint or meta.get("format") != _COPY_FORMAT or \
                _Cursor.from_dict(meta["base"]) != chain:
            raise _StaleCopy
        chain = _Cursor.from_dict(meta["cursor"])
        parts.append(np.load(io.BytesIO(row.data)))
        for dimension in _DIMENSIONS:
            labels[dimension] += meta["labels"][dimension]
    counts = _Counts(**rows[-1].meta["counts"])

    def joined(name: str, dtype: Any) -> np.ndarray:
        return np.concatenate([p[name] for p in parts]).astype(dtype, copy=False)

    seq = joined("seq", np.int64)
    if seq.size != counts.decisions or (seq.size > 1 and not bool(np.all(seq[1:] > seq[:-1]))):
        raise _StaleCopy
    columns = _Columns(
        seq=seq, flags=joined("flags", np.int64), unit=joined("unit", np.int64), keyed=joined("keyed", bool),
        h1=joined("h1", np.uint64), h2=joined("h2", np.uint64),
        dims={d: (joined(d, np.int64), tuple(labels[d])) for d in _DIMENSIONS},
        rewards=np.concatenate([p["rewards"] for p in parts]).reshape(-1, 3),
    )
    _mark_activated(columns.seq, columns.flags, joined("activated", np.int64))
    return _Copy(columns, chain, counts, len(rows), int(rows[-1].position))


def _drop_copy(engine: Engine, experiment_id: int) -> None:
    with write_lock(engine), engine.begin() as connection:
        connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id == experiment_id,
                                                     ReportChunk.position >= 0))


def _copy_target(connection: Connection, experiment_id: int, top: int, after: _Cursor, counts: _Counts,
                 pending: int | None) -> tuple[_Cursor, _Counts] | None:
    """How far the copy may reach now, with the rows below that cursor counted before they are read.

    SQLite commits one writer at a time and hands out ids and rowids in commit order, so everything
    up to the largest seq, reward id and activation rowid is already visible and no row below them
    can appear later: the experiment's decisions up to the cursor are counted as they are read
    (``pending`` None; the count is -1 here). PostgreSQL hands out ids at insert time and commits in
    any order, so only rows older than :data:`REPORT_COPY_MARGIN_S` are copied, and they are counted
    first (``pending``: the decisions after ``after.seq`` up to ``top``, counted just before); a row
    below a cursor that commits later anyway changes a count, and the next report rebuilds the copy
    (it is never silently wrong).
    """
    seq: int | None
    if connection.dialect.name == "sqlite":
        seq = top
        reward = connection.execute(select(func.max(Reward.id))).scalar()
        activation: int | str = connection.execute(text("SELECT max(rowid) FROM activations")).scalar() or _BEFORE_ALL
    else:
        cutoff = datetime.now(UTC) - timedelta(seconds=REPORT_COPY_MARGIN_S)
        seq = connection.execute(select(Decision.seq).where(
            Decision.experiment_id == experiment_id, Decision.seq <= top, Decision.created_at <= cutoff)
            .order_by(Decision.seq.desc()).limit(1)).scalar()
        reward = connection.execute(select(Reward.id).where(Reward.created_at <= cutoff)
                                    .order_by(Reward.id.desc()).limit(1)).scalar()
        moment = cutoff.isoformat(timespec="microseconds")
        activation = max(moment, str(after.activation)) if after.seq != _BEFORE_ALL else moment
    if seq is None or seq <= after.seq:
        return None
    cursor = _Cursor(int(seq), max(int(reward) if reward is not None else _BEFORE_ALL, after.reward), activation)
    if pending is None:
        decisions = -1
    else:
        decisions = counts.decisions + (pending if cursor.seq == top else
                                        _count_decisions(connection, experiment_id, after.seq, cursor.seq))
    return cursor, _counts_at(connection, experiment_id, cursor, decisions)


def _narrow(codes: np.ndarray, size: int) -> np.ndarray:
    dtype = np.uint8 if size <= 1 << 8 else np.uint16 if size <= 1 << 16 else np.int32
    return codes.astype(dtype)


def _save_copy(engine: Engine, experiment_id: int, fingerprint: str, columns: _Columns, stored: _Copy | None,
               tail: _Columns, activated: np.ndarray, target: tuple[_Cursor, _Counts]) -> bool:
    """Write the rows up to the target cursor that the copy lacks as its next chunk (all of them, as
    the only chunk, when there is no copy yet or it has :data:`REPORT_COPY_MAX_CHUNKS` chunks)."""
    cursor, counts = target
    end = int(np.searchsorted(columns.seq, cursor.seq, side="right"))
    if end != counts.decisions:  # the log moved between the count and the read: copy next time
        return False
    full = stored is None or stored.chunks >= REPORT_COPY_MAX_CHUNKS
    base = _Columns.empty() if full or stored is None else stored.columns
    start, unit_start = base.seq.size, base.keyed.size
    unit_end = int(columns.unit[:end].max()) + 1 if end else 0
    arrays: dict[str, np.ndarray] = {
        "seq": columns.seq[start:end], "flags": columns.flags[start:end].astype(np.uint8),
        "unit": columns.unit[start:end].astype(np.int64 if unit_end > 1 << 31 else np.int32),
        "keyed": columns.keyed[unit_start:unit_end], "h1": columns.h1[unit_start:unit_end],
        "h2": columns.h2[unit_start:unit_end],
    }
    labels: dict[str, list[str]] = {}
    for dimension in _DIMENSIONS:
        codes, names = columns.dims[dimension]
        label_end = int(codes[:end].max()) + 1 if end else 0
        arrays[dimension] = _narrow(codes[start:end], label_end)
        labels[dimension] = list(names[len(base.dims[dimension][1]):label_end])
    rows = columns.rewards if full else tail.rewards
    arrays["rewards"] = rows[(rows[:, 1] <= cursor.reward) & (rows[:, 0] <= cursor.seq)]
    earlier = activated[activated <= base.seq[-1]] if base.seq.size else np.zeros(0, dtype=np.int64)
    if earlier.size:  # activations that came for decisions already copied
        position = np.searchsorted(base.seq, earlier)
        earlier = earlier[base.seq[np.minimum(position, base.seq.size - 1)] == earlier]
    arrays["activated"] = earlier.astype(np.int64)
    meta = {"format": _COPY_FORMAT, "base": (_Cursor() if full or stored is None else stored.cursor).to_dict(),
            "cursor": cursor.to_dict(), "counts": dataclasses.asdict(counts), "rows": end - start,
            "labels": labels}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    chunk = 0 if stored is None else stored.last_position + 1
    try:  # the file's write lock, as the log writer takes it (SQLite's busy handler would sleep instead)
        with write_lock(engine), engine.begin() as connection:
            if full:
                connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id == experiment_id,
                                                             ReportChunk.position >= 0))
            connection.execute(insert(ReportChunk).values(
                experiment_id=experiment_id, position=chunk, fingerprint=fingerprint, meta=meta,
                data=buffer.getvalue(), created_at=utcnow()))
    except IntegrityError:  # another report wrote this chunk first
        return False
    return True


REPORT_COPY_KEEP_INTERVAL_S = 60.0
"""Every serving worker looks this often for running experiments whose report copy is missing or lags
by the write threshold, and brings them up to date (:func:`keep_report_copies`)."""
_CLAIM = -1  # position of the marker row that claims an experiment's copy for one keeper
_CLAIM_TTL_S = 600.0


def _claim_copy(engine: Engine, experiment_id: int) -> bool:
    """Insert the experiment's claim marker (unique position -1); False when another keeper holds a fresh one."""
    now = utcnow()
    try:
        with write_lock(engine), engine.begin() as connection:
            connection.execute(delete(ReportChunk).where(  # a claim left by a keeper that died
                ReportChunk.experiment_id == experiment_id, ReportChunk.position == _CLAIM,
                ReportChunk.created_at < now - timedelta(seconds=_CLAIM_TTL_S)))
            connection.execute(insert(ReportChunk).values(
                experiment_id=experiment_id, position=_CLAIM, fingerprint="claim", meta={}, data=b"", created_at=now))
    except IntegrityError:
        return False
    return True


def _release_copy(engine: Engine, experiment_id: int) -> None:
    with write_lock(engine), engine.begin() as connection:
        connection.execute(delete(ReportChunk).where(ReportChunk.experiment_id == experiment_id,
                                                     ReportChunk.position == _CLAIM))


def keep_report_copies(engine: Engine) -> list[int]:
    """One pass of the report copy keeper: for every running experiment whose copy is missing or lags by
    the write threshold (:data:`REPORT_COPY_MIN_DECISIONS`, :data:`REPORT_COPY_GROWTH`), read it as a
    report would (no statistics, no offline section), which writes the copy. So the first report after
    an upgrade, a purge or an erased unit, and reports of experiments nobody looks at for a while, find
    the copy ready instead of building it. A marker row claims each experiment for one keeper among
    the workers. Returns the experiments whose copy was written."""
    written: list[int] = []
    with engine.connect() as connection:
        running = connection.execute(select(Experiment.id).where(Experiment.status == "running")
                                     .order_by(Experiment.id)).scalars().all()
        for experiment_id in running:
            low, top = _seq_range(connection, experiment_id)
            if top is None:
                continue
            last = connection.execute(select(ReportChunk.meta).where(
                ReportChunk.experiment_id == experiment_id, ReportChunk.position >= 0)
                .order_by(ReportChunk.position.desc()).limit(1)).scalar()
            after = _Cursor.from_dict(last["cursor"]).seq if last else _BEFORE_ALL
            copied = int(last["counts"]["decisions"]) if last else 0
            threshold = max(REPORT_COPY_MIN_DECISIONS, REPORT_COPY_GROWTH * copied)
            if int(top) - max(after, int(low) - 1) < threshold or \
                    _count_decisions(connection, experiment_id, after, int(top)) < threshold:
                continue
            if not _claim_copy(engine, experiment_id):
                continue
            try:
                experiment = _experiment_dict(connection, experiment_id)
                slot = _slot_row(connection, experiment["slot"])
                data = fetch_experiment_data(connection, experiment_id, [a["name"] for a in experiment["arms"]],
                                             slot)
                if data.source.get("copy_written"):
                    written.append(experiment_id)
            finally:
                _release_copy(engine, experiment_id)
    return written


def fetch_experiment_data(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
                          bucket: str = "day", *, use_copy: bool = True) -> ExperimentData:
    """The experiment's exposures as numpy columns, from its report copy and the log past the copy's cursors.

    Rows are the experiment's decisions up to the largest ``seq`` when the pull starts, in log
    order. Per decision: arm, unit (``unit_key``, else the event), fallback and deferred flags,
    activation, device type, country and day part (the columns of migration 0005; missing ->
    "unknown"), time bucket. Rewards are the rows received within ``reward_window_s`` of their
    decision, aggregated here with the slot's rule in reward-id order: ``sum``, ``max``, or
    ``first`` (lowest id); then clipped to the reward range; the slot's default reward when none
    came (the learner's rule). ``use_copy`` False reads everything from the log and writes no copy.
    """
    columns, source = _experiment_columns(connection, experiment_id, arms, slot, use_copy)
    return _exposures(columns, slot, bucket, source)


def _experiment_columns(connection: Connection, experiment_id: int, arms: Sequence[str], slot: Mapping[str, Any],
                        use_copy: bool) -> tuple[_Columns, dict[str, Any]]:
    source: dict[str, Any] = {"copied_decisions": 0, "read_decisions": 0, "copy_chunks": 0, "copy_written": False,
                              "copy_dropped": False}
    low, top = _seq_range(connection, experiment_id)
    if top is None:
        return _Columns.empty(), source
    low, top = int(low), int(top)
    fingerprint = _fingerprint(connection.dialect.name, arms, slot)
    stored: _Copy | None = None
    if use_copy:
        try:
            stored = _load_copy(connection, experiment_id, fingerprint)
            if stored is not None and _counts_at(connection, experiment_id, stored.cursor) != stored.counts:
                raise _StaleCopy  # rows below the cursors appeared or went (a late commit, a purge)
        except _StaleCopy:
            _drop_copy(connection.engine, experiment_id)
            stored, source["copy_dropped"] = None, True
    base = stored.columns if stored is not None else _Columns.empty()
    after = stored.cursor if stored is not None else _Cursor()
    counts = stored.counts if stored is not None else _Counts(0, 0, 0)
    threshold = max(REPORT_COPY_MIN_DECISIONS, REPORT_COPY_GROWTH * base.seq.size)
    target = None
    if use_copy and connection.dialect.name == "sqlite":  # how many to copy is known once they are read
        if top - max(after.seq, low - 1) >= threshold:  # the seq span bounds their number
            target = _copy_target(connection, experiment_id, top, after, counts, None)
    elif use_copy:
        pending = _count_decisions(connection, experiment_id, after.seq, top)
        if pending >= threshold:
            target = _copy_target(connection, experiment_id, top, after, counts, pending)
    tail, activated = _read_rows(connection, experiment_id, arms, slot, after, low, top)
    try:
        columns = _extend(base, tail, activated)
    except _Unsplittable:  # unit keys the copy cannot take: read the whole log, leave the copy as it is
        stored, target, base = None, None, _Columns.empty()
        tail, activated = _read_rows(connection, experiment_id, arms, slot, _Cursor(), low, top)
        columns = _extend(base, tail, activated)
    source.update(copied_decisions=int(base.seq.size), read_decisions=int(tail.seq.size),
                  copy_chunks=stored.chunks if stored is not None else 0)
    if target is not None and target[1].decisions < 0:  # SQLite: the decisions up to the cursor, as read
        end = int(np.searchsorted(columns.seq, target[0].seq, side="right"))
        target = (target[0], dataclasses.replace(target[1], decisions=end)) if end - base.seq.size >= threshold \
            else None
    if target is not None and columns.hashed:
        source["copy_written"] = _save_copy(connection.engine, experiment_id, fingerprint, columns, stored, tail,
                                            activated, target)
    return columns, source


def _unit_stats(group: np.ndarray, unit: np.ndarray, reward: np.ndarray, n_groups: int,
                by_unit: Callable[[], np.ndarray] | None = None) -> list[ArmStats]:
    """Per-unit sufficient statistics per group: ``ArmStats`` of each group code in [0, n_groups).

    Each (group, unit) pair is one unit of that group with ``Y`` = its reward total
    and ``X`` = its decision count (the unit-level aggregation of ``analysis.experiments``).
    ``by_unit``: gives ``argsort(unit, kind="stable")``, shared by the calls of one report.

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
        order = by_unit()
        rows = order[np.argsort(group[order].astype(np.int16), kind="stable")]
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

    return _group_totals(owner, y, x, n_groups)


def _group_totals(owner: np.ndarray, y: np.ndarray, x: np.ndarray, n_groups: int) -> list[ArmStats]:
    """``ArmStats`` per group from per-pair reward totals ``y`` and decision counts ``x`` (pairs in
    (group, unit) order within each group, so every sum runs in unit order)."""

    def total(values: np.ndarray) -> np.ndarray:
        return np.bincount(owner, weights=values, minlength=n_groups)

    units = np.bincount(owner, minlength=n_groups)
    sums = [total(y), total(y * y), total(x), total(x * x), total(x * y)]
    return [ArmStats(int(units[g]), float(sums[0][g]), float(sums[1][g]), int(round(sums[2][g])),
                     float(sums[3][g]), float(sums[4][g])) for g in range(n_groups)]


class _ArmUnits:
    """The (arm, unit) pairs of the report's rows in (arm, unit) order: each pair is one unit of one arm.

    Found once per report; the arm statistics, the fallback guardrail and the time series (a unit in
    the bucket of its first exposure) are sums over these pairs, and so is a segment breakdown whose
    segment never changes within a pair (device type and country usually don't; else
    :func:`_unit_stats` groups the rows again). Every sum runs in the order :func:`_unit_stats` uses.
    """

    def __init__(self, arm: np.ndarray, unit: np.ndarray, n_arms: int) -> None:
        n = arm.size
        width = int(unit.max()) + 1 if n else 1
        key = arm * width + unit
        space = n_arms * width
        if space <= 8 * max(n, 1):  # dense bins: no sort
            count = np.bincount(key, minlength=space)
            keys = np.flatnonzero(count)
            index = np.zeros(space, dtype=np.int64)
            index[keys] = np.arange(keys.size)
            self.of_row = index[key]
            x = count[keys]
        else:
            keys, of_row = np.unique(key, return_inverse=True)
            self.of_row = of_row.reshape(-1)
            x = np.bincount(self.of_row, minlength=keys.size)
        self.size = int(keys.size)
        self.arm = keys // width
        self.x = x.astype(np.float64)
        self.first = np.full(self.size, n, dtype=np.int64)
        np.minimum.at(self.first, self.of_row, np.arange(n))  # each pair's first row

    def sums(self, values: np.ndarray) -> np.ndarray:
        """Per pair, the sum of ``values`` over its rows (in row order)."""
        return np.bincount(self.of_row, weights=values, minlength=self.size)

    def segment_stats(self, codes: np.ndarray, n_codes: int, reward: np.ndarray, n_arms: int) -> list[ArmStats] | None:
        """:func:`_unit_stats` of groups ``code * n_arms + arm`` for a row code that may change within a
        pair: dense bins over (pair, code), pairs taken in (arm, unit) order as there; None when
        the bins would outnumber the rows eightfold."""
        space = self.size * n_codes
        if space > 8 * max(self.of_row.size, 1):
            return None
        key = self.of_row * n_codes + codes
        count = np.bincount(key, minlength=space)
        present = np.flatnonzero(count)
        y = np.bincount(key, weights=reward, minlength=space)[present]
        owner = (present % n_codes) * n_arms + self.arm[present // n_codes]
        return _group_totals(owner, y, count[present].astype(np.float64), n_codes * n_arms)

    def owner(self, codes: np.ndarray, n_arms: int) -> np.ndarray | None:
        """Per pair, ``code * n_arms + arm`` of a row code constant within every pair; None if it is not."""
        at_first = codes[self.first]
        if not np.array_equal(codes, at_first[self.of_row]):
            return None
        return at_first * n_arms + self.arm


def _by_arm(stats: Sequence[ArmStats], arms: Sequence[str]) -> dict[str, ArmStats]:
    return {name: stats[i] for i, name in enumerate(arms)}


# ----------------------------------------------------------------------------- offline section


@dataclass(frozen=True)
class _OfflineInputs:
    """The offline section's sample of logged decisions with every arm's target pmf (no rewards yet)."""

    seq: np.ndarray            # (n,) decision seqs of the sample, increasing
    chosen: np.ndarray         # (n,) chosen column
    logging_pmf: np.ndarray    # (n, A) the logged pmf, zero-padded
    mask: np.ndarray           # (n, A) the column is a candidate
    codes: np.ndarray          # (n, A) block codes (-1 for padding), so estimators pool actions by block
    targets: Mapping[str, np.ndarray]  # arm -> (n, A) pmf of its current policy
    errors: Mapping[str, str]  # arm -> why its policy could not be evaluated
    total: int                 # the experiment's decisions the sample was drawn from


def _offline_inputs(engine: Engine, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                    policies: Mapping[str, Any] | None) -> _OfflineInputs | str:
    """On a connection of its own: the experiment's decisions, all of them up to :data:`OFFLINE_SAMPLE_EVENTS`
    (:data:`OFFLINE_VW_SAMPLE_EVENTS` when an arm is a ``vw`` policy), else that many spread evenly over
    the log (the decisions at ranks ``floor(i * N / size)`` in seq order), with every arm's current
    policy's pmf on each. Returns why not as a string when there is nothing to evaluate. (The
    section then keeps those the report counts: shown, of an arm.)

    Per decision the JSON columns arrive as text and are decoded once per distinct text (candidate
    lists and pmfs repeat; so do many contexts); a policy's pmf is computed once per distinct
    (context, candidate set): the choosers are deterministic given their model.
    """
    size = OFFLINE_VW_SAMPLE_EVENTS if any(a["kind"] == "vw" for a in experiment["arms"]) else OFFLINE_SAMPLE_EVENTS
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        sqlite = connection.dialect.name == "sqlite"
        parts = _sql_parts(connection.dialect.name)
        if sqlite:
            _map_file(raw)
        seqs_of = "decisions d INDEXED BY ix_decisions_experiment_seq" if sqlite else "decisions d"
        agg = parts["agg"].format(value=parts["int"].format(value="d.seq"), sep="','")
        total, (joined,) = _one_row(raw, f"SELECT count(*), {agg} FROM {seqs_of} WHERE d.experiment_id = "
                                         f"{parts['ph']}", (experiment["id"],))
        if total < 20:
            return f"offline estimates need at least 20 decisions, have {total}"
        seqs = np.fromstring(joined, dtype=np.int64, sep=",")
        sample = seqs if total <= size else seqs[(np.arange(size, dtype=np.int64) * total) // size]
        columns = "seq, catalog_version, {0}inline_candidates{1}, {0}candidate_ids{1}, {0}pmf{1}, chosen_index, " \
                  "{0}context{1}"
        if sqlite:
            rows = _rows(raw, f"SELECT {columns.format('', '')} FROM decisions WHERE seq IN "
                              "(SELECT value FROM json_each(?)) ORDER BY seq", (json.dumps(sample.tolist()),))
        else:
            rows = _rows(raw, f"SELECT {columns.format('(', ')::text')} FROM decisions WHERE seq = ANY(%s) "
                              "ORDER BY seq", (sample.tolist(),))
        catalogs: dict[int, dict[str, Candidate]] = {}
        for version in {r[1] for r in rows if r[1]}:
            blocks = connection.execute(select(CatalogVersion.blocks).where(
                CatalogVersion.slot_id == slot["id"], CatalogVersion.version == version)).scalar_one_or_none() or []
            catalogs[version] = {b["id"]: Candidate(b["id"], b.get("features", {})) for b in blocks}
        choosers = {arm["name"]: _chooser(policies, arm["policy"], connection) for arm in experiment["arms"]}
    decode = JsonMemo()
    n = len(rows)
    # candidate sets: (catalog version, inline text, ids text) -> index; their candidates, ids and VW cache key
    set_index: dict[tuple[Any, ...], int] = {}
    sets: list[tuple[tuple[Candidate, ...], list[str], str | None]] = []
    pmf_index: dict[str, int] = {}
    row_set = np.empty(n, dtype=np.int64)
    row_pmf = np.empty(n, dtype=np.int64)
    for i, row in enumerate(rows):
        key = (row[1], row[2], row[3])
        k = set_index.get(key)
        if k is None:
            ids = [str(v) for v in decode(row[3])]
            inline = decode(row[2])
            if inline:
                candidates = tuple(Candidate(c["id"], c.get("features", {})) for c in inline)
                cache_key = None
            else:
                catalog = catalogs.get(row[1] or 0, {})
                candidates = tuple(catalog.get(b, Candidate(b)) for b in ids)
                cache_key = f"report:{row[1]}:{row[3]}"
            k = set_index[key] = len(sets)
            sets.append((candidates, ids, cache_key))
        row_set[i] = k
        row_pmf[i] = pmf_index.setdefault(row[4], len(pmf_index))
    width = max(len(ids) for _, ids, _ in sets)
    block_code: dict[str, int] = {}
    set_codes = np.full((len(sets), width), -1, dtype=np.int64)
    for k, (_, ids, _) in enumerate(sets):
        set_codes[k, :len(ids)] = [block_code.setdefault(b, len(block_code)) for b in ids]
    pmf_table = np.zeros((len(pmf_index), width))
    for text_, k in pmf_index.items():
        values = decode(text_)
        pmf_table[k, :len(values)] = values
    codes = set_codes[row_set]
    mask = codes >= 0
    logging_pmf = pmf_table[row_pmf]
    chosen = np.array([r[5] for r in rows], dtype=np.int64)
    targets: dict[str, np.ndarray] = {}
    errors: dict[str, str] = {}
    contexts: dict[str, int] = {}
    row_context = np.array([contexts.setdefault(r[6] or "{}", len(contexts)) for r in rows], dtype=np.int64)
    context_values = [decode(t) or {} for t in contexts]
    pair = row_context * len(sets) + row_set  # a (context, candidate set) code per decision
    pairs, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
    for arm in experiment["arms"]:
        chooser = choosers[arm["name"]]
        if chooser is None:
            errors[arm["name"]] = "policy not loadable"
            continue
        lock = getattr(chooser, "lock", None)
        table = np.zeros((pairs.size, width))
        for j, row_at in enumerate(first):
            candidates, _, cache_key = sets[int(row_set[row_at])]
            context = context_values[int(row_context[row_at])]
            if lock is not None:
                with lock:
                    p = chooser.pmf(context, candidates, cache_key)
            else:
                p = chooser.pmf(context, candidates, cache_key)
            table[j, :len(p)] = p
        pi = table[inverse.reshape(-1)]
        targets[arm["name"]] = pi / pi.sum(1, keepdims=True)
    return _OfflineInputs(np.array([r[0] for r in rows], dtype=np.int64), chosen, logging_pmf, mask, codes,
                          targets, errors, int(total))


def _offline_section(pending: Future[_OfflineInputs | str], data: ExperimentData, experiment: Mapping[str, Any],
                     slot: Mapping[str, Any], control: str) -> dict[str, Any]:
    """Every arm's current policy evaluated on the sampled decisions that the report counts (shown,
    of an arm), with the report's rewards: SNIPS and DR per arm, DR paired against control. ``events``
    is how many were evaluated; ``sample`` says of how many and how they were drawn."""
    inputs = pending.result()
    if isinstance(inputs, str):
        return {"available": False, "reason": inputs}
    from analysis.estimators import EstimatorError, EventData, estimate

    position = np.searchsorted(data.seq, inputs.seq)
    found = position < data.seq.size
    found[found] = data.seq[position[found]] == inputs.seq[found]
    n = int(found.sum())
    if n < 20:
        return {"available": False, "reason": f"offline estimates need at least 20 shown decisions in the sample, "
                                              f"have {n}"}
    reward = data.reward[position[found]]
    logging_pmf = inputs.logging_pmf[found]
    try:
        events = EventData.from_arrays(reward=reward, chosen=inputs.chosen[found],
                                       logging_pmf=logging_pmf / logging_pmf.sum(1, keepdims=True),
                                       mask=inputs.mask[found], codes=inputs.codes[found])
    except EstimatorError as error:
        return {"available": False, "reason": f"the logged decisions cannot be evaluated: {error} ({error.field})"}
    reward_range = (float(slot["reward_min"]), float(slot["reward_max"]))
    targets = {arm: pi[found] for arm, pi in inputs.targets.items()}
    out: list[dict[str, Any]] = []
    for arm in experiment["arms"]:
        if arm["name"] in inputs.errors:
            out.append({"arm": arm["name"], "policy": arm["policy"], "error": inputs.errors[arm["name"]]})
            continue
        entry: dict[str, Any] = {"arm": arm["name"], "policy": arm["policy"], "kind": arm["kind"]}
        for method in ("snips", "dr"):
            est = estimate(events, targets[arm["name"]], method, "normal", reward_range=reward_range)
            entry[method] = {"value": est.value, "ci": [est.ci_low, est.ci_high], "stderr": est.stderr,
                             "ess": est.diagnostics.ess, "flags": list(est.flags)}
        out.append(entry)
    comparisons: list[dict[str, Any]] = []
    if control in targets and len(targets) > 1:
        from analysis.compare import compare

        others = {k: v for k, v in targets.items() if k != control}
        for c in compare(events, others, targets[control], baseline_name=control, method="dr",
                         reward_range=reward_range):
            comparisons.append({"arm": c.candidate, "control": c.baseline, "difference": c.difference,
                                "ci": [c.ci_low, c.ci_high], "p_value": c.p_value,
                                "p_value_adjusted": c.p_adjusted, "significant": c.significant, "note": c.note})
    limit = OFFLINE_VW_SAMPLE_EVENTS if any(a["kind"] == "vw" for a in experiment["arms"]) else OFFLINE_SAMPLE_EVENTS
    return {
        "available": True, "events": n,
        "sample": {"decisions": inputs.total, "sampled": int(inputs.seq.size), "evaluated": n, "limit": limit,
                   "rule": (f"1 in {inputs.total / inputs.seq.size:.3g} decisions, evenly spaced in log order"
                            if inputs.seq.size < inputs.total else "every decision")},
        "method": "snips and dr (normal 95% intervals) on the sampled decisions that the report counts (shown, of "
                  "an arm), with the report's rewards; each arm's current policy (vw: its latest snapshot)",
        "estimates": out, "paired_dr_vs_control": comparisons,
    }


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
    source: Mapping[str, Any]


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
            body, verdicts, fetched, source = _report_body(connection, experiment, slot, policies, bucket, offline)
            hit = _CachedReport(body, verdicts, time.monotonic(), source)
            if cache:
                with _report_cache_lock:
                    _report_cache[key] = hit
                    while len(_report_cache) > REPORT_CACHE_SIZE:
                        _report_cache.popitem(last=False)
            cached = False
        else:
            cached = True
    report = copy.deepcopy(hit.body)
    guardrails = _guardrails(experiment["guardrails"], report["arms"], latency, report.pop("guardrail_tests"))
    report["guardrails"] = guardrails
    report["verdicts"] = list(hit.verdicts) + [g["verdict"] for g in guardrails if g["breached"]]
    report["generated_at"] = datetime.now(UTC).isoformat()
    report["timing_ms"] = {"fetch": round((fetched - started) * 1000, 1),
                           "total": round((time.perf_counter() - started) * 1000, 1), "cached": cached,
                           "source": dict(hit.source)}
    return report


def _report_body(connection: Connection, experiment: Mapping[str, Any], slot: Mapping[str, Any],
                 policies: Mapping[str, Any] | None, bucket: str,
                 offline: bool) -> tuple[dict[str, Any], tuple[str, ...], float, Mapping[str, Any]]:
    """The report from the log, without the parts that change between views (guardrails' limits, time
    stamps); returns it, the statistical verdicts, when the decisions were fetched, and where they came
    from (``ExperimentData.source``)."""
    arms = [a["name"] for a in experiment["arms"]]
    control = experiment["control"]
    # the offline section (its sample, on a connection of its own, and the policies' pmfs) runs beside
    # the scan, its estimates (they need the scan's rewards) beside the statistics
    with ThreadPoolExecutor(max_workers=1) as pool:
        inputs = pool.submit(_offline_inputs, connection.engine, experiment, slot, policies) if offline else None
        data = fetch_experiment_data(connection, experiment["id"], arms, slot, bucket)
        fetched = time.perf_counter()
        estimates = (pool.submit(_offline_section, inputs, data, experiment, slot, control)
                     if inputs is not None else None)
        body, verdicts = _report_statistics(experiment, slot, data, bucket)
        body["offline"] = (estimates.result() if estimates is not None
                           else {"available": False, "reason": "offline section not requested"})
    return body, verdicts, fetched, data.source


def _report_statistics(experiment: Mapping[str, Any], slot: Mapping[str, Any], data: ExperimentData,
                       bucket: str) -> tuple[dict[str, Any], tuple[str, ...]]:
    arms = [a["name"] for a in experiment["arms"]]
    shares = {a["name"]: a["share"] for a in experiment["arms"]}
    control = experiment["control"]
    binary = bool(data.reward.size) and bool(np.all((data.reward == 0.0) | (data.reward == 1.0)))
    config = _analysis_config(experiment["metric"], experiment["analysis"], binary)
    n_arms = len(arms)
    pairs = _ArmUnits(data.arm, data.unit, n_arms)
    y = pairs.sums(data.reward)
    arm_stats = _by_arm(_group_totals(pairs.arm, y, pairs.x, n_arms), arms)
    result = analyze_experiment(arm_stats, control=control, shares=shares, config=config)
    # guardrail: each arm's fallback rate (per decision, unit-clustered) against control's, one-sided
    fallbacks = _by_arm(_group_totals(pairs.arm, pairs.sums(data.fallback.astype(np.float64)), pairs.x, n_arms), arms)
    sorted_units: list[np.ndarray] = []

    def by_unit() -> np.ndarray:  # made once, if a segment that varies within a unit needs it
        if not sorted_units:
            sorted_units.append(np.argsort(data.unit, kind="stable"))
        return sorted_units[0]
    guardrail_tests, guardrail_verdicts = guardrail_checks(fallbacks, metric="fallback_rate", control=control,
                                                           shares=shares, config=config)

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
        owner = pairs.owner(codes, n_arms)
        varying = pairs.segment_stats(codes, len(labels), data.reward, n_arms) if owner is None else None
        if owner is not None:
            stats = _group_totals(owner, y, pairs.x, len(labels) * n_arms)
        elif varying is not None:
            stats = varying
        else:
            stats = _unit_stats(codes * n_arms + data.arm, data.unit, data.reward, len(labels) * n_arms, by_unit)
        by_segment = {label: _by_arm(stats[s * n_arms:(s + 1) * n_arms], arms) for s, label in enumerate(labels)}
        segments[dimension] = analyze_segments(by_segment, dimension=dimension, control=control, shares=shares,
                                               config=config).to_dict()

    # time series: each unit counted in the bucket of its first exposure (exact cumulative sums)
    n_buckets = len(data.bucket_labels)
    series_stats = _group_totals(data.bucket[pairs.first] * n_arms + pairs.arm, y, pairs.x, n_buckets * n_arms)
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
        "guardrail_tests": [g.to_dict() for g in guardrail_tests],
        "segments": segments,
        "time_series": series,
        "offline": None,
        "timing_ms": {},
    }
    lines = list(result.verdicts)
    srm = 1 if result.srm.mismatch else 0  # the sample-ratio line stays first; worsened guardrails come next
    return body, tuple(lines[:srm] + list(guardrail_verdicts) + lines[srm:])


def _guardrails(limits: Mapping[str, float], arm_rows: Sequence[Mapping[str, Any]],
                latency: Mapping[str, float] | None, tests: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The guardrail rows: per arm its fallback rate with the one-sided test against control
    (``analysis.experiments.guardrail_checks``: ``worsened``) and, when the experiment sets
    ``max_fallback_rate``, the limit (``breached``); the service-wide decide latency against
    ``max_latency_ms``. Decisions do not store their latency, so latency has no per-arm test."""
    out: list[dict[str, Any]] = []
    limit = limits.get("max_fallback_rate")
    by_arm = {t["arm"]: t for t in tests}
    for row in arm_rows:
        rate = row["fallback_rate"]
        test = by_arm.get(row["arm"], {})
        breached = limit is not None and rate is not None and rate > limit
        out.append({"arm": row["arm"], "name": "fallback_rate", "value": rate, "limit": limit, "breached": breached,
                    "control_value": test.get("control_value"), "difference": test.get("difference"),
                    "ci": test.get("ci"), "method": test.get("method"), "p_value": test.get("p_value"),
                    "p_value_adjusted": test.get("p_value_adjusted"), "worsened": bool(test.get("worsened")),
                    "codes": test.get("codes", []),
                    "verdict": f"guardrail: arm {row['arm']} serves the fallback on {rate:.2%} of decisions "
                               f"(limit {limit:.2%})" if breached else ""})
    limit = limits.get("max_latency_ms")
    if limit is not None:
        p95 = latency.get("p95") if latency else None
        breached = p95 is not None and p95 > limit
        out.append({"arm": None, "name": "latency_p95_ms", "value": p95, "limit": limit, "breached": breached,
                    "worsened": False,
                    "scope": "service-wide decide latency of this worker (decisions do not store their latency, "
                             "so there is no per-arm comparison)",
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
        sample = offline.get("sample", {})
        lines += [f"{offline['events']} decisions evaluated of {sample.get('decisions', offline['events'])} "
                  f"({sample.get('rule', 'every decision')}); {offline['method']}", "", "| arm | SNIPS | CI | DR | CI |", "|---|---|---|---|---|"]
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
    state = _state(request)
    _check_token(state, event_id, t)
    return await hot_path.record_activation(state, event_id)


@post("/v1/beacon/{event_id:str}/reward", status_code=200)
async def beacon_reward(request: Request, event_id: FromPath[str], t: FromQuery[str | None] = None) -> dict[str, Any]:  # type: ignore[type-arg]
    state = _state(request)
    _check_token(state, event_id, t)
    return await hot_path.record_reward(state, event_id, _beacon_body(await request.body()))


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
    engine = state.engine

    def keep() -> None:
        keep_report_copies(engine)

    state.report_copy_keeper = Periodic("report-copies", REPORT_COPY_KEEP_INTERVAL_S, keep).start()


async def shutdown(app: Any) -> None:
    for name in ("experiment_poller", "report_copy_keeper"):
        poller = getattr(app.state, name, None)
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
