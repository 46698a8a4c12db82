"""A PostgreSQL outage under load: the live server answers 503 ``log_unavailable`` with the
slot's default block and ``Retry-After`` (never a 500), counts them, recovers by itself once the
database is back, and loses nothing it acknowledged.

The outage is real for the server: its database URL points at a TCP proxy the test owns, and
cutting the proxy resets every open connection and refuses new ones, as a stopped server does.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.engine import make_url

from api.auth import create_key
from api.db.engine import make_engine
from api.db.models import Decision, Reward
from tests.conftest import create_keys
from tests.e2e.live import LiveServer
from tests.e2e.proxy import TcpProxy

SLOT = "outage.hero"


@pytest.mark.postgres
def test_a_database_outage_is_503_with_the_default_block_and_heals(postgres_url: str, tmp_path: Path) -> None:
    admin_key, decide_key = create_keys(postgres_url)
    engine = make_engine(postgres_url)
    fresh_key = create_key(engine, "decide", "never used before the outage")  # a key-cache miss during it
    target = make_url(postgres_url)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432).start()
    server = LiveServer(target.set(port=proxy.port).render_as_string(hide_password=False), tmp_path).start()
    admin = {"Authorization": f"Bearer {admin_key}"}
    decide = {"Authorization": f"Bearer {decide_key}"}
    results: list[tuple[float, str, int, dict, dict]] = []  # (time, call, status, body, headers)
    acknowledged: set[str] = set()
    rewarded: set[str] = set()
    stop = threading.Event()

    def traffic(n: int) -> None:
        # even workers take the ASGI fast path, odd ones Litestar's routes (an Origin header)
        headers = {**decide, "Origin": "https://shop.example"} if n % 2 else decide
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as client:
            i = 0
            while not stop.is_set():
                i += 1
                r = client.post(f"/v1/slots/{SLOT}/decide", json={"unit_id": f"u{n}-{i}"})
                results.append((time.monotonic(), "decide", r.status_code, r.json(), dict(r.headers)))
                if r.status_code != 200:
                    time.sleep(0.02)
                    continue
                event = r.json()["event_id"]
                acknowledged.add(event)
                r = client.post(f"/v1/events/{event}/reward", json={"value": 1, "reward_id": "click"})
                results.append((time.monotonic(), "reward", r.status_code, r.json(), dict(r.headers)))
                if r.status_code == 200:
                    rewarded.add(event)

    try:
        with httpx.Client(base_url=server.url, headers=admin) as c:
            assert c.put(f"/v1/slots/{SLOT}", json={"default_block": "b0"}).status_code == 201
            for block in ("b0", "b1", "b2"):
                assert c.put(f"/v1/slots/{SLOT}/blocks/{block}", json={"features": {"k": block}}).status_code == 201
        threads = [threading.Thread(target=traffic, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        proxy.cut()
        cut_at = time.monotonic()
        time.sleep(2.0)
        during = {}
        with httpx.Client(base_url=server.url, timeout=30) as c:
            during["new key"] = c.post(f"/v1/slots/{SLOT}/decide", json={},
                                       headers={"Authorization": f"Bearer {fresh_key}"})
            during["health"] = c.get("/health")
        time.sleep(1.0)
        proxy.restore()
        restored_at = time.monotonic()
        time.sleep(4.0)
        stop.set()
        for thread in threads:
            thread.join(60)
        metrics = httpx.get(f"{server.url}/metrics").text
        with engine.connect() as connection:
            logged = set(connection.execute(select(Decision.event_id)).scalars())
            stored = set(connection.execute(select(Reward.event_id)).scalars())
    finally:
        stop.set()
        server.stop()
        proxy.cut()
        engine.dispose()

    statuses = {status for _, _, status, _, _ in results}
    assert statuses <= {200, 503}, sorted(statuses)
    unavailable = [(call, body, headers) for _, call, status, body, headers in results if status == 503]
    in_outage = [r for r in results if cut_at + 0.5 < r[0] < restored_at]
    assert in_outage and all(status == 503 for _, _, status, _, _ in in_outage), "the outage was not seen"
    for call, body, headers in unavailable:
        assert body["error"] == "log_unavailable", body
        assert set(body) >= {"error", "field", "detail"}
        assert headers.get("retry-after", "").isdigit(), headers
        if call == "decide":
            assert body["default_block"] == "b0", body
    assert during["new key"].status_code == 503, during["new key"].text
    assert during["new key"].json()["error"] == "database_unavailable"
    assert during["health"].status_code == 503
    # healed without a restart: everything in the last two seconds succeeded
    late = [status for t, _, status, _, _ in results if t > restored_at + 2.0]
    assert late and set(late) == {200}, late[:20]
    counted = sum(float(v) for v in re.findall(r'^slotbandit_unavailable_requests_total\{[^}]*\} (\S+)$', metrics, re.M))
    assert counted == len(unavailable) + 1  # + the unknown-key decide
    # nothing acknowledged was lost
    assert acknowledged <= logged
    assert rewarded <= stored
    print(f"{len(results)} calls, {len(unavailable)} answered 503 during a {restored_at - cut_at:.1f} s outage; "
          f"{len(acknowledged)} decisions and {len(rewarded)} rewards acknowledged, all stored")
