"""The Litestar application: v1 decision API, admin API, health and metrics.

Thin shell: handlers decode and bound the request, call ``api.hot_path`` (decide,
activate, reward) / ``api.db.queries`` and turn errors into 4xx responses
(``api.errors``). :class:`SlotbanditApp` answers the hot calls of servers straight
from ASGI before Litestar routes anything; the lifespan builds the shared state
(engine, registry, log writer, decider), runs the start-up hooks of the
:data:`FEATURES`, starts the pollers, the WAL checkpointer and the features' jobs,
and freezes start-up objects out of the garbage collector's sight.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import sys
import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, delete, get, post, put
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.logging.config import LoggingConfig
from litestar.params import FromPath
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy import select

from api import (
    dashboard,
    experiments,
    keys,
    learner,
    model_admin,
    offline,
    openapi,
    reports,
    schemas,
    simulate,
)
from api.auth import KeyStore, require_admin, require_decide
from api.champion.feature import FEATURE as CHAMPION
from api.champion.optimize import auto_optimize_setting
from api.db import queries
from api.db.engine import checkpoint, make_engine, migrate
from api.db.models import Policy, Slot
from api.decide import Decider, unit_key
from api.errors import ApiError, escape_log_records, exception_handlers
from api.features import Feature
from api.hot_path import (
    activate_event,
    existing_event,
    fast_call,
    hot_route,
    record_reward,
    serve_decision,
)
from api.log_writer import LogWriter
from api.metrics import Metrics
from api.periodic import Periodic
from api.personalizer import FEATURE as PERSONALIZER
from api.registry import Registry
from api.settings import ServiceSettings, load_secret
from api.state import DEPENDENCIES, AppState
from bandits.choosers import build_chooser, check_against_catalog
from bandits.context import RequestFacts, derive_context
from bandits.features import validate_features
from bandits.policies import PolicyConfig

__all__ = ["FEATURES", "create_app"]

log = logging.getLogger("slotbandit.app")


_decode = schemas.decode_request


def _state(request: Request) -> State:  # type: ignore[type-arg]
    return request.app.state


# -- decision API ----------------------------------------------------------------------


@post("/v1/slots/{slot:str}/decide", guards=[require_decide], status_code=200)
async def decide(request: Request, slot: FromPath[str]) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    """Choose a block for the slot and log the decision (``api.hot_path``; requests without an
    ``Origin`` header are served there straight from ASGI)."""
    client = request.client.host if request.client else None
    return Response(await serve_decision(_state(request), slot, await request.body(), request.headers, client))


@post("/v1/events/{event_id:str}/activate", guards=[require_decide], status_code=200)
async def activate(request: Request, event_id: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    """The block of the event was really shown (``api.hot_path``)."""
    return await activate_event(_state(request), event_id, await request.body())


@post("/v1/events/{event_id:str}/reward", guards=[require_decide], status_code=200)
async def reward(request: Request, event_id: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    """A reward of the event, stored before the answer (``api.hot_path``)."""
    return await record_reward(_state(request), event_id, await request.body())


# -- admin API -------------------------------------------------------------------------


def _policy_values(name: str, request: schemas.PolicyRequest) -> PolicyConfig:
    config: PolicyConfig = schemas.policy_config(request)
    if config.kind == "rules":  # validate now: a stored invalid rule list would break every worker's reload
        build_chooser(config)
    return config


def _reload(state: State) -> None:
    state.registry.refresh()


@put("/v1/slots/{slot:str}", guards=[require_admin])
async def put_slot(request: Request, slot: FromPath[str]) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    return await asyncio.to_thread(_put_slot, _state(request), slot, await request.body())


def _put_slot(state: State, slot: str, body: bytes) -> Response[dict[str, Any]]:
    if not schemas_name_ok(slot):
        raise ApiError(422, "invalid_request", "slot names are 1-128 of A-Z a-z 0-9 . _ : -", "slot")
    payload: schemas.SlotRequest = _decode(body, schemas.SlotRequest)
    values: dict[str, Any] = {}
    for key in ("default_block", "timezone", "reward_window_s", "default_reward", "reward_aggregation",
                "learning_mode", "require_activation", "holdout_share"):
        value = getattr(payload, key)
        if value is not None:
            values[key] = value
    if payload.timezone is not None:
        try:
            zoneinfo.ZoneInfo(payload.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as error:
            raise ApiError(422, "invalid_request", f"unknown IANA time zone '{payload.timezone}'", "timezone") from error
    if payload.reward_range is not None:
        low, high = payload.reward_range
        if not low < high:
            raise ApiError(422, "invalid_request", "reward_range must be [min, max] with min < max", "reward_range")
        values["reward_min"], values["reward_max"] = low, high
    if payload.auto_optimize is not None:  # api.champion: its candidate configurations checked here
        values["auto_optimize"] = auto_optimize_setting(payload.auto_optimize)
    with state.engine.begin() as connection:
        existing = connection.execute(select(Slot.id, Slot.reward_min, Slot.reward_max, Slot.default_reward)
                                      .where(Slot.name == slot)).first()
        # once a slot has blocks its default is one of them (a new slot may name the block it adds first)
        active = queries.active_block_ids(connection, existing.id) if existing else set()
        if payload.default_block is not None and active and payload.default_block not in active:
            raise ApiError(422, "invalid_request", f"default_block '{payload.default_block}' is not an active block "
                           f"of slot '{slot}' (add the block first)", "default_block")
        low = values.get("reward_min", existing.reward_min if existing else 0.0)
        high = values.get("reward_max", existing.reward_max if existing else 1.0)
        default_reward = values.get("default_reward", existing.default_reward if existing else 0.0)
        if not low <= default_reward <= high:
            raise ApiError(422, "invalid_request", "default_reward must lie within reward_range", "default_reward")
        if isinstance(payload.policy, str):
            if connection.execute(select(Policy.id).where(Policy.name == payload.policy,
                                                          Policy.source.is_(None))).first() is None:
                raise ApiError(422, "invalid_request", f"policy '{payload.policy}' does not exist (or is a "
                               "challenger, which never serves)", "policy")
            values["policy_name"] = payload.policy
        elif isinstance(payload.policy, schemas.PolicyRequest) or existing is None:
            config = _policy_values(slot, payload.policy) if payload.policy else PolicyConfig()
            catalog = state.registry.slots[slot].by_id if slot in state.registry.slots else {}
            if config.kind in ("rules", "fixed"):
                check_against_catalog(config, list(catalog), "policy")
            queries.upsert_policy(connection, slot, config.kind, config.to_dict())
            values["policy_name"] = slot
        created = queries.upsert_slot(connection, slot, values)
    _reload(state)
    return Response(state.registry.slots[slot].to_dict(), status_code=201 if created else 200)


def schemas_name_ok(name: str) -> bool:
    try:
        msgspec.convert(name, schemas.Name)
    except msgspec.ValidationError:
        return False
    return True


@get("/v1/slots", guards=[require_admin])
async def list_slots(request: Request) -> dict[str, Any]:  # type: ignore[type-arg]
    await asyncio.to_thread(_reload, _state(request))  # admin reads see every worker's writes
    return {"slots": [s.to_dict() for s in sorted(_state(request).registry.slots.values(), key=lambda s: s.name)]}


@get("/v1/slots/{slot:str}", guards=[require_admin])
async def get_slot(request: Request, slot: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    await asyncio.to_thread(_reload, _state(request))
    return _state(request).decider.slot(slot).to_dict()


@put("/v1/slots/{slot:str}/blocks/{block:str}", guards=[require_admin])
async def put_block(request: Request, slot: FromPath[str], block: FromPath[str]) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    return await asyncio.to_thread(_put_block, _state(request), slot, block, await request.body())


def _put_block(state: State, slot: str, block: str, body: bytes) -> Response[dict[str, Any]]:
    slot_state = state.decider.slot(slot)
    if not 1 <= len(block) <= state.settings.max_id_length:
        raise ApiError(422, "invalid_request", f"block ids are 1..{state.settings.max_id_length} characters", "block")
    payload: schemas.BlockRequest = _decode(body, schemas.BlockRequest)
    features = validate_features(
        payload.features, field="features", max_features=state.settings.max_block_features,
        max_name_length=64, max_value_length=state.settings.max_string_length,
    )
    with state.engine.begin() as connection:
        default = connection.execute(select(Slot.default_block).where(Slot.id == slot_state.id)).scalar_one()
        if default is not None and block != default and not queries.active_block_ids(connection, slot_state.id):
            raise ApiError(422, "invalid_request", f"add the slot's default block '{default}' first "
                           "(or change its default_block)", "block")
        count = len(slot_state.candidates)
        if block not in slot_state.by_id and count >= state.settings.max_candidates:
            raise ApiError(422, "invalid_request", f"a slot holds at most {state.settings.max_candidates} active blocks", "block")
        created, version = queries.upsert_block(connection, slot_state.id, block, features)
    _reload(state)
    return Response({"slot": slot, "block": {"id": block, "features": features}, "catalog_version": version},
                    status_code=201 if created else 200)


@delete("/v1/slots/{slot:str}/blocks/{block:str}", guards=[require_admin], sync_to_thread=True, status_code=200)
def delete_block(request: Request, slot: FromPath[str], block: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    state = _state(request)
    slot_state = state.decider.slot(slot)
    with state.engine.begin() as connection:
        default = connection.execute(select(Slot.default_block).where(Slot.id == slot_state.id)).scalar_one()
        if block == default:
            raise ApiError(409, "default_block_in_use", f"'{block}' is the slot's default block: change the slot's "
                           "default_block first", "block")
        version = queries.deactivate_block(connection, slot_state.id, block)
    if version is None:
        raise ApiError(404, "unknown_block", f"slot '{slot}' has no block '{block}'", "block")
    _reload(state)
    return {"slot": slot, "block": block, "active": False, "catalog_version": version}


@put("/v1/policies/{name:str}", guards=[require_admin])
async def put_policy(request: Request, name: FromPath[str]) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    return await asyncio.to_thread(_put_policy, _state(request), name, await request.body())


def _put_policy(state: State, name: str, body: bytes) -> Response[dict[str, Any]]:
    if not schemas_name_ok(name):
        raise ApiError(422, "invalid_request", "policy names are 1-128 of A-Z a-z 0-9 . _ : -", "name")
    payload: schemas.PolicyRequest = _decode(body, schemas.PolicyRequest)
    config = _policy_values(name, payload)
    with state.engine.begin() as connection:
        created = queries.upsert_policy(connection, name, config.kind, config.to_dict())
    _reload(state)
    return Response(_policy_dict(state, name), status_code=201 if created else 200)


def _policy_dict(state: State, name: str) -> dict[str, Any]:
    policy = state.registry.policies.get(name)
    if policy is None:
        raise ApiError(404, "unknown_policy", f"policy '{name}' does not exist", "name")
    return {"name": name, **policy.config.to_dict(), "model_version": policy.model_version,
            "trained": policy.chooser.trained}


@get("/v1/policies", guards=[require_admin])
async def list_policies(request: Request) -> dict[str, Any]:  # type: ignore[type-arg]
    state = _state(request)
    await asyncio.to_thread(_reload, state)
    return {"policies": [_policy_dict(state, name) for name in sorted(state.registry.policies)]}


@get("/v1/policies/{name:str}", guards=[require_admin])
async def get_policy(request: Request, name: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    await asyncio.to_thread(_reload, _state(request))
    return _policy_dict(_state(request), name)


@get("/v1/events/{event_id:str}", guards=[require_admin], sync_to_thread=True)
def get_event(request: Request, event_id: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    state = _state(request)
    row = existing_event(state, event_id)
    with state.engine.connect() as connection:
        rewards = queries.rewards_of(connection, event_id)
        activated = queries.activated_at(connection, event_id)
    keep = ("event_id", "policy_name", "policy_kind", "model_version", "trained", "learning_mode", "catalog_version",
            "candidate_ids", "pmf", "chosen_index", "chosen_block", "probability", "context", "experiment_id", "arm",
            "consent", "deferred", "fallback", "fallback_reason")
    data = {k: row[k] for k in keep}
    data["created_at"] = row["created_at"].isoformat() if row.get("created_at") else None
    data["activated_at"] = activated.isoformat() if activated else None
    data["rewards"] = rewards
    return data


@delete("/v1/units/{unit_id:str}", guards=[require_admin], sync_to_thread=True, status_code=200)
def delete_unit(request: Request, unit_id: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    state = _state(request)
    if not 1 <= len(unit_id) <= state.settings.max_id_length:
        raise ApiError(422, "invalid_request", "unit ids are 1..256 characters", "unit_id")
    touched = queries.erase_unit(state.engine, unit_key(state.decider.secret, unit_id))
    return {"unit_erased": True, "decisions": touched}


# -- operations ------------------------------------------------------------------------


@get("/health", sync_to_thread=True)
def health(request: Request) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    state = _state(request)
    try:
        with state.engine.connect() as connection:
            connection.execute(select(1))
        ok = True
    except Exception:  # noqa: BLE001
        ok = False
    # no names: it answers without a key (model versions: GET /v1/policies, admin)
    body = {"status": "ok" if ok else "database_unavailable"}
    return Response(body, status_code=200 if ok else 503)


@get("/metrics")
async def metrics(request: Request) -> Response[bytes]:  # type: ignore[type-arg]
    # Litestar adds "; charset=utf-8" to a text type itself: once is enough
    return Response(_state(request).metrics.exposition(), media_type=CONTENT_TYPE_LATEST.replace("; charset=utf-8", ""))


# -- application -----------------------------------------------------------------------


# The features of the service, by name: the app takes their routes, hooks and jobs, the
# command line their subcommands. Packages declare their own FEATURE; the modules that are
# not folders yet are declared here from their parts.
FEATURES: tuple[Feature, ...] = (
    Feature("learner", startup=learner.startup, shutdown=learner.shutdown, add_commands=learner.add_commands),
    Feature("model_admin", routes=model_admin.ROUTES, add_commands=model_admin.add_commands),
    Feature("simulate", add_commands=simulate.add_commands),
    Feature("offline", routes=offline.ROUTES, startup=offline.startup, shutdown=offline.shutdown,
            add_commands=offline.add_commands),
    experiments.FEATURE,
    reports.FEATURE,
    CHAMPION,
    Feature("dashboard", routes=dashboard.ROUTES),
    keys.FEATURE,
    PERSONALIZER,
)


class SlotbanditApp(Litestar):
    """Litestar, with decide, activate and reward calls from servers answered before routing
    (``api.hot_path``)."""

    fast_path = True

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.fast_path and scope["type"] == "http":
            route = hot_route(scope)
            if route is not None and "decider" in self.state:
                await fast_call(self.state, scope, receive, send, route)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: ServiceSettings | None = None) -> Litestar:
    settings = settings or ServiceSettings.from_env()
    escape_log_records()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # The log writer thread needs the GIL briefly per commit while the event loop is busy;
        # with the default 5 ms switch interval every commit (and so every response) waited for
        # it. 0.5 ms cut the p50 of a decision under load several times over (benchmarks/decide.py).
        sys.setswitchinterval(settings.switch_interval_ms / 1000.0)
        if settings.auto_migrate:
            await asyncio.to_thread(migrate, settings.database_url)
        engine = make_engine(settings.database_url, synchronous=settings.sqlite_synchronous, background_checkpoint=True)
        metrics_ = Metrics(multiprocess=settings.metrics_dir is not None)
        registry = Registry(engine, on_model=lambda name, v: metrics_.model_version.labels(name).set(v))
        await asyncio.to_thread(registry.refresh)
        # Load the User-Agent regexes and zone list now, not on the first request (~0.2 s).
        derive_context(RequestFacts(user_agent="Mozilla/5.0", timezone="UTC"), now=datetime.now(UTC))
        commit_in_loop = settings.commit_in_loop and engine.dialect.name == "sqlite" and settings.sqlite_synchronous == "NORMAL"
        def on_batch(rows: int, path: str, seconds: float) -> None:
            metrics_.log_batch.observe(rows)
            metrics_.log_commit_seconds.labels(path).observe(seconds)

        writer = LogWriter(engine, gather_ms=settings.group_commit_ms, on_batch=on_batch, commit_in_loop=commit_in_loop)
        secret = load_secret(settings)
        decider = Decider(settings, secret, registry,
                          on_fallback=lambda slot, reason: metrics_.fallbacks.labels(slot, reason).inc())
        app_state = AppState(settings=settings, engine=engine, metrics=metrics_, registry=registry, writer=writer,
                             decider=decider, key_store=KeyStore(engine, secret=secret))
        # the typed state for handlers (api.state), and its parts in the untyped bag for the modules
        # that still read them there
        app.state.update(app_state=app_state, settings=settings, engine=engine, metrics=metrics_, registry=registry,
                         writer=writer, decider=decider, key_store=app_state.key_store)
        for feature in FEATURES:
            if feature.startup is not None:
                await feature.startup(app)

        # Everything loaded so far (libraries, catalog, models) lives as long as the process: move
        # it out of the collector's sight. A full collection otherwise walked all of it, a pause of
        # 50-150 ms under load that set the p99 of a decision (benchmarks/decide.py).
        gc.collect()
        gc.freeze()
        poller = Periodic("registry-refresh", settings.reload_interval_s, registry.refresh).start()
        model_poller = Periodic("model-refresh", settings.model_poll_interval_s, registry.refresh_models).start()
        checkpointer = (Periodic("wal-checkpoint", settings.checkpoint_interval_s, lambda: checkpoint(engine)).start()
                        if engine.dialect.name == "sqlite" else None)
        jobs = [Periodic(job.name, job.interval_s(settings), functools.partial(job.run, app_state)).start()
                for feature in FEATURES for job in feature.jobs]
        try:
            yield
        finally:
            gc.unfreeze()  # an app that stops (tests, the demo) leaves its objects collectable
            await asyncio.to_thread(poller.stop)
            await asyncio.to_thread(model_poller.stop)
            if checkpointer is not None:
                await asyncio.to_thread(checkpointer.stop)
            for job in reversed(jobs):
                await asyncio.to_thread(job.stop)
            for feature in reversed(FEATURES):
                if feature.shutdown is not None:
                    await feature.shutdown(app)
            await asyncio.to_thread(writer.close)
            engine.dispose()

    # Root at WARNING: Litestar's default INFO root would print every httpx call of the demo.
    logging_config = LoggingConfig(root={"level": "WARNING", "handlers": ["queue_listener"]},
                                   loggers={"slotbandit": {"level": "INFO", "handlers": ["queue_listener"], "propagate": False}},
                                   log_exceptions="never")
    cors = CORSConfig(allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                      allow_headers=["authorization", "content-type", "x-api-key"]) if settings.cors_origins else None
    app = SlotbanditApp(
        route_handlers=[decide, activate, reward, put_slot, list_slots, get_slot, put_block, delete_block, put_policy,
                        list_policies, get_policy, get_event, delete_unit, health, metrics,
                        *[route for feature in FEATURES for route in feature.routes]],
        lifespan=[lifespan],
        dependencies=DEPENDENCIES,
        before_request=schemas.guard_request,
        exception_handlers=exception_handlers,  # type: ignore[arg-type]
        cors_config=cors,
        logging_config=logging_config,
        openapi_config=openapi.config(),
        request_max_body_size=settings.max_body_bytes,
    )
    app.fast_path = settings.fast_path
    return app
