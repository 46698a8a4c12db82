"""The HTML dashboard (``/dashboard``), the demo page (``/demo``) and the static files (``/static``).

Server-rendered Jinja2 (``api.pages``) with inline SVG charts
(``api.reports.html``): no JavaScript library, no build step, nothing fetched
from a CDN; a report page is one HTML response that reads on a phone (the layout is a single column below 700 px). The only
script on the dashboard updates the live counters every 5 seconds.

Access: the admin key. ``/dashboard/login`` checks it and sets the cookie
``slotbandit_admin`` (Secure, HttpOnly, SameSite=Strict, path ``/``) to a signed
session of that key, never the key itself (``api.auth.KeyStore.open_session``),
which ``api.auth`` accepts like the key until it expires or the key is revoked;
``/dashboard/logout`` clears it. State-changing API calls made with the cookie
alone must come from this origin with JSON bodies (``api.auth.check_same_origin``).
The cookie is ``Secure`` unless the request came over plain HTTP to a
loopback host (local development and tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Response, get, post
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.types import ControllerRouterHandler
from sqlalchemy import func, select

from api.auth import ADMIN_COOKIE, SESSION_S, check_same_origin, session_cookie
from api.champion.holdout import holdout_lift
from api.db.models import Activation, Decision, Reward
from api.experiments import list_experiments
from api.pages import STATIC, environment
from api.reports import render_report_page, report_for
from api.state import AnyRequest, AppState, ProvidedAppState

__all__ = ["ROUTES"]

COOKIE = ADMIN_COOKIE

DASHBOARD_HOLDOUT_DECISIONS = 100_000
"""The overview measures each holdout on at most this many of the slot's newest decisions."""


def _html(text: str, status: int = 200) -> Response[str]:
    return Response(text, media_type="text/html; charset=utf-8", status_code=status,
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "same-origin"})


def _admin(request: AnyRequest, state: AppState) -> bool:
    key = session_cookie(request.headers)
    if not key:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
    return key is not None and key != "" and state.key_store.scope_of(key) == "admin"


def _login_redirect() -> Redirect:
    return Redirect("/dashboard/login", status_code=303)


def _counters(state: AppState) -> dict[str, dict[str, int]]:
    with state.engine.connect() as connection:
        decisions = dict(connection.execute(select(Decision.slot_id, func.count()).group_by(Decision.slot_id)).all())
        rewards = dict(connection.execute(select(Decision.slot_id, func.count()).select_from(Reward)
                                          .join(Decision, Decision.event_id == Reward.event_id)
                                          .group_by(Decision.slot_id)).all())
        activations = dict(connection.execute(select(Decision.slot_id, func.count()).select_from(Activation)
                                              .join(Decision, Decision.event_id == Activation.event_id)
                                              .group_by(Decision.slot_id)).all())
    out = {}
    for slot in state.registry.slots.values():
        out[slot.name] = {"decisions": int(decisions.get(slot.id, 0)), "rewards": int(rewards.get(slot.id, 0)),
                          "activations": int(activations.get(slot.id, 0))}
    return out


@get("/dashboard/login", sync_to_thread=False)
def login_page(request: AnyRequest) -> Response[str]:
    return _html(environment.get_template("login.html").render(error=None))


@post("/dashboard/login", status_code=303)
async def login(request: AnyRequest, app_state: ProvidedAppState,
                data: URLEncodedBody[dict[str, str]]) -> Response[str]:
    key = (data.get("key") or "").strip()
    check_same_origin("POST", {**request.headers, "content-type": ""})  # no login from another origin
    scope = await asyncio.to_thread(app_state.key_store.scope_of, key) if key and not key.startswith("s1.") else None
    if scope != "admin":
        return _html(environment.get_template("login.html").render(error="That is not an admin key."), status=401)
    host = (request.url.hostname or "").lower()
    local_http = request.url.scheme == "http" and host in ("127.0.0.1", "localhost", "::1", "testserver.local")
    response: Response[str] = Redirect("/dashboard", status_code=303)
    session = await asyncio.to_thread(app_state.key_store.open_session, key)  # the cookie is not the key
    response.set_cookie(COOKIE, session, httponly=True, secure=not local_http, samesite="strict", path="/",
                        max_age=SESSION_S)
    return response


@post("/dashboard/logout", status_code=303)
async def logout(request: AnyRequest) -> Response[str]:
    response: Response[str] = Redirect("/dashboard/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


@get("/dashboard", sync_to_thread=True)
def overview(request: AnyRequest, app_state: ProvidedAppState) -> Response[str]:
    if not _admin(request, app_state):
        return _login_redirect()
    experiments = list_experiments(app_state.engine)
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for e in experiments:
        by_slot.setdefault(e["slot"], []).append(e)
    slots = sorted(app_state.registry.slots.values(), key=lambda s: s.name)
    policies = app_state.registry.policies
    holdouts = {s.name: holdout_lift(app_state.engine, s.name, max_decisions=DASHBOARD_HOLDOUT_DECISIONS)
                for s in slots if s.holdout_share > 0}
    return _html(environment.get_template("overview.html").render(
        slots=slots, policies=policies, experiments=by_slot, counters=_counters(app_state), holdouts=holdouts))


@get("/dashboard/counters.json", sync_to_thread=True)
def counters(request: AnyRequest, app_state: ProvidedAppState) -> Response[dict[str, Any]]:
    if not _admin(request, app_state):
        return Response({"error": "unauthorized"}, status_code=401)
    return Response(_counters(app_state), headers={"Cache-Control": "no-store"})


@get("/dashboard/experiments/{experiment_id:int}", sync_to_thread=True)
def report_page(request: AnyRequest, app_state: ProvidedAppState, experiment_id: FromPath[int],
                bucket: FromQuery[str] = "auto") -> Response[str]:
    if not _admin(request, app_state):
        return _login_redirect()
    report = report_for(app_state, experiment_id, bucket)
    return _html(render_report_page(report))


@get("/demo", sync_to_thread=False)
def demo(app_state: ProvidedAppState, slot: FromQuery[str | None] = None) -> Response[str]:
    key = app_state.demo_key
    if not app_state.settings.demo or key is None:
        return _html("<!doctype html><title>demo off</title><p>The demo page is served with SLOTBANDIT_DEMO=1.</p>",
                     status=404)
    names = sorted(app_state.registry.slots)
    chosen = slot if slot in app_state.registry.slots else next((n for n in names if n.startswith("demo")),
                                                                names[0] if names else None)
    blocks = app_state.registry.slots[chosen].candidates if chosen else ()
    return _html(environment.get_template("demo.html").render(slot=chosen, key=key, blocks=blocks))


ROUTES: list[ControllerRouterHandler] = [
    login_page, login, logout, overview, counters, report_page, demo,
    create_static_files_router(path="/static", directories=[STATIC], send_as_attachment=False,
                               include_in_schema=False),
]
