"""The HTML dashboard (``/dashboard``), the demo page (``/demo``) and the static files (``/static``).

Server-rendered Jinja2 with inline SVG charts: no JavaScript library, no
build step, nothing fetched from a CDN; a report page is one HTML response
that reads on a phone (the layout is a single column below 700 px). The only
script on the dashboard updates the live counters every 5 seconds.

Access: the admin key. ``/dashboard/login`` checks it and sets the cookie
``slotbandit_admin`` (Secure, HttpOnly, SameSite=Strict, path ``/``), which
``api.auth`` accepts like a bearer key; ``/dashboard/logout`` clears it.
The cookie is ``Secure`` unless the request came over plain HTTP to a
loopback host (local development and tests).

Charts (pure functions returning SVG text; every label is escaped):
    :func:`series_chart`  cumulative mean reward per arm over time with its interval band
    :func:`forest_plot`   absolute lift of every arm against control with its interval
"""

from __future__ import annotations

import asyncio
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from sqlalchemy import func, select

from api.auth import ADMIN_COOKIE
from api.db.models import Activation, Decision, Reward

__all__ = ["ROUTES", "forest_plot", "render_report_page", "series_chart"]

HERE = Path(__file__).resolve().parent
COOKIE = ADMIN_COOKIE
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(HERE / "templates")),
    autoescape=jinja2.select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-4 or value == 0 else f"{value:.2e}"
    return str(value)


def _pct(value: Any) -> str:
    return "—" if value is None else f"{value * 100:.2f}%"


def _ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return f"[{_num(ci[0], digits)}, {_num(ci[1], digits)}]" if ci else "—"


_env.filters.update(num=_num, pct=_pct, ci=_ci)


# ----------------------------------------------------------------------------- SVG charts


def _scale(low: float, high: float, out_low: float, out_high: float) -> Any:
    span = (high - low) or 1.0
    return lambda v: out_low + (v - low) / span * (out_high - out_low)


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step) + 1)]


def series_chart(series: Mapping[str, Any], arms: Sequence[str], width: int = 640, height: int = 260) -> str:
    """Cumulative mean reward per arm after each time bucket, with the interval as a band."""
    points = series.get("points", [])
    buckets = list(dict.fromkeys(p["bucket"] for p in points))
    if not buckets:
        return '<p class="muted">No decisions yet.</p>'
    values = [v for p in points if p["mean"] is not None for v in (p["ci"] or [p["mean"], p["mean"]])]
    values += [p["mean"] for p in points if p["mean"] is not None]
    if not values:
        return '<p class="muted">Not enough data for a chart yet.</p>'
    low, high = min(values), max(values)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 0.1
    low, high = low - pad, high + pad
    left, right, top, bottom = 52, 12, 12, 30
    x = _scale(0, max(len(buckets) - 1, 1), left, width - right)
    y = _scale(low, high, height - bottom, top)
    parts = [f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="mean reward over time per arm" '
             f'xmlns="http://www.w3.org/2000/svg">']
    for t in _ticks(low, high):
        parts.append(f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" class="grid"/>'
                     f'<text x="{left - 6}" y="{y(t) + 4:.1f}" class="tick" text-anchor="end">{_num(t)}</text>')
    step = max(1, len(buckets) // 6)
    for i in range(0, len(buckets), step):
        parts.append(f'<text x="{x(i):.1f}" y="{height - 10}" class="tick" text-anchor="middle">'
                     f'{html.escape(buckets[i][5:] if len(buckets[i]) >= 10 else buckets[i])}</text>')
    for index, arm in enumerate(arms):
        color = PALETTE[index % len(PALETTE)]
        mine = {p["bucket"]: p for p in points if p["arm"] == arm}
        line, band_top, band_bottom = [], [], []
        for i, bucket in enumerate(buckets):
            p = mine.get(bucket)
            if p is None or p["mean"] is None:
                continue
            line.append(f"{x(i):.1f},{y(p['mean']):.1f}")
            if p["ci"]:
                band_top.append(f"{x(i):.1f},{y(p['ci'][1]):.1f}")
                band_bottom.append(f"{x(i):.1f},{y(p['ci'][0]):.1f}")
        if band_top:
            polygon = " ".join(band_top + band_bottom[::-1])
            parts.append(f'<polygon points="{polygon}" fill="{color}" fill-opacity="0.15" stroke="none"/>')
        if line:
            parts.append(f'<polyline points="{" ".join(line)}" fill="none" stroke="{color}" stroke-width="2" '
                         f'data-arm="{html.escape(arm)}"/>')
            for point in line:
                cx, cy = point.split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{color}"/>')
    parts.append("</svg>")
    legend = "".join(f'<span class="key"><i style="background:{PALETTE[i % len(PALETTE)]}"></i>{html.escape(a)}</span>'
                     for i, a in enumerate(arms))
    return "".join(parts) + f'<div class="legend">{legend}</div>'


def forest_plot(comparisons: Sequence[Mapping[str, Any]], arms: Sequence[str], percent_points: bool,
                width: int = 640) -> str:
    """Absolute lift of every arm against control with its confidence interval; 0 marked."""
    rows = [c for c in comparisons if c.get("absolute_lift") is not None]
    if not rows:
        return '<p class="muted">No comparison can be made yet.</p>'
    scale_factor = 100.0 if percent_points else 1.0
    values = [0.0]
    for c in rows:
        values.append(c["absolute_lift"] * scale_factor)
        if c.get("absolute_ci"):
            values += [v * scale_factor for v in c["absolute_ci"]]
    low, high = min(values), max(values)
    pad = (high - low) * 0.1 or 1.0
    low, high = low - pad, high + pad
    row_h, left, right, top = 34, 110, 16, 10
    height = top + row_h * len(rows) + 30
    x = _scale(low, high, left, width - right)
    parts = [f'<svg class="chart forest" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="lift against control with confidence intervals" xmlns="http://www.w3.org/2000/svg">']
    for t in _ticks(low, high):
        parts.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{top}" y2="{height - 26}" class="grid"/>'
                     f'<text x="{x(t):.1f}" y="{height - 10}" class="tick" text-anchor="middle">{_num(t)}</text>')
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="{top}" y2="{height - 26}" class="zero"/>')
    for i, c in enumerate(rows):
        cy = top + row_h * i + row_h / 2
        color = PALETTE[arms.index(c["arm"]) % len(PALETTE)] if c["arm"] in arms else "#333"
        parts.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" class="label" text-anchor="end">{html.escape(c["arm"])}</text>')
        if c.get("absolute_ci"):
            lo, hi = (v * scale_factor for v in c["absolute_ci"])
            parts.append(f'<line x1="{x(lo):.1f}" x2="{x(hi):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" stroke="{color}" '
                         f'stroke-width="3"/>')
        mark = "sig" if c.get("significant") else "ns"
        parts.append(f'<circle cx="{x(c["absolute_lift"] * scale_factor):.1f}" cy="{cy:.1f}" r="6" fill="{color}" '
                     f'class="{mark}" data-arm="{html.escape(c["arm"])}"/>')
    parts.append("</svg>")
    unit = "percentage points" if percent_points else "reward units"
    return "".join(parts) + f'<p class="muted small">Lift against control in {unit}; filled dot = significant after correction.</p>'


# ----------------------------------------------------------------------------- pages


def render_report_page(report: Mapping[str, Any], *, standalone: bool = False) -> str:
    """The report as an HTML page (``standalone`` inlines the CSS for ``slotbandit report --format html``)."""
    arms = [a["arm"] for a in report["arms"]]
    percent = bool(report["summary"].get("binary")) and report["summary"].get("metric") == "reward_per_decision"
    css = (HERE / "static" / "dashboard.css").read_text(encoding="utf-8") if standalone else None
    return _env.get_template("report.html").render(
        report=report, e=report["experiment"], arms=arms, css=css,
        series_svg=series_chart(report["time_series"], arms),
        forest_svg=forest_plot(report["comparisons"], arms, percent),
        percent=percent,
    )


def _html(text: str, status: int = 200) -> Response[str]:
    return Response(text, media_type="text/html; charset=utf-8", status_code=status,
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "same-origin"})


def _state(request: Request) -> State:  # type: ignore[type-arg]
    return request.app.state


def _admin(request: Request) -> bool:  # type: ignore[type-arg]
    key = request.cookies.get(COOKIE)
    if not key:
        header = request.headers.get("authorization", "")
        key = header[7:].strip() if header.lower().startswith("bearer ") else None
    return bool(key) and _state(request).key_store.scope_of(key) == "admin"


def _login_redirect() -> Redirect:
    return Redirect("/dashboard/login", status_code=303)


def _counters(state: State) -> dict[str, dict[str, int]]:
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
def login_page(request: Request) -> Response[str]:  # type: ignore[type-arg]
    return _html(_env.get_template("login.html").render(error=None))


@post("/dashboard/login", status_code=303)
async def login(request: Request,  # type: ignore[type-arg]
                data: URLEncodedBody[dict[str, str]]) -> Response[str]:
    key = (data.get("key") or "").strip()
    scope = await asyncio.to_thread(_state(request).key_store.scope_of, key) if key else None
    if scope != "admin":
        return _html(_env.get_template("login.html").render(error="That is not an admin key."), status=401)
    host = (request.url.hostname or "").lower()
    local_http = request.url.scheme == "http" and host in ("127.0.0.1", "localhost", "::1", "testserver.local")
    response: Response[str] = Redirect("/dashboard", status_code=303)  # type: ignore[assignment]
    response.set_cookie(COOKIE, key, httponly=True, secure=not local_http, samesite="strict", path="/",
                        max_age=12 * 3600)
    return response


@post("/dashboard/logout", status_code=303)
async def logout(request: Request) -> Response[str]:  # type: ignore[type-arg]
    response: Response[str] = Redirect("/dashboard/login", status_code=303)  # type: ignore[assignment]
    response.delete_cookie(COOKIE, path="/")
    return response


@get("/dashboard", sync_to_thread=True)
def overview(request: Request) -> Response[str]:  # type: ignore[type-arg]
    if not _admin(request):
        return _login_redirect()  # type: ignore[return-value]
    from api.experiments import list_experiments

    state = _state(request)
    experiments = list_experiments(state.engine)
    by_slot: dict[str, list[dict[str, Any]]] = {}
    for e in experiments:
        by_slot.setdefault(e["slot"], []).append(e)
    slots = sorted(state.registry.slots.values(), key=lambda s: s.name)
    policies = state.registry.policies
    return _html(_env.get_template("overview.html").render(
        slots=slots, policies=policies, experiments=by_slot, counters=_counters(state)))


@get("/dashboard/counters.json", sync_to_thread=True)
def counters(request: Request) -> Response[dict[str, Any]]:  # type: ignore[type-arg]
    if not _admin(request):
        return Response({"error": "unauthorized"}, status_code=401)
    return Response(_counters(_state(request)), headers={"Cache-Control": "no-store"})


@get("/dashboard/experiments/{experiment_id:int}", sync_to_thread=True)
def report_page(request: Request, experiment_id: FromPath[int], bucket: FromQuery[str] = "auto") -> Response[str]:  # type: ignore[type-arg]
    if not _admin(request):
        return _login_redirect()  # type: ignore[return-value]
    from api.experiments import report_for

    report = report_for(_state(request), experiment_id, bucket)
    return _html(render_report_page(report))


@get("/demo", sync_to_thread=False)
def demo(request: Request, slot: FromQuery[str | None] = None) -> Response[str]:  # type: ignore[type-arg]
    state = _state(request)
    key = getattr(state, "demo_key", None)
    if not state.settings.demo or key is None:
        return _html("<!doctype html><title>demo off</title><p>The demo page is served with SLOTBANDIT_DEMO=1.</p>",
                     status=404)
    names = sorted(state.registry.slots)
    chosen = slot if slot in state.registry.slots else next((n for n in names if n.startswith("demo")),
                                                            names[0] if names else None)
    blocks = state.registry.slots[chosen].candidates if chosen else ()
    return _html(_env.get_template("demo.html").render(slot=chosen, key=key, blocks=blocks))


ROUTES = [
    login_page, login, logout, overview, counters, report_page, demo,
    create_static_files_router(path="/static", directories=[HERE / "static"], send_as_attachment=False,
                               include_in_schema=False),
]
