"""Model management: list, export, import, reset and roll back the snapshots of a ``vw`` or ``linear`` policy.

Admin API (admin key)::

    GET  /v1/policies/{name}/snapshots                 versions, cursors, metrics
    GET  /v1/policies/{name}/model[?version=V]         the model bytes (latest or V)
    PUT  /v1/policies/{name}/model                     import model bytes (checked first)
    POST /v1/policies/{name}/reset    {"from_start"?}  untrained from here (or relearn the log)
    POST /v1/policies/{name}/rollback {"version": V}   serve and learn on from V's model
    GET  /v1/policies/{name}/learning                  learner progress, lag, late rewards, apprentice match rate

CLI: ``slotbandit model list|export|import|reset|rollback --policy NAME ...``
(directly on the database, like ``slotbandit migrate``).

Every change is a NEW snapshot version, so the version only grows and serving
workers hot-swap it like any learned snapshot. The cursor of the new version
is the cursor of the newest one: import, reset and rollback change the model,
not the position in the log. For a rollback this is the point (the decisions
learned since the old version are what is being undone; they are not learned
again); ``reset`` with ``from_start`` sets the cursor to 0 so the learner
relearns the whole log from an untrained model. A running learner sees the
newer version on its next step, drops its unsaved progress and continues from
the new snapshot (module doc of :mod:`api.learner`).

Imports are checked before they replace anything. A ``linear`` model is read
in-process (numpy arrays without pickle, behind a header whose configuration
digest must match the policy's) and asked for a pmf. A VW model is loaded into a
fresh VW workspace in a separate Python process (a malformed model can crash
VW's native code; it must not take the server with it) and asked for a pmf on
a dummy ``cb_explore_adf`` example, which must be a finite distribution over
the dummy candidates. An untrained (reset) snapshot holds the bytes of a fresh
workspace and ``metrics.trained = false``.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from litestar import Response, get, post, put
from litestar.params import FromPath, FromQuery
from litestar.types import ControllerRouterHandler
from sqlalchemy import Connection, Engine, delete, func, select
from sqlalchemy.exc import IntegrityError

from api.auth import require_admin
from api.db.learning_models import LearnedDecision, LearnerLease
from api.db.models import Decision, Policy, Snapshot
from api.errors import ApiError
from api.learner import LearnerSettings, append_snapshot, count_late_rewards, latest_snapshot
from api.settings import ServiceSettings
from api.state import AnyRequest
from bandits.choosers import MODEL_KINDS, build_model, model_suffix
from bandits.errors import ModelError
from bandits.features import Features
from bandits.policies import Candidate, PolicyConfig

__all__ = [
    "MAX_MODEL_BYTES",
    "ROUTES",
    "add_commands",
    "check_model",
    "export_model",
    "import_model",
    "learning_status",
    "list_snapshots",
    "reset_policy",
    "rollback_policy",
]

MAX_MODEL_BYTES = 256 * 1024 * 1024
"""Largest model accepted by an import (2**28 weights x a few floats fits easily)."""

_CHECK = r"""
import math, sys
from bandits.policies import Candidate, VWConfig, VWPolicy
policy = VWPolicy(VWConfig(), sys.stdin.buffer.read())
pmf = policy.pmf({"time": {"hour": 9.0, "daypart": "morning"}, "device": {"type": "mobile"}},
                 [Candidate("check-a", {"category": "news"}), Candidate("check-b", {"category": "sports"})])
assert len(pmf) == 2, f"the model returned {len(pmf)} probabilities for 2 candidates"
assert all(math.isfinite(p) and p >= 0 for p in pmf), f"the model returned {pmf}"
assert abs(sum(pmf) - 1.0) < 1e-3, f"the model's probabilities sum to {sum(pmf)}"
print("ok")
"""


def _root() -> str:
    return str(Path(__file__).resolve().parents[1])


_PROBE_CONTEXT: Features = {"time": {"hour": 9.0, "daypart": "morning"}, "device": {"type": "mobile"}}
_PROBE_CANDIDATES = [Candidate("check-a", {"category": "news"}), Candidate("check-b", {"category": "sports"})]


def check_model(model: bytes, config: PolicyConfig | None = None, timeout_s: float = 60.0) -> None:
    """Raise ApiError(422) unless ``model`` loads as a model of ``config``'s kind (default ``vw``) that
    predicts a pmf. VW models load in a child process (VW can abort on damaged bytes); ``linear`` models
    are numpy arrays read without pickle, checked against the policy's configuration digest."""
    if not model:
        raise ApiError(422, "invalid_model", "the model is empty", "model")
    if len(model) > MAX_MODEL_BYTES:
        raise ApiError(413, "invalid_model", f"the model is larger than {MAX_MODEL_BYTES} bytes", "model")
    if config is not None and config.kind == "linear":
        try:
            loaded = build_model(config, model)
            pmf = loaded.pmf(_PROBE_CONTEXT, _PROBE_CANDIDATES)
        except ModelError as error:
            raise ApiError(422, "invalid_model", f"not a usable linear model: {error}"[:500], "model") from error
        if len(pmf) != 2 or abs(sum(pmf) - 1.0) > 1e-6:
            raise ApiError(422, "invalid_model", f"the model returned {pmf} for 2 candidates", "model")
        return
    try:
        result = subprocess.run(
            [sys.executable, "-c", _CHECK], input=model, capture_output=True, timeout=timeout_s, cwd=_root(),
        )
    except subprocess.TimeoutExpired as error:
        raise ApiError(422, "invalid_model", "loading the model took too long", "model") from error
    if result.returncode != 0 or result.stdout.strip() != b"ok":
        lines = result.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = lines[-1] if lines else f"the check process ended with code {result.returncode}"
        raise ApiError(422, "invalid_model", f"not a usable cb_explore_adf model: {reason}"[:500], "model")


# --------------------------------------------------------------------------- operations


def _policy_kind(engine: Engine, name: str) -> str:
    with engine.connect() as connection:
        return _model_policy(connection, name).kind


def _model_policy(connection: Connection, name: str) -> PolicyConfig:
    row = connection.execute(select(Policy.kind, Policy.config).where(Policy.name == name)).first()
    if row is None:
        raise ApiError(404, "unknown_policy", f"policy '{name}' does not exist", "name")
    if row.kind not in MODEL_KINDS:
        raise ApiError(409, "not_a_model_policy", f"policy '{name}' is of kind '{row.kind}' and has no model", "name")
    return PolicyConfig.from_dict(row.config)


def list_snapshots(engine: Engine, name: str) -> list[dict[str, Any]]:
    """The kept snapshots of a policy, newest first (without the model bytes)."""
    with engine.connect() as connection:
        _model_policy(connection, name)
        rows = connection.execute(
            select(Snapshot.version, Snapshot.cursor, Snapshot.metrics, Snapshot.created_at,
                   func.length(Snapshot.model).label("size"))
            .where(Snapshot.policy_name == name)
            .order_by(Snapshot.version.desc())
        ).all()
    return [
        {"version": r.version, "cursor": r.cursor, "bytes": r.size, "metrics": r.metrics,
         "created_at": r.created_at.isoformat() if r.created_at else None}
        for r in rows
    ]


def export_model(engine: Engine, name: str, version: int | None = None) -> tuple[int, bytes]:
    """(version, bytes) of the newest snapshot or of ``version``."""
    with engine.connect() as connection:
        _model_policy(connection, name)
        query = select(Snapshot.version, Snapshot.model).where(Snapshot.policy_name == name)
        if version is not None:
            query = query.where(Snapshot.version == version)
        row = connection.execute(query.order_by(Snapshot.version.desc()).limit(1)).first()
    if row is None:
        what = f"version {version}" if version is not None else "any snapshot"
        raise ApiError(404, "unknown_snapshot", f"policy '{name}' has no {what}", "version")
    return int(row.version), bytes(row.model)


def _append(engine: Engine, name: str, model: bytes, metrics: dict[str, Any], keep: int,
            cursor: int | None = None) -> int:
    """A new version after the newest, carrying its cursor (or ``cursor``) and counters."""
    for _attempt in range(3):
        try:
            with engine.begin() as connection:
                _model_policy(connection, name)
                latest = latest_snapshot(connection, name)
                carried = dict(latest.metrics) if latest else {}
                carried.pop("window", None)
                carried.update(metrics, based_on=latest.version if latest else 0,
                               at=datetime.now(UTC).isoformat())
                position = latest.cursor if (latest and cursor is None) else (cursor or 0)
                version = append_snapshot(connection, name, model, position, carried, keep=keep)
                assert version is not None
                # The log past the new cursor will be learned again into this model: the ledger
                # (one row per learned decision) forgets it, or the relearning would be refused.
                connection.execute(delete(LearnedDecision).where(
                    LearnedDecision.policy_name == name, LearnedDecision.seq > position))
                return version
        except IntegrityError:
            continue  # the learner wrote the same version number at the same moment: take the next one
    raise ApiError(409, "concurrent_snapshot", "snapshots are being written concurrently; try again", "name")


def import_model(engine: Engine, name: str, model: bytes, *, keep: int | None = None) -> int:
    """Check ``model`` and make it the policy's newest version; returns the version."""
    with engine.connect() as connection:
        config = _model_policy(connection, name)
    check_model(model, config)
    return _append(engine, name, model, {"source": "import", "trained": True}, keep or _keep())


def reset_policy(engine: Engine, name: str, *, from_start: bool = False, keep: int | None = None) -> int:
    """An untrained model as the newest version; ``from_start`` also sets the cursor to 0 (relearn the log)."""
    with engine.connect() as connection:
        config = _model_policy(connection, name)
    fresh = build_model(config)
    try:
        model = fresh.save()
    finally:
        fresh.close()
    metrics: dict[str, Any] = {"source": "reset", "trained": False}
    if from_start:
        metrics.update(decisions_learned=0, reward_sum=0.0, pv_loss_sum=0.0, average_reward=None, pv_loss=None,
                       late_rewards=0, skipped={}, apprentice={"decisions": 0, "matches": 0, "match_rate": None})
    return _append(engine, name, model, metrics, keep or _keep(), cursor=0 if from_start else None)


def rollback_policy(engine: Engine, name: str, version: int, *, keep: int | None = None) -> int:
    """The model of ``version`` as the newest version (the cursor stays where it is)."""
    _, model = export_model(engine, name, version)
    with engine.connect() as connection:
        metrics = connection.execute(
            select(Snapshot.metrics).where(Snapshot.policy_name == name, Snapshot.version == version)
        ).scalar_one()
    trained = bool((metrics or {}).get("trained", True))
    return _append(engine, name, model, {"source": "rollback", "rolled_back_to": version, "trained": trained},
                   keep or _keep())


def learning_status(engine: Engine, name: str) -> dict[str, Any]:
    """Where the learner of a policy is: newest snapshot, metrics, lag behind the log, late rewards, lease."""
    with engine.connect() as connection:
        _model_policy(connection, name)
        latest = latest_snapshot(connection, name)
        cursor = latest.cursor if latest else 0
        pending = connection.execute(
            select(func.count()).select_from(Decision).where(Decision.policy_name == name, Decision.seq > cursor)
        ).scalar_one()
        lease = connection.execute(
            select(LearnerLease.holder, LearnerLease.expires_at).where(LearnerLease.policy_name == name)
        ).first()
        late = count_late_rewards(connection, name)
    metrics = latest.metrics if latest else {}
    apprentice = metrics.get("apprentice") or {}
    return {
        "policy": name,
        "version": latest.version if latest else 0,
        "cursor": cursor,
        "decisions_pending": pending,
        "late_rewards": late,
        "apprentice_match_rate": apprentice.get("match_rate"),
        "metrics": metrics,
        "lease": {"holder": lease.holder, "expires_at": lease.expires_at.isoformat()} if lease else None,
    }


def _keep() -> int:
    return LearnerSettings.from_env().keep_snapshots


# --------------------------------------------------------------------------- admin API


def _engine(request: AnyRequest) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def _refresh(request: AnyRequest) -> None:
    request.app.state.registry.refresh()


@get("/v1/policies/{name:str}/snapshots", guards=[require_admin], sync_to_thread=True)
def get_snapshots(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    return {"policy": name, "snapshots": list_snapshots(_engine(request), name)}


@get("/v1/policies/{name:str}/model", guards=[require_admin])
async def get_model(request: AnyRequest, name: FromPath[str], version: FromQuery[int | None] = None) -> Response[bytes]:
    found, model = await asyncio.to_thread(export_model, _engine(request), name, version)
    kind = await asyncio.to_thread(_policy_kind, _engine(request), name)
    return Response(model, media_type="application/octet-stream", headers={
        "X-Slotbandit-Version": str(found),
        "Content-Disposition": f'attachment; filename="{name}-v{found}{model_suffix(kind)}"',
    })


@put("/v1/policies/{name:str}/model", guards=[require_admin], request_max_body_size=MAX_MODEL_BYTES, status_code=201)
async def put_model(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    model = await request.body()
    version = await asyncio.to_thread(import_model, _engine(request), name, model)
    await asyncio.to_thread(_refresh, request)
    return {"policy": name, "version": version, "source": "import"}


def _json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}", "body") from error
    if not isinstance(data, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object", "body")
    return data


@post("/v1/policies/{name:str}/reset", guards=[require_admin], status_code=201)
async def post_reset(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    data = _json_object(await request.body())
    from_start = data.get("from_start", False)
    if not isinstance(from_start, bool):
        raise ApiError(422, "invalid_request", "from_start must be true or false", "from_start")
    version = await asyncio.to_thread(reset_policy, _engine(request), name, from_start=from_start)
    await asyncio.to_thread(_refresh, request)
    return {"policy": name, "version": version, "source": "reset", "from_start": from_start}


@post("/v1/policies/{name:str}/rollback", guards=[require_admin], status_code=201)
async def post_rollback(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    target = _json_object(await request.body()).get("version")
    if not isinstance(target, int) or isinstance(target, bool) or target < 1:
        raise ApiError(422, "invalid_request", "version must be a positive integer", "version")
    version = await asyncio.to_thread(rollback_policy, _engine(request), name, target)
    await asyncio.to_thread(_refresh, request)
    return {"policy": name, "version": version, "source": "rollback", "rolled_back_to": target}


@get("/v1/policies/{name:str}/learning", guards=[require_admin], sync_to_thread=True)
def get_learning(request: AnyRequest, name: FromPath[str]) -> dict[str, Any]:
    return learning_status(_engine(request), name)


ROUTES: list[ControllerRouterHandler] = [get_snapshots, get_model, put_model, post_reset, post_rollback, get_learning]


# --------------------------------------------------------------------------- CLI


def _model_command(args: argparse.Namespace, settings: ServiceSettings) -> int:
    from api.db.engine import make_engine, migrate

    if settings.auto_migrate:
        migrate(settings.database_url)
    engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous)
    try:
        action = args.model_command
        if action == "list":
            for snap in list_snapshots(engine, args.policy):
                m = snap["metrics"] or {}
                print(f"v{snap['version']}\tcursor {snap['cursor']}\t{snap['bytes']} bytes\t"
                      f"{m.get('source', '?')}\tlearned {m.get('decisions_learned', 0)}\t{snap['created_at']}")
        elif action == "export":
            version, model = export_model(engine, args.policy, args.version)
            Path(args.out).write_bytes(model)
            print(f"exported {args.policy} v{version} ({len(model)} bytes) to {args.out}")
        elif action == "import":
            version = import_model(engine, args.policy, Path(args.file).read_bytes())
            print(f"imported {args.file} as {args.policy} v{version}")
        elif action == "reset":
            version = reset_policy(engine, args.policy, from_start=args.from_start)
            print(f"{args.policy} reset to untrained as v{version}" + (" (relearning from the start of the log)" if args.from_start else ""))
        elif action == "rollback":
            version = rollback_policy(engine, args.policy, args.version)
            print(f"{args.policy} rolled back to the model of v{args.version} as v{version}")
        return 0
    except ApiError as error:
        print(f"error: {error.detail}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def add_commands(subparsers: Any, command: Callable[[str], Callable[[Any], Any]]) -> None:
    model = subparsers.add_parser("model", help="list, export, import, reset or roll back a policy's model")
    actions = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the kept snapshots")
    export = actions.add_parser("export", help="write a snapshot's model bytes to a file")
    export.add_argument("--version", type=int, help="default: the newest")
    export.add_argument("--out", required=True)
    imported = actions.add_parser("import", help="check a model file and make it the newest version")
    imported.add_argument("file")
    reset = actions.add_parser("reset", help="start the policy over from an untrained model")
    reset.add_argument("--from-start", action="store_true", help="also relearn the whole decision log")
    rollback = actions.add_parser("rollback", help="serve and learn on from an earlier version's model")
    rollback.add_argument("--version", type=int, required=True)
    for parser in (listing, export, imported, reset, rollback):
        parser.add_argument("--policy", required=True)
    command("model")(_model_command)
