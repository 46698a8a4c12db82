"""The experiments admin API (``/v1/experiments``) and the beacon routes of the browser snippet.

Beacons (the browser snippet)
    ``navigator.sendBeacon`` cannot send an Authorization header. Every
    decision (``POST /v1/slots/{slot}/decide``) carries
    ``token = HMAC-SHA256(secret, "beacon" 0x00 event_id)``
    (128 bits hex); ``POST /v1/beacon/{event_id}/activate?t=TOKEN`` and
    ``POST /v1/beacon/{event_id}/reward?t=TOKEN`` (text/plain JSON body
    ``{"value": v, "reward_id": "click"}``) accept that token for that event only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import get, post
from litestar.params import FromPath, FromQuery
from litestar.types import ControllerRouterHandler

from api import hot_path
from api.auth import check_event_token, require_admin
from api.experiments.lifecycle import (
    create_experiment,
    experiment_dict,
    list_experiments,
    start_experiment,
    stop_experiment,
)
from api.state import AnyRequest, AppState, ProvidedAppState

__all__ = ["ROUTES"]


def _check_token(state: AppState, event_id: str, token: str | None) -> None:
    check_event_token(state.decider.secret, event_id, token)


@post("/v1/experiments", guards=[require_admin], status_code=201)
async def post_experiment(request: AnyRequest, app_state: ProvidedAppState) -> dict[str, Any]:
    return await asyncio.to_thread(create_experiment, app_state, await request.body())


@get("/v1/experiments", guards=[require_admin], sync_to_thread=True)
def get_experiments(app_state: ProvidedAppState, slot: FromQuery[str | None] = None) -> dict[str, Any]:
    return {"experiments": list_experiments(app_state.engine, slot)}


@get("/v1/experiments/{experiment_id:int}", guards=[require_admin], sync_to_thread=True)
def get_experiment(app_state: ProvidedAppState, experiment_id: FromPath[int]) -> dict[str, Any]:
    return experiment_dict(app_state.engine, experiment_id)


@post("/v1/experiments/{experiment_id:int}/start", guards=[require_admin], status_code=200, sync_to_thread=True)
def post_start(app_state: ProvidedAppState, experiment_id: FromPath[int]) -> dict[str, Any]:
    return start_experiment(app_state, experiment_id)


@post("/v1/experiments/{experiment_id:int}/stop", guards=[require_admin], status_code=200, sync_to_thread=True)
def post_stop(app_state: ProvidedAppState, experiment_id: FromPath[int]) -> dict[str, Any]:
    return stop_experiment(app_state, experiment_id)


def _beacon_body(raw: bytes) -> bytes:
    return raw.strip() or b"{}"


@post("/v1/beacon/{event_id:str}/activate", status_code=200)
async def beacon_activate(app_state: ProvidedAppState, event_id: FromPath[str],
                          t: FromQuery[str | None] = None) -> dict[str, Any]:
    _check_token(app_state, event_id, t)
    return await hot_path.record_activation(app_state, event_id)


@post("/v1/beacon/{event_id:str}/reward", status_code=200)
async def beacon_reward(request: AnyRequest, app_state: ProvidedAppState, event_id: FromPath[str],
                        t: FromQuery[str | None] = None) -> dict[str, Any]:
    _check_token(app_state, event_id, t)
    return await hot_path.record_reward(app_state, event_id, _beacon_body(await request.body()))


ROUTES: list[ControllerRouterHandler] = [post_experiment, get_experiments, get_experiment, post_start, post_stop,
          beacon_activate, beacon_reward]
