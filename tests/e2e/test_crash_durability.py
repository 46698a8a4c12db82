"""Every decision the API returned and every reward that got a 2xx survive a SIGKILL of the server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from api.db.engine import make_engine
from api.db.models import Decision, Reward
from tests.conftest import create_keys
from tests.e2e.live import LiveServer


async def _traffic(url: str, key: str, acknowledged: dict[str, float], rewarded: set[str], stop_after: float) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stop_after

    async def worker(client: httpx.AsyncClient, n: int) -> None:
        i = 0
        while loop.time() < deadline:
            i += 1
            try:
                r = await client.post("/v1/slots/crash.slot/decide", json={"unit_id": f"w{n}-{i}"}, headers=headers)
                if r.status_code == 200:
                    body = r.json()
                    acknowledged[body["event_id"]] = body["probability"]
                    rr = await client.post(f"/v1/events/{body['event_id']}/reward", json={"value": 1}, headers=headers)
                    if rr.status_code == 200:
                        rewarded.add(body["event_id"])
            except httpx.HTTPError:
                return  # the server died under us: that is the point

    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        await asyncio.gather(*(worker(client, n) for n in range(8)))


@pytest.mark.parametrize(("backend", "workers"), [
    ("sqlite", 1),
    # two processes sharing one SQLite file: commits on each event loop, serialised by the file lock
    ("sqlite", 2),
    pytest.param("postgres", 1, marks=pytest.mark.postgres),
])
def test_sigkill_loses_no_acknowledged_decision_or_reward(backend: str, workers: int, tmp_path: Path,
                                                          request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "postgres_url")
    admin_key, decide_key = create_keys(url)
    server = LiveServer(url, tmp_path, workers=workers).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
            assert admin.put("/v1/slots/crash.slot", json={"default_block": "a"}).status_code == 201
            for block in "abcdef":
                admin.put(f"/v1/slots/crash.slot/blocks/{block}", json={"features": {"k": block}})
        acknowledged: dict[str, float] = {}
        rewarded: set[str] = set()

        async def run() -> None:
            task = asyncio.create_task(_traffic(server.url, decide_key, acknowledged, rewarded, stop_after=30))
            while len(acknowledged) < 150:
                await asyncio.sleep(0.01)
            server.kill()  # mid-stream, requests in flight
            await task

        asyncio.run(run())
    finally:
        server.stop()
    assert len(acknowledged) >= 150
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            logged = dict(connection.execute(select(Decision.event_id, Decision.probability)).all())
            stored_rewards = {e for (e,) in connection.execute(select(Reward.event_id)).all()}
    finally:
        engine.dispose()
    missing = set(acknowledged) - set(logged)
    assert not missing, f"{len(missing)} acknowledged decisions are not in the log"
    assert all(logged[e] == p for e, p in acknowledged.items())
    assert rewarded <= stored_rewards
    # and the restarted service still serves and knows the old events
    server = LiveServer(url, tmp_path).start()
    try:
        some = next(iter(acknowledged))
        r = httpx.post(f"{server.url}/v1/events/{some}/reward", json={"value": 0, "reward_id": "after"},
                       headers={"Authorization": f"Bearer {decide_key}"})
        assert r.status_code == 200
    finally:
        server.stop()
