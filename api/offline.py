"""Offline evaluation in the service: the decision log as a ``BanditLog``, export, evaluations, apply.

Loading (:func:`load_log`). A slot's decisions in ``seq`` order, each joined
with the rewards that arrived within the slot's reward window and aggregated
by the slot's rule (``bandits.rewards.aggregate``: the very numbers the
learner learns with), the candidates with the features they had (their
catalog version, or the inline candidates: ``api.db.catalog``),
the context as logged. ``learnable`` is the learner's rule: False for
fallbacks, decisions without consent, the slot's holdout (``api.champion.holdout``),
and decisions that needed an activation (deferred, or the slot requires one) and
got none within the window; those carry ``_skipLearn`` in DSJSON. Three queries whatever the size
(decisions, rewards, activations; catalog versions once each, cached).
Rewards of decisions whose window is still open may be incomplete:
``meta["open_windows"]`` counts them.

Evaluations (``POST /v1/evaluations``) run :func:`analysis.evaluation.evaluate`
on a slot's log in a background thread and are stored in ``evaluations``
(status ``pending`` -> ``running`` -> ``done`` | ``failed``, progress in
[0, 1]), so results survive restarts. The online policy is, by default, the
logging policy (what was really served on that traffic, estimated on-policy);
``"online": "snapshot"`` replays the slot policy's newest snapshot instead,
with a note when that snapshot learned from part of the same log (an
in-sample, optimistic estimate).

Apply (``POST /v1/evaluations/{id}/apply``) makes a candidate the slot
policy's configuration (a new policy revision) and writes a snapshot trained
on the slot's log (decisions whose reward window has closed; replay with
``keep_model=True``) in the same transaction, with the cursor at the last
decision it learned, so the learner continues after it and the policy starts
warm. Only the recommended candidate, unless ``"force": true``.

Admin API (admin key)::

    POST /v1/evaluations                 {"slot", "since"?, "until"?, "candidates"?: {name: vw},
                                          "standard_candidates"?, "method"?, "interval"?, "level"?,
                                          "limit"?, "online"?, "feature_importance"?, "time_buckets"?}
    GET  /v1/evaluations[?slot=S]        the stored evaluations, newest first (no result bodies)
    GET  /v1/evaluations/{id}            status, progress, request, result, applied
    POST /v1/evaluations/{id}/apply      {"candidate": name, "force"?: false}

CLI: ``slotbandit export`` and ``slotbandit evaluate`` (see :func:`add_commands`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

from litestar import get, post
from litestar.params import FromPath, FromQuery
from litestar.types import ControllerRouterHandler
from msgspec import Meta, Struct
from sqlalchemy import Engine, Text, cast, insert, select, update

from analysis.dsjson import write_dsjson
from analysis.log import BanditLog
from analysis.replay import replay
from analysis.tabular import write_csv, write_parquet
from api import schemas
from api.auth import require_admin
from api.champion.holdout import HOLDOUT_ARM
from api.db.catalog import CatalogCache
from api.db.evaluation_models import StoredEvaluation
from api.db.models import Activation, Decision, Policy, Reward, Slot
from api.db.queries import JsonMemo, inserted_id, upsert_policy
from api.errors import ApiError
from api.learner import (
    LearnerSettings,
    SlotRules,
    _aware,
    append_snapshot,
    latest_snapshot,
)
from api.state import AnyRequest
from bandits.choosers import MODEL_KINDS
from bandits.errors import InvalidPolicy
from bandits.linear import LinearConfig
from bandits.policies import Candidate, PolicyConfig, VWConfig
from bandits.rewards import aggregate, cost_from_reward

__all__ = [
    "MAX_CANDIDATES",
    "ROUTES",
    "EvaluationRunner",
    "add_commands",
    "apply_candidate",
    "create_evaluation",
    "evaluation_dict",
    "list_evaluations",
    "load_log",
    "read_log_file",
    "run_evaluation",
    "shutdown",
    "startup",
]

log = logging.getLogger("slotbandit.offline")

MAX_CANDIDATES = 10
"""Most candidate configurations one evaluation replays (each costs a full pass over the log)."""
MAX_TOTAL_CANDIDATES = 16
"""... including the standard set."""
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0
"""A running evaluation whose heartbeat is older than this is taken as orphaned (its process died)."""

_decisions = Decision.__table__
_CANDIDATE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


# --------------------------------------------------------------------------- loading


def _bind_time(engine: Engine, moment: datetime | None) -> datetime | None:
    """UTC; naive on SQLite, which stores DateTime(timezone=True) without the offset."""
    if moment is None:
        return None
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return moment.replace(tzinfo=None) if engine.dialect.name == "sqlite" else moment


def load_log(
    engine: Engine,
    slot: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    policy: str | None = None,
    arm: str | None = None,
    limit: int | None = None,
) -> BanditLog:
    """The decisions of ``slot`` (``since`` <= created_at < ``until``; of one ``policy`` / ``arm``)
    joined with their aggregated rewards, as a :class:`BanditLog` in ``seq`` order.

    ``limit`` keeps the newest ``limit`` decisions. ``arms`` holds the experiment
    arm, else the policy name. ``meta``: source, slot, reward_min/max,
    default_block, reward_aggregation, reward_window_s, policy (the slot's),
    first_seq/last_seq, missing_candidates (decisions whose catalog version is
    gone: replayed on ids only), open_windows. Raises ``ApiError(422, field="slot")``
    for an unknown slot.
    """
    if limit is not None and limit < 1:
        raise ApiError(422, "invalid_request", "limit must be a positive integer", "limit")
    d = _decisions
    with engine.connect() as connection:
        slot_row = connection.execute(select(Slot.__table__).where(Slot.name == slot)).mappings().first()
        if slot_row is None:
            raise ApiError(422, "unknown_slot", f"slot '{slot}' does not exist", "slot")
        rules = SlotRules.from_row(dict(slot_row))
        where = [d.c.slot_id == slot_row["id"]]
        if since is not None:
            where.append(d.c.created_at >= _bind_time(engine, since))
        if until is not None:
            where.append(d.c.created_at < _bind_time(engine, until))
        if policy is not None:
            where.append(d.c.policy_name == policy)
        if arm is not None:
            where.append(d.c.arm == arm)
        # JSON columns as text: decoded once per distinct value below (contexts and candidate lists repeat)
        query = select(
            d.c.seq, d.c.event_id, d.c.slot_id, d.c.created_at, d.c.policy_name, d.c.arm, d.c.catalog_version,
            cast(d.c.inline_candidates, Text).label("inline_candidates"),
            cast(d.c.candidate_ids, Text).label("candidate_ids"), cast(d.c.pmf, Text).label("pmf"),
            d.c.chosen_index, cast(d.c.context, Text).label("context"), d.c.consent, d.c.deferred, d.c.fallback,
            d.c.experiment_id,
        ).where(*where)
        if limit is not None:
            rows = connection.execute(query.order_by(d.c.seq.desc()).limit(limit)).all()[::-1]
        else:
            rows = connection.execute(query.order_by(d.c.seq)).all()
        rewards: dict[str, list[tuple[float, datetime]]] = {}
        activations: dict[str, datetime] = {}
        catalogs = CatalogCache()
        if rows:
            span = (d.c.slot_id == slot_row["id"], d.c.seq >= rows[0].seq, d.c.seq <= rows[-1].seq)
            for event_id, value, created in connection.execute(
                select(Reward.event_id, Reward.value, Reward.created_at)
                .join(d, d.c.event_id == Reward.event_id)
                .where(*span)
                .order_by(Reward.created_at, Reward.id)
            ):
                rewards.setdefault(event_id, []).append((float(value), _aware(created)))
            for event_id, created in connection.execute(
                select(Activation.event_id, Activation.created_at).join(d, d.c.event_id == Activation.event_id)
                .where(*span)
            ):
                activations[event_id] = _aware(created)
            catalogs.load(connection, {(r.slot_id, r.catalog_version) for r in rows if r.catalog_version is not None})

    now = datetime.now(UTC)
    window = timedelta(seconds=rules.window_s)
    records: list[dict[str, Any]] = []
    missing = open_windows = 0
    bare: dict[tuple[str, ...], tuple[Candidate, ...]] = {}
    decode = JsonMemo(200_000, float_lists=True)
    candidate_sets: dict[tuple[Any, ...], tuple[tuple[Candidate, ...] | None, list[str]]] = {}
    for row in rows:
        created = _aware(row.created_at)
        window_end = created + window
        if window_end > now:
            open_windows += 1
        values = [value for value, at in rewards.get(row.event_id, ()) if at <= window_end]
        needs_activation = rules.require_activation or bool(row.deferred)
        activated_at = activations.get(row.event_id)
        activated = activated_at is not None and activated_at <= window_end
        key = (row.catalog_version, row.inline_candidates, row.candidate_ids)
        known = candidate_sets.get(key)
        if known is None:
            ids = [str(i) for i in decode(row.candidate_ids)]
            decoded = _Row(row.slot_id, row.catalog_version, decode(row.inline_candidates), ids)
            known = candidate_sets[key] = (catalogs.candidates(decoded), ids)
        candidates, ids = known
        if candidates is None:
            missing += 1
            id_key = tuple(ids)
            candidates = bare.setdefault(id_key, tuple(Candidate(i) for i in id_key))
        records.append({
            "event_id": row.event_id,
            "timestamp": created.timestamp(),
            "action_ids": ids,
            "pmf": decode(row.pmf),
            "chosen": int(row.chosen_index),
            "reward": aggregate(values, rules.reward),
            "arm": row.arm or row.policy_name,
            "context": decode(row.context) or {},
            "candidates": candidates,
            "learnable": not row.fallback and bool(row.consent) and not (needs_activation and not activated)
            and not (row.arm == HOLDOUT_ARM and row.experiment_id is None),  # the holdout is never learned
        })
    meta: dict[str, Any] = {
        "source": "database", "slot": slot, "reward_min": rules.reward_min, "reward_max": rules.reward_max,
        "default_block": rules.default_block, "reward_aggregation": rules.aggregation,
        "reward_window_s": rules.window_s, "policy": slot_row["policy_name"] or slot,
        "first_seq": int(rows[0].seq) if rows else 0, "last_seq": int(rows[-1].seq) if rows else 0,
        "missing_candidates": missing, "open_windows": open_windows,
    }
    return BanditLog.from_records(records, meta=meta)


class _Row(NamedTuple):
    slot_id: int
    catalog_version: int | None
    inline_candidates: list[Any] | None
    candidate_ids: list[str]


def read_log_file(path: str) -> BanditLog:
    """A log file by its extension: ``.dsjson``/``.json``/``.jsonl`` (DSJSON), ``.csv`` (ours, or the
    Open Bandit Dataset's layout when it has ``item_id`` and ``position`` columns), ``.parquet``."""
    from analysis.dsjson import read_dsjson
    from analysis.tabular import read_csv, read_obd_csv, read_parquet

    lower = path.lower()
    if lower.endswith((".dsjson", ".json", ".jsonl")):
        return read_dsjson(path)
    if lower.endswith(".parquet"):
        return read_parquet(path)
    if lower.endswith(".csv"):
        with open(path, encoding="utf-8") as stream:
            header = stream.readline()
        columns = {c.strip().strip('"') for c in header.split(",")}
        return read_obd_csv(path) if {"item_id", "position"} <= columns else read_csv(path)
    raise ValueError(f"cannot tell the format of {path!r}: use .dsjson, .csv or .parquet")


def _online_model(engine: Engine, policy_name: str) -> tuple[bytes | None, int, int, LinearConfig | None]:
    """(model bytes or None, snapshot version, cursor, its LinearConfig for a linear policy) of a model
    policy's newest trained snapshot."""
    with engine.connect() as connection:
        row = connection.execute(select(Policy.kind, Policy.config).where(Policy.name == policy_name)).first()
        if row is None or row.kind not in MODEL_KINDS:
            return None, 0, 0, None
        snap = latest_snapshot(connection, policy_name)
    if snap is None or not snap.model or not snap.metrics.get("trained", True):
        return None, 0, 0, None
    linear = PolicyConfig.from_dict(row.config).linear if row.kind == "linear" else None
    return snap.model, snap.version, snap.cursor, linear


# --------------------------------------------------------------------------- requests


class EvaluationIn(Struct, forbid_unknown_fields=True):
    slot: schemas.Name
    since: str | None = None
    until: str | None = None
    candidates: dict[str, Any] = {}
    standard_candidates: bool = False
    method: str = "dr"
    interval: str = "normal"
    level: float = 0.95
    limit: Annotated[int, Meta(ge=20, le=10_000_000)] | None = None
    online: Literal["logging", "snapshot"] = "logging"
    feature_importance: bool = False
    time_buckets: Literal["day", "hour"] | None = "day"


class ApplyIn(Struct, forbid_unknown_fields=True):
    candidate: Annotated[str, Meta(min_length=1, max_length=64)]
    force: bool = False


_decode = schemas.decode_request


def parse_time(text: str | None, field: str) -> datetime | None:
    """ISO 8601 date or date-time (naive = UTC) -> aware UTC; ApiError(422, field) otherwise."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise ApiError(422, "invalid_request", f"{field} must be an ISO 8601 date or date-time, got {text!r}",
                       field) from error
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


def candidate_config(options: Any) -> VWConfig | LinearConfig:
    """One candidate's options: VW options, or ``{"kind": "linear", ...LinearConfig options}`` for the
    linear family (``"kind": "vw"`` may be said too). Raises InvalidPolicy naming the option."""
    if isinstance(options, Mapping) and "kind" in options:
        rest = {k: v for k, v in options.items() if k != "kind"}
        if options["kind"] == "linear":
            return LinearConfig.from_dict(rest)
        if options["kind"] != "vw":
            raise InvalidPolicy("a candidate's kind is 'vw' or 'linear'", field="policy.vw.kind")
        return VWConfig.from_dict(rest)
    return VWConfig.from_dict(options)


def candidate_options(config: VWConfig | LinearConfig) -> dict[str, Any]:
    """The stored form of a candidate, which :func:`candidate_config` reads back."""
    return config.to_dict() if isinstance(config, VWConfig) else {"kind": "linear", **config.to_dict()}


def candidate_configs(raw: Mapping[str, Any], *, standard: bool = False,
                      field: str = "candidates") -> dict[str, VWConfig | LinearConfig]:
    """Validated ``name -> VWConfig | LinearConfig`` (InvalidPolicy fields mapped to
    ``candidates.<name>.<option>``)."""
    if len(raw) > MAX_CANDIDATES:
        raise ApiError(422, "invalid_request", f"at most {MAX_CANDIDATES} candidates per evaluation", field)
    from analysis.evaluation import STANDARD_CANDIDATES  # statsmodels: loaded when first evaluating

    configs: dict[str, VWConfig | LinearConfig] = dict(STANDARD_CANDIDATES) if standard else {}
    for name, options in raw.items():
        if not _CANDIDATE_NAME.match(name):
            raise ApiError(422, "invalid_request", "candidate names are 1-64 of A-Z a-z 0-9 . _ : - "
                           "(starting with a letter or digit)", f"{field}.{name}")
        if name in ("online", "baseline", "uniform"):
            raise ApiError(422, "invalid_request", f"'{name}' is a standard policy name", f"{field}.{name}")
        try:
            configs[name] = candidate_config(options)
        except InvalidPolicy as error:
            inner = (error.field or "").removeprefix("policy.vw").removeprefix("policy.linear").lstrip(".")
            raise ApiError(422, "invalid_request", error.message, f"{field}.{name}" + (f".{inner}" if inner else "")) from error
        except TypeError as error:  # a value of the wrong type reaching the dataclass
            raise ApiError(422, "invalid_request", str(error), f"{field}.{name}") from error
    if len(configs) > MAX_TOTAL_CANDIDATES:
        raise ApiError(422, "invalid_request", f"at most {MAX_TOTAL_CANDIDATES} candidates including the standard set",
                       field)
    return configs


def _validate(engine: Engine, body: EvaluationIn) -> dict[str, Any]:
    from analysis.estimators import INTERVALS, METHODS

    if body.method not in METHODS:
        raise ApiError(422, "invalid_request", f"method must be one of {', '.join(METHODS)}", "method")
    if body.interval not in INTERVALS:
        raise ApiError(422, "invalid_request", f"interval must be one of {', '.join(INTERVALS)}", "interval")
    if not (math.isfinite(body.level) and 0.5 <= body.level < 1.0):
        raise ApiError(422, "invalid_request", "level must be in [0.5, 1)", "level")
    since, until = parse_time(body.since, "since"), parse_time(body.until, "until")
    if since is not None and until is not None and not since < until:
        raise ApiError(422, "invalid_request", "since must be before until", "until")
    configs = candidate_configs(body.candidates, standard=body.standard_candidates)
    with engine.connect() as connection:
        if connection.execute(select(Slot.id).where(Slot.name == body.slot)).first() is None:
            raise ApiError(422, "unknown_slot", f"slot '{body.slot}' does not exist", "slot")
    return {
        "slot": body.slot, "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
        "candidates": {name: candidate_options(config) for name, config in configs.items()},
        "method": body.method, "interval": body.interval, "level": body.level, "limit": body.limit,
        "online": body.online, "feature_importance": body.feature_importance, "time_buckets": body.time_buckets,
    }


def create_evaluation(engine: Engine, body: bytes) -> int:
    """Validate a request and store it as a pending evaluation; returns its id."""
    request = _validate(engine, _decode(body, EvaluationIn))
    with engine.begin() as connection:
        result = connection.execute(
            insert(StoredEvaluation).values(slot_name=request["slot"], status="pending", progress=0.0,
                                            request=request)
        )
        return inserted_id(result)


def _iso(moment: datetime | None) -> str | None:
    return _aware(moment).isoformat() if moment is not None else None


def evaluation_dict(engine: Engine, evaluation_id: int, *, with_result: bool = True) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(
            select(StoredEvaluation.__table__).where(StoredEvaluation.id == evaluation_id)
        ).mappings().first()
    if row is None:
        raise ApiError(404, "unknown_evaluation", f"no evaluation {evaluation_id}", "id")
    return _row_dict(dict(row), with_result)


def _row_dict(row: Mapping[str, Any], with_result: bool) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": row["id"], "slot": row["slot_name"], "status": row["status"], "progress": row["progress"],
        "request": row["request"], "error": row["error"], "applied": row["applied"],
        "created_at": _iso(row["created_at"]), "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
    }
    result = row["result"]
    if with_result:
        data["result"] = result
    else:
        data["recommendation"] = (result or {}).get("recommendation")
    return data


def list_evaluations(engine: Engine, slot: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    query = select(StoredEvaluation.__table__).order_by(StoredEvaluation.id.desc()).limit(limit)
    if slot is not None:
        query = query.where(StoredEvaluation.slot_name == slot)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [_row_dict(dict(row), False) for row in rows]


# --------------------------------------------------------------------------- running


class _Interrupted(Exception):
    pass


def _claim(engine: Engine, evaluation_id: int | None = None) -> int | None:
    """Take a pending evaluation (the oldest, or ``evaluation_id``) with a conditional UPDATE."""
    with engine.begin() as connection:
        if evaluation_id is None:
            evaluation_id = connection.execute(
                select(StoredEvaluation.id).where(StoredEvaluation.status == "pending")
                .order_by(StoredEvaluation.id).limit(1)
            ).scalar_one_or_none()
            if evaluation_id is None:
                return None
        now = datetime.now(UTC)
        taken = connection.execute(
            update(StoredEvaluation)
            .where(StoredEvaluation.id == evaluation_id, StoredEvaluation.status == "pending")
            .values(status="running", started_at=now, heartbeat_at=now, progress=0.0, error=None)
        ).rowcount
    return evaluation_id if taken else None


def _set(engine: Engine, evaluation_id: int, **values: Any) -> None:
    with engine.begin() as connection:
        connection.execute(update(StoredEvaluation).where(StoredEvaluation.id == evaluation_id).values(**values))


def release_orphans(engine: Engine, stale_after_s: float = STALE_AFTER_S) -> int:
    """Running evaluations whose heartbeat is stale (their process died) go back to pending."""
    cutoff = _bind_time(engine, datetime.now(UTC) - timedelta(seconds=stale_after_s))
    with engine.begin() as connection:
        return int(connection.execute(
            update(StoredEvaluation)
            .where(StoredEvaluation.status == "running", StoredEvaluation.heartbeat_at < cutoff)
            .values(status="pending", progress=0.0)
        ).rowcount)


def run_evaluation(engine: Engine, evaluation_id: int, stop: threading.Event | None = None) -> None:
    """Run one claimed (``running``) evaluation to ``done`` or ``failed``; back to ``pending`` if stopped."""
    with engine.connect() as connection:
        request = connection.execute(
            select(StoredEvaluation.request).where(StoredEvaluation.id == evaluation_id)
        ).scalar_one()
    try:
        result = _evaluate_request(engine, request, evaluation_id, stop)
    except _Interrupted:
        _set(engine, evaluation_id, status="pending", progress=0.0)
        log.info("evaluation %d interrupted; it will run again", evaluation_id)
        return
    except Exception as error:  # noqa: BLE001 - stored for the caller to read
        log.exception("evaluation %d failed", evaluation_id)
        field = getattr(error, "field", None)
        detail = getattr(error, "detail", None) or str(error)
        _set(engine, evaluation_id, status="failed", error=(f"{detail} ({field})" if field else detail)[:2000],
             finished_at=datetime.now(UTC))
        return
    _set(engine, evaluation_id, status="done", progress=1.0, result=result, finished_at=datetime.now(UTC))


def _evaluate_request(engine: Engine, request: Mapping[str, Any], evaluation_id: int,
                      stop: threading.Event | None) -> dict[str, Any]:
    from analysis.evaluation import EvaluationError, evaluate

    candidates = {name: candidate_config(options) for name, options in request["candidates"].items()}
    bandit_log = load_log(engine, request["slot"], since=parse_time(request.get("since"), "since"),
                          until=parse_time(request.get("until"), "until"), limit=request.get("limit"))
    notes: list[str] = []
    model, online_config = None, None
    if request.get("online") == "snapshot":
        model, version, cursor, online_config = _online_model(engine, bandit_log.meta["policy"])
        if model is None:
            notes.append("the slot's policy has no trained snapshot: online = the logging policy")
        elif cursor >= bandit_log.meta["first_seq"]:
            notes.append(f"the online snapshot v{version} learned from part of this log (cursor {cursor}): "
                         "its estimate is in-sample and optimistic")
    replays = len(candidates) + (1 if model is not None else 0) + (5 if request.get("feature_importance") else 0)
    total = max(1, bandit_log.n * replays)
    state = {"done": 0, "beat": time.monotonic()}

    def progress(count: int) -> None:
        state["done"] += count
        if stop is not None and stop.is_set():
            raise _Interrupted
        if time.monotonic() - state["beat"] >= 1.0:
            state["beat"] = time.monotonic()
            _set(engine, evaluation_id, progress=min(0.99, state["done"] / total), heartbeat_at=datetime.now(UTC))

    try:
        evaluation = evaluate(
            bandit_log, candidates, online_model=model, online_config=online_config,
            default_block=bandit_log.meta["default_block"],
            method=request["method"], interval=request["interval"], level=request["level"], progress=progress,
            time_buckets=request.get("time_buckets"), with_feature_importance=bool(request.get("feature_importance")),
        )
    except EvaluationError as error:
        raise ApiError(422, "invalid_request", str(error), error.field) from error
    result = evaluation.to_dict()
    result["notes"] = [*result["notes"], *notes]
    result["log"] = {k: bandit_log.meta[k] for k in ("first_seq", "last_seq", "missing_candidates", "open_windows")}
    return result


class EvaluationRunner:
    """One background thread that claims pending evaluations and runs them, one at a time."""

    def __init__(self, engine: Engine, poll_interval_s: float = 2.0) -> None:
        self.engine = engine
        self.poll_interval_s = poll_interval_s
        self.stop = threading.Event()
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name="evaluations", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def submit(self) -> None:
        self.wake.set()

    def _run(self) -> None:
        last_orphan_check = 0.0
        while not self.stop.is_set():
            try:
                if time.monotonic() - last_orphan_check > STALE_AFTER_S / 2:
                    last_orphan_check = time.monotonic()
                    release_orphans(self.engine)
                evaluation_id = _claim(self.engine)
                if evaluation_id is not None:
                    run_evaluation(self.engine, evaluation_id, self.stop)
                    continue
            except Exception:  # noqa: BLE001 - a database hiccup must not end the runner
                log.exception("evaluation runner step failed")
            self.wake.wait(self.poll_interval_s)
            self.wake.clear()

    def close(self, timeout_s: float = 30.0) -> None:
        self.stop.set()
        self.wake.set()
        if self.thread.is_alive():
            self.thread.join(timeout_s)


# --------------------------------------------------------------------------- apply


def apply_candidate(engine: Engine, evaluation_id: int, candidate: str, *, force: bool = False) -> dict[str, Any]:
    """Make ``candidate`` of a done evaluation the slot policy's configuration, with a warm snapshot."""
    stored = evaluation_dict(engine, evaluation_id)
    if stored["status"] != "done":
        raise ApiError(409, "evaluation_not_done", f"evaluation {evaluation_id} is {stored['status']}", "id")
    options = stored["request"]["candidates"].get(candidate)
    if options is None:
        names = ", ".join(stored["request"]["candidates"]) or "none"
        raise ApiError(422, "unknown_candidate", f"'{candidate}' is not a candidate of this evaluation ({names})",
                       "candidate")
    recommended = (stored["result"] or {}).get("recommendation", {}).get("candidate")
    if candidate != recommended and not force:
        raise ApiError(409, "not_recommended", f"'{candidate}' was not recommended "
                       f"({'recommended: ' + recommended if recommended else 'nothing was recommended'}); "
                       "pass \"force\": true to apply it anyway", "candidate")
    config = candidate_config(options)
    slot = stored["slot"]
    with engine.connect() as connection:
        slot_row = connection.execute(select(Slot.__table__).where(Slot.name == slot)).mappings().first()
    if slot_row is None:
        raise ApiError(409, "unknown_slot", f"slot '{slot}' no longer exists", "slot")
    policy_name = slot_row["policy_name"] or slot
    # train on every decision whose reward window has closed; the learner continues after the last one
    closed = datetime.now(UTC) - timedelta(seconds=float(slot_row["reward_window_s"]))
    bandit_log = load_log(engine, slot, since=parse_time(stored["request"].get("since"), "since"), until=closed)
    if bandit_log.n == 0:
        raise ApiError(409, "no_decisions", f"slot '{slot}' has no decisions with a closed reward window to train on",
                       "slot")
    low, high = float(slot_row["reward_min"]), float(slot_row["reward_max"])
    trained = replay(bandit_log, config, reward_min=low, reward_max=high, keep_model=True)
    assert trained.model is not None
    learnable = bandit_log.learnable if bandit_log.learnable is not None else None
    reward_sum = float(bandit_log.reward[learnable].sum()) if learnable is not None else 0.0
    metrics = {
        "source": "evaluation", "evaluation_id": evaluation_id, "candidate": candidate, "trained": True,
        "decisions_learned": trained.learned, "reward_sum": reward_sum,
        "average_reward": reward_sum / trained.learned if trained.learned else None,
        "pv_loss": None if math.isnan(trained.progressive_loss) else trained.progressive_loss,
        "pv_loss_sum": 0.0 if math.isnan(trained.progressive_loss) else trained.progressive_loss * trained.learned,
        "late_rewards": 0, "skipped": {}, "at": datetime.now(UTC).isoformat(),
    }
    cursor = int(bandit_log.meta["last_seq"])
    with engine.begin() as connection:
        applied_config = (PolicyConfig(kind="linear", linear=config) if isinstance(config, LinearConfig)
                          else PolicyConfig(kind="vw", vw=config))
        upsert_policy(connection, policy_name, applied_config.kind, applied_config.to_dict())
        version = append_snapshot(connection, policy_name, trained.model, cursor, metrics,
                                  keep=LearnerSettings.from_env().keep_snapshots)
        revision = connection.execute(select(Policy.revision).where(Policy.name == policy_name)).scalar_one()
        applied = {"candidate": candidate, "policy": policy_name, "policy_revision": int(revision),
                   "snapshot_version": version, "cursor": cursor, "decisions_learned": trained.learned,
                   "forced": candidate != recommended, "at": datetime.now(UTC).isoformat()}
        connection.execute(update(StoredEvaluation).where(StoredEvaluation.id == evaluation_id).values(applied=applied))
    return {"evaluation": evaluation_id, **applied}


# --------------------------------------------------------------------------- admin API


def _state(request: AnyRequest) -> Any:
    return request.app.state


@post("/v1/evaluations", guards=[require_admin], status_code=202)
async def post_evaluation(request: AnyRequest) -> dict[str, Any]:
    state = _state(request)
    evaluation_id = await asyncio.to_thread(create_evaluation, state.engine, await request.body())
    runner: EvaluationRunner | None = getattr(state, "evaluation_runner", None)
    if runner is not None:
        runner.submit()
    return await asyncio.to_thread(evaluation_dict, state.engine, evaluation_id)


@get("/v1/evaluations", guards=[require_admin], sync_to_thread=True)
def get_evaluations(request: AnyRequest, slot: FromQuery[str | None] = None) -> dict[str, Any]:
    return {"evaluations": list_evaluations(_state(request).engine, slot)}


@get("/v1/evaluations/{evaluation_id:int}", guards=[require_admin], sync_to_thread=True)
def get_evaluation(request: AnyRequest, evaluation_id: FromPath[int]) -> dict[str, Any]:
    return evaluation_dict(_state(request).engine, evaluation_id)


@post("/v1/evaluations/{evaluation_id:int}/apply", guards=[require_admin], status_code=201)
async def post_apply(request: AnyRequest, evaluation_id: FromPath[int]) -> dict[str, Any]:
    state = _state(request)
    body: ApplyIn = _decode(await request.body(), ApplyIn)
    result = await asyncio.to_thread(apply_candidate, state.engine, evaluation_id, body.candidate, force=body.force)
    await asyncio.to_thread(state.registry.refresh)
    return result


ROUTES: list[ControllerRouterHandler] = [post_evaluation, get_evaluations, get_evaluation, post_apply]


async def startup(app: Any) -> None:
    """Start the evaluation runner (pending evaluations, including those a restart interrupted)."""
    runner = EvaluationRunner(app.state.engine)
    runner.start()
    app.state.evaluation_runner = runner


async def shutdown(app: Any) -> None:
    runner: EvaluationRunner | None = getattr(app.state, "evaluation_runner", None)
    if runner is not None:
        await asyncio.to_thread(runner.close)


# --------------------------------------------------------------------------- CLI


def _progress_bar(total: int, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="event", unit_scale=True, file=sys.stderr, disable=None, leave=False)


def _cli_time(text: str | None, field: str) -> datetime | None:
    return parse_time(text, field)


def _export_command(args: argparse.Namespace, settings: Any) -> int:
    from api.db.engine import make_engine

    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    try:
        bandit_log = load_log(engine, args.slot, since=_cli_time(args.since, "since"),
                              until=_cli_time(args.until, "until"))
    except ApiError as error:
        print(f"error: {error.detail}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    if args.format == "dsjson":
        if args.cost == "learner":
            low, high = float(bandit_log.meta["reward_min"]), float(bandit_log.meta["reward_max"])
            count = write_dsjson(bandit_log, args.output, reward_to_cost=lambda r: cost_from_reward(r, low, high))
        else:
            count = write_dsjson(bandit_log, args.output)
    elif args.format == "csv":
        count = write_csv(bandit_log, args.output)
    else:
        count = write_parquet(bandit_log, args.output)
    print(f"exported {count} decisions of slot '{args.slot}' to {args.output} ({args.format})", file=sys.stderr)
    return 0


def _parse_candidate(text: str) -> tuple[str, dict[str, Any]]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--candidate {text!r}: expected NAME=JSON_VWCONFIG")
    try:
        options = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"--candidate {name}: not valid JSON ({error.msg})") from error
    if not isinstance(options, dict):
        raise ValueError(f"--candidate {name}: the configuration must be a JSON object")
    return name, options


def _evaluate_command(args: argparse.Namespace, settings: Any) -> int:
    from analysis.evaluation import EvaluationError, evaluate

    try:
        raw = dict(_parse_candidate(text) for text in args.candidate or ())
        candidates = candidate_configs(raw, standard=args.standard_candidates, field="--candidate")
        since, until = _cli_time(args.since, "since"), _cli_time(args.until, "until")
    except (ValueError, ApiError) as error:
        print(f"error: {getattr(error, 'detail', error)}", file=sys.stderr)
        return 2
    model, online_config = None, None
    notes: list[str] = []
    try:
        if args.log:
            bandit_log = read_log_file(args.log)
            default_block = args.default_block
            if since or until:
                keep = (bandit_log.timestamps >= (since.timestamp() if since else -math.inf)) & (
                    bandit_log.timestamps < (until.timestamp() if until else math.inf))
                bandit_log = bandit_log.subset(keep)
        else:
            from api.db.engine import make_engine

            engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
            try:
                bandit_log = load_log(engine, args.slot, since=since, until=until, limit=args.limit)
                if args.online == "snapshot":
                    model, version, cursor, online_config = _online_model(engine, bandit_log.meta["policy"])
                    if model is not None and cursor >= bandit_log.meta["first_seq"]:
                        notes.append(f"the online snapshot v{version} learned from part of this log: in-sample")
            finally:
                engine.dispose()
            default_block = args.default_block or bandit_log.meta.get("default_block")
    except (ApiError, ValueError, OSError) as error:
        print(f"error: {getattr(error, 'detail', error)}", file=sys.stderr)
        return 2
    replays = len(candidates) + (model is not None) + (5 if args.feature_importance else 0)
    bar = _progress_bar(bandit_log.n * replays, "replay")
    try:
        evaluation = evaluate(
            bandit_log, candidates, online_model=model, online_config=online_config, default_block=default_block,
            method=args.estimator,
            interval=args.interval, level=args.level, progress=bar.update, seed=args.seed,
            time_buckets=None if args.bucket == "none" else args.bucket, with_feature_importance=args.feature_importance,
        )
    except (EvaluationError, ValueError) as error:
        field = getattr(error, "field", None)
        print(f"error: {error}" + (f" ({field})" if field else ""), file=sys.stderr)
        return 2
    finally:
        bar.close()
    if args.json:
        data = evaluation.to_dict()
        data["notes"] = [*data["notes"], *notes]
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(evaluation.table())
        for note in notes:
            sys.stdout.write(f"note: {note}\n")
    return 0


def add_commands(subparsers: Any, command: Callable[[str], Callable[[Any], Any]]) -> None:
    """``slotbandit export`` and ``slotbandit evaluate``."""
    export = subparsers.add_parser("export", help="export a slot's decisions with their joined rewards")
    export.add_argument("--slot", required=True)
    export.add_argument("--format", choices=["dsjson", "csv", "parquet"], required=True)
    export.add_argument("--output", required=True, metavar="PATH")
    export.add_argument("--since", help="ISO date or date-time (UTC unless it says otherwise)")
    export.add_argument("--until", help="ISO date or date-time, exclusive")
    export.add_argument("--cost", choices=["negative-reward", "learner"], default="negative-reward",
                        help="DSJSON _label_cost: -reward (the decision-service convention, default) or the "
                        "learner's (r_max - r) / (r_max - r_min)")
    command("export")(_export_command)

    ev = subparsers.add_parser("evaluate", help="offline evaluation of the standard set and candidate VW configurations")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--log", metavar="FILE", help=".dsjson, .csv (ours or Open Bandit Dataset) or .parquet")
    source.add_argument("--slot", help="a slot in the database")
    ev.add_argument("--since")
    ev.add_argument("--until")
    ev.add_argument("--limit", type=int, help="only the newest N decisions (--slot)")
    ev.add_argument("--estimator", default="dr", help="ips, snips, dm, dr (default), switch_dr or replay")
    ev.add_argument("--interval", choices=["normal", "bootstrap", "bernstein"], default="normal")
    ev.add_argument("--level", type=float, default=0.95)
    ev.add_argument("--candidate", action="append", metavar="NAME=JSON_VWCONFIG",
                    help='e.g. greedy=\'{"exploration": "epsilon", "epsilon": 0.02}\' (repeatable)')
    ev.add_argument("--standard-candidates", action="store_true",
                    help="add the built-in set (analysis.evaluation.STANDARD_CANDIDATES): squarecb gamma 1000/100, "
                    "epsilon 0.05/0.2, cover, learning rate 0.1, no interactions (a control)")
    ev.add_argument("--default-block", help="the baseline block (default: the slot's; needed for --log)")
    ev.add_argument("--online", choices=["logging", "snapshot"], default="logging",
                    help="the online policy: the logged pmfs (default) or the slot policy's newest snapshot")
    ev.add_argument("--bucket", choices=["day", "hour", "none"], default="day")
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--json", action="store_true", help="JSON instead of the table")
    ev.add_argument("--feature-importance", action="store_true",
                    help="value lost without each context group, for the best candidate (one replay per group)")
    command("evaluate")(_evaluate_command)

