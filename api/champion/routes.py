"""The champion-and-challenger admin API (admin key)::

    GET    /v1/slots/{slot}/challengers                the serving policy and its challengers, with metrics
    PUT    /v1/slots/{slot}/challengers/{name}         add or change one: {"kind": "linear", "linear": {...}}
    DELETE /v1/slots/{slot}/challengers/{name}         remove it (with its snapshots)
    POST   /v1/slots/{slot}/auto-optimize/run          run now: {"mode"?: "dry-run" | "apply"}
    GET    /v1/slots/{slot}/revisions                  promotions, recommendations, rollbacks, newest first
    POST   /v1/revisions/{id}/rollback                 undo a promotion (the newest of its slot)
    GET    /v1/slots/{slot}/holdout[?since=ISO]        the lift of personalization against the holdout

The settings (``holdout_share``, ``auto_optimize``) are fields of ``PUT /v1/slots/{slot}``. Revisions
made through the API name the admin key's id as their actor (``key:<id>``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath, FromQuery
from sqlalchemy import Engine, select

from api.auth import hash_key, presented_key, require_admin
from api.champion.challengers import (
    delete_challenger,
    list_challengers,
    put_challenger,
    serving_policy,
)
from api.champion.holdout import holdout_lift
from api.champion.optimize import claim_slot, release_slot, run_auto_optimize
from api.champion.revisions import list_revisions, rollback
from api.champion.schemas import RunIn
from api.db.models import ApiKey
from api.errors import ApiError
from api.schemas import decode_request
from api.state import AppState, ProvidedAppState

__all__ = ["ROUTES", "actor_of"]


def actor_of(engine: Engine, request: Request) -> str:  # type: ignore[type-arg]
    """``key:<id>`` of the admin key that made the request, or of the dashboard session's key (the
    guard has checked either)."""
    key = presented_key(request.headers)
    if key and key.startswith("s1."):  # a session: s1.<key id>.<expiry>.<signature>
        return f"key:{key.split('.')[1]}"
    with engine.connect() as connection:
        key_id = connection.execute(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key or ""))).scalar()
    return f"key:{key_id}" if key_id is not None else "key:unknown"


@get("/v1/slots/{slot:str}/challengers", guards=[require_admin], sync_to_thread=True)
def get_challengers(app_state: ProvidedAppState, slot: FromPath[str]) -> dict[str, Any]:
    return list_challengers(app_state.engine, slot)


@put("/v1/slots/{slot:str}/challengers/{name:str}", guards=[require_admin])
async def put_challenger_route(request: Request, app_state: ProvidedAppState, slot: FromPath[str],  # type: ignore[type-arg]
                               name: FromPath[str]) -> Response[dict[str, Any]]:
    body, created = await asyncio.to_thread(put_challenger, app_state.engine, slot, name, await request.body())
    return Response(body, status_code=201 if created else 200)


@delete("/v1/slots/{slot:str}/challengers/{name:str}", guards=[require_admin], status_code=200, sync_to_thread=True)
def delete_challenger_route(app_state: ProvidedAppState, slot: FromPath[str], name: FromPath[str]) -> dict[str, Any]:
    return delete_challenger(app_state.engine, slot, name)


def _run_now(state: AppState, slot: str, mode: str | None, actor: str) -> dict[str, Any]:
    with state.engine.connect() as connection:
        serving_policy(connection, slot)  # 404 for an unknown slot before anything is claimed
    if not claim_slot(state.engine, slot, every_s=None):
        raise ApiError(409, "auto_optimize_running", f"auto-optimize of slot '{slot}' is running in another worker",
                       "slot")
    outcome: dict[str, Any] = {"outcome": "failed"}
    try:
        outcome = run_auto_optimize(state.engine, slot, actor=actor, mode=mode)
    finally:
        release_slot(state.engine, slot, outcome)
    if outcome.get("outcome") == "promoted":
        state.registry.refresh()
    return outcome


@post("/v1/slots/{slot:str}/auto-optimize/run", guards=[require_admin], status_code=200)
async def post_run(request: Request, app_state: ProvidedAppState, slot: FromPath[str]) -> dict[str, Any]:  # type: ignore[type-arg]
    body: RunIn = decode_request(await request.body(), RunIn)
    actor = await asyncio.to_thread(actor_of, app_state.engine, request)
    return await asyncio.to_thread(_run_now, app_state, slot, body.mode, actor)


@get("/v1/slots/{slot:str}/revisions", guards=[require_admin], sync_to_thread=True)
def get_revisions(app_state: ProvidedAppState, slot: FromPath[str]) -> dict[str, Any]:
    with app_state.engine.connect() as connection:
        serving_policy(connection, slot)
    return {"slot": slot, "revisions": list_revisions(app_state.engine, slot)}


@post("/v1/revisions/{revision_id:int}/rollback", guards=[require_admin], status_code=201)
async def post_rollback(request: Request, app_state: ProvidedAppState, revision_id: FromPath[int]) -> dict[str, Any]:  # type: ignore[type-arg]
    actor = await asyncio.to_thread(actor_of, app_state.engine, request)
    result = await asyncio.to_thread(rollback, app_state.engine, revision_id, actor)
    await asyncio.to_thread(app_state.registry.refresh)
    return result


@get("/v1/slots/{slot:str}/holdout", guards=[require_admin], sync_to_thread=True)
def get_holdout(app_state: ProvidedAppState, slot: FromPath[str], since: FromQuery[str | None] = None) -> dict[str, Any]:
    from api.offline import parse_time

    return holdout_lift(app_state.engine, slot, since=parse_time(since, "since"))


ROUTES = [get_challengers, put_challenger_route, delete_challenger_route, post_run, get_revisions, post_rollback,
          get_holdout]
