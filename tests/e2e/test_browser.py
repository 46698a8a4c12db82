"""The dashboard and the demo page in a real headless Chromium (Playwright), against a live server.

Skipped when /usr/bin/chromium is missing, unless SLOTBANDIT_REQUIRE_BROWSER=1 (CI), where that fails.
Screenshots go to test-artifacts/.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.db.engine import make_engine
from api.db.models import Activation, Decision, Reward
from tests.conftest import create_keys, make_service_settings

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
               "--no-first-run"]


def _require_browser() -> None:
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing (apt-get install -y chromium)"
        if os.environ.get("SLOTBANDIT_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SLOTBANDIT_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    def __init__(self, url: str, admin: str, database_url: str) -> None:
        self.url = url
        self.admin = admin
        self.database_url = database_url

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def rows(self, model: type) -> list:
        engine = make_engine(self.database_url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(select(model.__table__)).mappings().all())
        finally:
            engine.dispose()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[LiveServer]:
    _require_browser()
    import uvicorn

    from api.app import create_app

    database_url = f"sqlite:///{tmp_path / 'live.db'}"
    admin, _ = create_keys(database_url)
    settings = make_service_settings(database_url, tmp_path, demo=True)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the live server did not start")
        time.sleep(0.05)
    try:
        yield LiveServer(url, admin, database_url)
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def browser() -> Iterator[object]:
    _require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def seed_slot(http: httpx.Client, slot: str) -> None:
    r = http.put(f"/v1/slots/{slot}", json={"default_block": "b0", "reward_range": [0, 1]})
    assert r.status_code in (200, 201), r.text
    for i, category in enumerate(("news", "sports", "video")):
        assert http.put(f"/v1/slots/{slot}/blocks/b{i}", json={"features": {"category": category}}).status_code in (200, 201)


def test_report_page_renders_charts_and_numbers(live: LiveServer, browser) -> None:
    with httpx.Client(base_url=live.url, headers=live.headers, timeout=30) as http:
        seed_slot(http, "home.hero")
        http.put("/v1/policies/editor", json={"kind": "fixed", "block": "b0"})
        e = http.post("/v1/experiments", json={"slot": "home.hero", "control": "editor", "arms": [
            {"name": "editor", "policy": "editor", "share": 0.5},
            {"name": "rules", "policy": {"kind": "rules", "rules": {"fallback": "b1", "exploration": 0.1}}, "share": 0.5}]}).json()
        assert http.post(f"/v1/experiments/{e['id']}/start").status_code == 200
        rng = random.Random(2)
        for u in range(400):
            ua = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148" if u % 2 else "Mozilla/5.0 (X11; Linux x86_64)"
            d = http.post("/v1/slots/home.hero/decide", json={"unit_id": f"u{u}"}, headers={"user-agent": ua}).json()
            if rng.random() < (0.25 if d["block"]["id"] == "b1" else 0.08):
                http.post(f"/v1/events/{d['event_id']}/reward", json={"value": 1})
        expected = http.get(f"/v1/experiments/{e['id']}/report", params={"offline": "false"}).json()

    ARTIFACTS.mkdir(exist_ok=True)
    for name, viewport in (("report-desktop", {"width": 1200, "height": 900}), ("report-phone", {"width": 390, "height": 844})):
        page = browser.new_page(viewport=viewport)
        page.goto(f"{live.url}/dashboard/experiments/{e['id']}")
        assert page.url.endswith("/dashboard/login")  # no cookie yet
        page.fill("#key", "not-a-key")
        page.click("button[type=submit]")
        assert "not an admin key" in page.inner_text("body")
        page.fill("#key", live.admin)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live.url}/dashboard")
        cookie = next(c for c in page.context.cookies() if c["name"] == "slotbandit_admin")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        assert page.locator("[data-slot='home.hero'] [data-counter=decisions]").inner_text() == "400"
        page.screenshot(path=str(ARTIFACTS / f"overview-{name.split('-')[1]}.png"), full_page=True)
        page.click(f"a[href='/dashboard/experiments/{e['id']}']")
        page.wait_for_selector("#series svg polyline", state="attached")
        assert page.locator("#series svg polyline").count() == 2
        assert page.locator("#lifts svg circle[data-arm=rules]").count() == 1
        assert page.locator("#segments table").count() == 3
        verdict = page.inner_text("#verdicts")
        assert expected["verdicts"][0] in verdict
        rules_row = page.inner_text("#arms tr[data-arm=rules]")
        assert str(expected["arms"][1]["units"]) in rules_row and f"{expected['arms'][1]['mean']:.4g}" in rules_row
        # readable on a phone: nothing wider than the viewport except inside horizontal scrollers
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        page.close()


def test_demo_page_decides_activates_on_view_and_stores_a_click(live: LiveServer, browser) -> None:
    with httpx.Client(base_url=live.url, headers=live.headers, timeout=30) as http:
        seed_slot(http, "demo.hero")
    page = browser.new_page(viewport={"width": 1000, "height": 700})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{live.url}/demo")
    page.wait_for_selector("[data-slotbandit-event]")
    event_id = page.get_attribute("#hero", "data-slotbandit-event")
    block = page.get_attribute("#hero", "data-slotbandit-block-id")
    assert page.locator("#hero article h2").inner_text() == block  # rendered from the block's template
    decisions = live.rows(Decision)
    assert [d["event_id"] for d in decisions] == [event_id]
    page.wait_for_timeout(800)
    assert live.rows(Activation) == []  # below the fold: not shown yet
    page.screenshot(path=str(ARTIFACTS / "demo-before-scroll.png"))
    page.locator("#hero").scroll_into_view_if_needed()
    page.wait_for_selector("#hero[data-slotbandit-activated=true]")
    deadline = time.monotonic() + 10
    while not live.rows(Activation) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [a["event_id"] for a in live.rows(Activation)] == [event_id]
    page.click("#hero")
    deadline = time.monotonic() + 10
    while not live.rows(Reward) and time.monotonic() < deadline:
        time.sleep(0.1)
    rewards = live.rows(Reward)
    assert [(r["event_id"], r["value"], r["reward_id"]) for r in rewards] == [(event_id, 1.0, "click")]
    page.screenshot(path=str(ARTIFACTS / "demo-after-click.png"))
    assert errors == []
    page.close()
