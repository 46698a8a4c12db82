"""The hot endpoints, one implementation each, reached two ways: decide
(``POST /v1/slots/{slot}/decide``), activate and reward
(``POST /v1/events/{event_id}/activate|reward``).

:func:`serve_decision`, :func:`record_activation` and :func:`record_reward`
are the endpoints: decode and bound the body, act, await the log commit, build
the response. The Litestar routes in ``api.app`` call them, so they are in the
OpenAPI schema and answer browser calls with Litestar's CORS handling (the
beacon routes of ``api.experiments.routes`` call the event ones too). :func:`fast_call`
calls them straight from ASGI, ahead of Litestar's router, for every request
without an ``Origin`` header (servers, SDKs, load): a profile of the server
under load put a fifth of a decision's CPU in Litestar's routing, guard (it
copies the route handler per call), parameter extraction and response objects.
Both ways share auth (``api.auth.authorize``), the body bound, the error body
``{"error", "field", "detail"}`` and the metrics; tests run every case of the
decision API through both.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeVar

import msgspec
from sqlalchemy.exc import IntegrityError

from api import schemas
from api.auth import DECIDE_SCOPES, authorize, check_same_origin, presented_key
from api.db import queries
from api.db.catalog import Logged, decision_candidates
from api.db.models import utcnow
from api.decide import Decider, response_from_row
from api.errors import ApiError, as_api_error, count, is_database_outage, log_unavailable
from api.log_writer import LogWriter
from api.metrics import Metrics
from api.registry import SlotState

__all__ = ["activate_event", "existing_event", "fast_call", "find_decision", "hot_route", "record_activation",
           "record_reward", "serve_decision"]

log = logging.getLogger("slotbandit.app")

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ROUTES = re.compile(r"^/v1/(?:slots/(?P<slot>[^/]+)/decide|events/(?P<event>[^/]+)/(?P<action>activate|reward))$")

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


async def serve_decision(state: Any, slot: str, body: bytes, headers: Mapping[str, str],
                         client: str | None) -> dict[str, Any]:
    """Decide for ``slot``, log the decision, return the response body (raises ApiError).

    When the database cannot be reached (to find a repeated event id or to commit the decision)
    the answer is a 503 ``log_unavailable`` naming the slot's default block, never a 500.
    """
    started = time.perf_counter()
    decider: Decider = state.decider
    writer: LogWriter = state.writer
    request = schemas.decode_request(body, schemas.DecideRequest)
    held = decider.registry.slots.get(slot)
    slot_state = held if held is not None else await asyncio.to_thread(decider.slot, slot)
    if not slot_state.candidates and request.candidates is None:  # blocks just added on another worker?
        fresh = await asyncio.to_thread(decider.registry.read_through, slot, slot_state)
        slot_state = fresh or slot_state
    if request.event_id is not None:
        stored = writer.pending(request.event_id) or await _event_log(
            asyncio.to_thread(find_decision, state, request.event_id), slot_state)
        if stored is not None:
            if stored["slot_id"] != slot_state.id:
                raise ApiError(409, "event_id_conflict", "this event id belongs to another slot", "event_id")
            features = await _event_log(asyncio.to_thread(_candidate_features, state, stored), slot_state)
            return response_from_row(stored, features, slot, decider.secret)
    row = decider.decide(slot_state, request, decider.facts(request, headers, client))
    try:
        if state.settings.commit_before_response:
            await writer.write(row)
        else:
            writer.submit(row)
    except IntegrityError as error:
        # a concurrent repeat of the same event id won the race: answer with it
        stored = await _event_log(asyncio.to_thread(find_decision, state, row["event_id"]), slot_state)
        if stored is None:
            raise log_unavailable(slot_state.default_block, decide=True) from error
        row = stored
    except Exception as error:  # noqa: BLE001 - the log cannot take the decision: the caller serves its default
        log.warning("decision log unavailable on slot %s: %s", slot, _one_line(error))
        raise log_unavailable(slot_state.default_block, decide=True) from error
    inline = row["inline_candidates"]
    features = {c["id"]: c["features"] for c in inline} if inline else slot_state.features_by_id
    metrics: Metrics = state.metrics
    metrics.decisions.labels(slot).inc()
    metrics.decide_latency.observe(time.perf_counter() - started)
    return response_from_row(row, features, slot, decider.secret)


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:300]


async def _event_log(call: Awaitable[T], slot: SlotState | None = None) -> T:
    """Await a read or write of the event log; a database outage becomes 503 ``log_unavailable``
    (naming the slot's default block when it is a decide's)."""
    try:
        return await call
    except Exception as error:
        if not is_database_outage(error):
            raise
        log.warning("event log unavailable%s: %s", f" on slot {slot.name}" if slot else "", _one_line(error))
        raise log_unavailable(slot.default_block if slot else None, decide=slot is not None) from error


def find_decision(state: Any, event_id: str) -> dict[str, Any] | None:
    with state.engine.connect() as connection:
        return queries.find_decision(connection, event_id)


def _candidate_features(state: Any, row: dict[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """The features of a logged decision's candidates by id (``api.db.catalog``)."""
    with state.engine.connect() as connection:
        candidates = decision_candidates(connection, Logged.of(row)) or ()
    return {c.id: dict(c.features) for c in candidates}


def existing_event(state: Any, event_id: str) -> dict[str, Any]:
    """The logged (or committing) decision of ``event_id``; a 4xx when there is none."""
    if len(event_id) > state.settings.max_id_length:
        raise ApiError(422, "invalid_request", "event id too long", "event_id")
    row = state.writer.pending(event_id) or find_decision(state, event_id)
    if row is None:
        raise ApiError(404, "unknown_event", f"no decision with event id '{event_id}'", "event_id")
    return row


async def activate_event(state: Any, event_id: str, body: bytes) -> dict[str, Any]:
    """``POST /v1/events/{event_id}/activate``: the body is optional."""
    if body:
        schemas.decode_request(body, schemas.ActivateRequest)
    return await record_activation(state, event_id)


async def record_activation(state: Any, event_id: str) -> dict[str, Any]:
    """Store an activation of a known event (shared by the API and the browser beacons)."""
    await _event_log(asyncio.to_thread(existing_event, state, event_id))
    # Rides the group commit; the (unique) event id makes a repeat a no-op.
    created = await _event_log(state.writer.append("activation", {"event_id": event_id, "created_at": utcnow()}))
    if created:
        state.metrics.activations.inc()
    return {"event_id": event_id, "activated": True, "duplicate": not created}


def derived_reward_id(value: float) -> str:
    """The id of a reward sent without one: its value (``"value:1.0"``), so a retry of the same
    reward is a duplicate, not a second reward; several rewards of one event need their own ids."""
    return f"value:{float(value)!r}"


def _stored_rewards(state: Any, event_id: str) -> list[tuple[str | None, float]]:
    with state.engine.connect() as connection:
        return queries.reward_values(connection, event_id)


async def record_reward(state: Any, event_id: str, body: bytes) -> dict[str, Any]:
    """Validate and store a reward of a known event (shared by the API and the browser beacons).

    Idempotent per (event, reward id): a repeat with the same value is a ``duplicate``, with
    another value a 409 ``reward_conflict`` (the first value stays); an event takes at most
    ``max_rewards_per_event`` rewards (409 ``reward_limit``), so a beacon token is bounded too.
    """
    payload: schemas.RewardRequest = schemas.decode_request(body, schemas.RewardRequest)
    row = await _event_log(asyncio.to_thread(existing_event, state, event_id))
    slot = state.registry.slot_by_id(row["slot_id"])
    if slot is not None and not slot.reward_min <= payload.value <= slot.reward_max:
        raise ApiError(422, "invalid_request",
                       f"value {payload.value} is outside the slot's reward range [{slot.reward_min}, {slot.reward_max}]",
                       "value")
    reward_id = payload.reward_id if payload.reward_id is not None else derived_reward_id(payload.value)
    rows = await _event_log(asyncio.to_thread(_stored_rewards, state, event_id))
    stored = dict(rows)
    created = False
    if reward_id not in stored:
        if len(rows) >= state.settings.max_rewards_per_event:
            raise ApiError(409, "reward_limit", f"event '{event_id}' already has {len(rows)} rewards, the most "
                           "one event may have", "reward_id")
        created = await _event_log(state.writer.append(
            "reward", {"event_id": event_id, "reward_id": reward_id, "value": payload.value, "created_at": utcnow()}
        ))
        if not created:  # a concurrent call stored it first
            stored = dict(await _event_log(asyncio.to_thread(_stored_rewards, state, event_id)))
    if not created and stored.get(reward_id) != payload.value:
        raise ApiError(409, "reward_conflict", f"reward '{reward_id}' of this event is stored with value "
                       f"{stored.get(reward_id)}; a reward id keeps its first value", "value")
    if created:
        state.metrics.rewards.inc()
    return {"event_id": event_id, "reward_id": reward_id, "stored": True, "duplicate": not created}


# -- the ASGI fast path -------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def hot_route(scope: Scope) -> tuple[str, str] | None:
    """``("decide", slot)``, ``("activate", event_id)`` or ``("reward", event_id)`` when ``scope``
    is a call the fast path serves, else None."""
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    match = _ROUTES.match(scope["path"])
    if match is None or _CONTROL.search(scope["path"]):
        return None  # (control characters: Litestar's request checks answer 404)
    for name, _ in scope["headers"]:
        if name == b"origin":
            return None  # a browser: Litestar's CORS handling answers it
    slot = match.group("slot")
    return ("decide", slot) if slot is not None else (match.group("action"), match.group("event"))


async def _read_body(receive: Receive, limit: int, declared: str | None) -> bytes:
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionError("the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"the body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def fast_call(state: Any, scope: Scope, receive: Receive, send: Send, route: tuple[str, str]) -> None:
    """Serve a :func:`hot_route` call from ASGI; same contract as the Litestar routes."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    try:
        authorize(state.key_store, presented_key(headers), DECIDE_SCOPES)
        check_same_origin("POST", headers)  # the admin cookie alone: only from this origin, only JSON
        body = await _read_body(receive, state.settings.max_body_bytes, headers.get("content-length"))
        kind, name = route
        if kind == "decide":
            client = scope.get("client")
            payload = await serve_decision(state, name, body, headers, client[0] if client else None)
        elif kind == "activate":
            payload = await activate_event(state, name, body)
        else:
            payload = await record_reward(state, name, body)
        status = 200
        extra_headers: dict[str, str] = {}
    except ConnectionError:
        return
    except Exception as exc:  # noqa: BLE001 - answered by api.errors' table, as Litestar's handlers do
        error = as_api_error(exc)
        if error.status == 500:
            log.exception("unhandled error on POST %s", scope["path"])
        count(state.metrics, error)
        status, payload, extra_headers = error.status, error.body(), error.headers
    content = _encode(payload)
    response_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(content)).encode())]
    response_headers += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra_headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": content})

