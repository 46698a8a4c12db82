"""The API keys admin API: ``GET/POST /v1/keys``, ``POST /v1/keys/{id}/revoke``,
``POST /v1/keys/{id}/rotate`` (the logic, shared with ``slotbandit keys``, is ``api.auth``'s), and
the job that makes every worker forget revoked keys within a second."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get, post
from litestar.params import FromPath
from litestar.response import Response

from api import schemas
from api.auth import create_key, list_keys, require_admin, revoke_key, rotate_key
from api.features import Feature, Job
from api.state import AppState, ProvidedAppState

__all__ = ["FEATURE"]


@get("/v1/keys", guards=[require_admin], sync_to_thread=True)
def get_keys(app_state: ProvidedAppState) -> dict[str, Any]:
    return {"keys": list_keys(app_state.engine)}


@post("/v1/keys", guards=[require_admin], status_code=201)
async def post_key(request: Request, app_state: ProvidedAppState) -> dict[str, Any]:  # type: ignore[type-arg]
    """Create a key; the answer holds it, once (only its hash is stored)."""
    payload: schemas.KeyRequest = schemas.decode_request(await request.body(), schemas.KeyRequest)
    key = await asyncio.to_thread(create_key, app_state.engine, payload.scope, payload.name)
    listed = await asyncio.to_thread(list_keys, app_state.engine)
    return {**listed[-1], "key": key}


@post("/v1/keys/{key_id:int}/revoke", guards=[require_admin], status_code=200)
async def post_revoke(app_state: ProvidedAppState, key_id: FromPath[int]) -> dict[str, Any]:
    revoked = await asyncio.to_thread(revoke_key, app_state.engine, key_id)
    await asyncio.to_thread(app_state.key_store.forget_revoked)  # this worker at once, the others within 1 s
    return revoked


@post("/v1/keys/{key_id:int}/rotate", guards=[require_admin], status_code=201)
async def post_rotate(request: Request, app_state: ProvidedAppState,  # type: ignore[type-arg]
                      key_id: FromPath[int]) -> Response[dict[str, Any]]:
    """A new key of the same scope and name; the old one is revoked after ``grace_s`` seconds."""
    payload: schemas.RotateRequest = schemas.decode_request(await request.body(), schemas.RotateRequest)
    new, key = await asyncio.to_thread(rotate_key, app_state.engine, key_id, grace_s=payload.grace_s)
    await asyncio.to_thread(app_state.key_store.forget_revoked)
    return Response({**new, "key": key}, status_code=201)


def _forget_revoked(state: AppState) -> None:
    state.key_store.forget_revoked()


FEATURE = Feature(
    "keys",
    routes=[get_keys, post_key, post_revoke, post_rotate],
    jobs=[Job("key-revocations", _forget_revoked, interval_s=lambda settings: 1.0)],
)
