"""`slotbandit serve --workers 2` on one SQLite file: both workers log every decision they return,
and /metrics, whichever worker answers, counts the decisions of both."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
from sqlalchemy import select

from api.db.engine import make_engine
from api.db.models import Decision
from tests.conftest import create_keys
from tests.e2e.live import LiveServer


def test_two_workers_share_the_log_and_the_metrics(sqlite_url: str, tmp_path: Path) -> None:
    admin_key, decide_key = create_keys(sqlite_url)
    server = LiveServer(sqlite_url, tmp_path, workers=2).start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}) as admin:
            assert admin.put("/v1/slots/mw.slot", json={"default_block": "a"}).status_code == 201
            for block in "abcd":
                assert admin.put(f"/v1/slots/mw.slot/blocks/{block}", json={"features": {"k": block}}).status_code in (200, 201)
        time.sleep(1.0)  # both workers poll the registry every 0.3 s
        answers: dict[str, float] = {}

        async def traffic() -> None:
            async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {decide_key}"}) as client:
                async def one(i: int) -> None:
                    r = await client.post("/v1/slots/mw.slot/decide", json={"unit_id": f"u{i}"})
                    assert r.status_code == 200, r.text
                    answers[r.json()["event_id"]] = r.json()["probability"]

                for start in range(0, 300, 30):  # 30 in flight: both workers commit at once
                    await asyncio.gather(*(one(i) for i in range(start, start + 30)))

        asyncio.run(traffic())
        texts = [httpx.get(f"{server.url}/metrics").text for _ in range(6)]
    finally:
        server.stop()
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as connection:
            logged = dict(connection.execute(select(Decision.event_id, Decision.probability)).all())
    finally:
        engine.dispose()
    assert len(answers) == 300 and logged == answers
    for text in texts:  # every answer, from either worker, sums both
        assert re.search(r'slotbandit_decisions_total\{slot="mw.slot"\} 300\.0', text), text[:2000]
        commits = sum(float(n) for n in re.findall(r'slotbandit_log_commit_seconds_count\{path="\w+"\} ([\d.]+)', text))
        assert 1 <= commits <= 300
