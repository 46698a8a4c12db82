"""Operations around the decision API: fallbacks, CORS, the CLI's keys and purge, the Python client."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from litestar.testing import TestClient
from sqlalchemy import func, select, update

from api.app import create_app
from api.cli import main
from api.client import Client, ClientError
from api.db.engine import make_engine
from api.db.models import Decision, Reward
from tests.api.test_decision_api import seed_slot, stored_decisions
from tests.conftest import create_keys, make_service_settings
from tests.e2e.live import LiveServer


class Broken:
    trained = True

    def pmf(self, context, candidates, catalog_key=None):  # noqa: ANN001, ANN201
        raise RuntimeError("model exploded")


def test_a_failing_policy_serves_the_default_block_flagged_and_counted(service) -> None:
    seed_slot(service)
    registry = service.client.app.state.registry
    registry.policies["home.hero"] = dataclasses.replace(registry.policies["home.hero"], chooser=Broken())
    r = service.client.post("/v1/slots/home.hero/decide", json={}, headers=service.decider)
    assert r.status_code == 200
    d = r.json()
    assert d["fallback"] is True and d["block"]["id"] == "b0" and d["probability"] == 1.0
    row = stored_decisions(service.database_url)[d["event_id"]]
    assert row["fallback"] is True and "model exploded" in row["fallback_reason"]
    assert 'slotbandit_fallbacks_total{reason="RuntimeError",slot="home.hero"} 1.0' in service.client.get("/metrics").text


def test_cors_allows_only_listed_origins(sqlite_url: str, tmp_path: Path) -> None:
    _, decide_key = create_keys(sqlite_url)
    settings = make_service_settings(sqlite_url, tmp_path, cors_origins=("https://shop.example",))
    with TestClient(app=create_app(settings)) as client:  # type: ignore[arg-type]
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
        ok = client.options("/v1/slots/x/decide", headers={"Origin": "https://shop.example", **preflight})
        assert ok.headers.get("access-control-allow-origin") == "https://shop.example"
        other = client.options("/v1/slots/x/decide", headers={"Origin": "https://evil.example", **preflight})
        assert other.headers.get("access-control-allow-origin") is None


def test_keys_create_prints_the_key_alone_on_its_last_line(sqlite_url: str, capsys) -> None:
    assert main(["--database-url", sqlite_url, "keys", "create", "--scope", "decide"]) == 0
    key = capsys.readouterr().out.strip().splitlines()[-1]
    assert key.startswith("sb_d_") and " " not in key
    with pytest.raises(SystemExit):
        main(["--database-url", sqlite_url, "keys", "create", "--scope", "root"])


def test_purge_deletes_only_what_is_past_retention(service, capsys) -> None:
    seed_slot(service)
    c = service.client
    events = [c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["event_id"] for _ in range(4)]
    for event in events:
        c.post(f"/v1/events/{event}/reward", json={"value": 1}, headers=service.decider)
    engine = make_engine(service.database_url)
    try:
        with engine.begin() as connection:  # two decisions are 40 days old
            connection.execute(update(Decision).where(Decision.event_id.in_(events[:2]))
                               .values(created_at=datetime.now(UTC) - timedelta(days=40)))
        assert main(["--database-url", service.database_url, "purge", "--older-than", "30"]) == 0
        assert "2 decisions" in capsys.readouterr().out
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(Decision)).scalar_one() == 2
            kept = {e for (e,) in connection.execute(select(Reward.event_id))}
        assert kept == set(events[2:])
        for bad in ("inf", "1e10", "nan", "-1"):  # refused with a message, not a traceback; nothing deleted
            assert main(["--database-url", service.database_url, "purge", f"--older-than={bad}"]) == 2
            assert "--older-than must be a number of days within [0, 36,500]" in capsys.readouterr().err
        with engine.connect() as connection:
            assert connection.execute(select(func.count()).select_from(Decision)).scalar_one() == 2
    finally:
        engine.dispose()


def test_python_client_against_a_live_server(sqlite_url: str, tmp_path: Path) -> None:
    admin_key, decide_key = create_keys(sqlite_url)
    server = LiveServer(sqlite_url, tmp_path).start()
    try:
        with Client(server.url, admin_key) as admin, Client(server.url, decide_key) as sb:
            admin.put_slot("client.slot", default_block="a", reward_range=[0, 5])
            for block in ("a", "b", "c"):
                admin.put_block("client.slot", block, {"kind": block})
            d = sb.decide("client.slot", unit_id="u1", context={"user": {"plan": "pro"}}, exclude=["c"])
            assert d["block"]["id"] in ("a", "b") and {x["id"] for x in d["ranking"]} == {"a", "b"}
            assert sb.activate(d["event_id"])["duplicate"] is False
            assert sb.reward(d["event_id"], 2.5, reward_id="conversion")["stored"] is True
            assert admin.event(d["event_id"])["rewards"][0]["value"] == 2.5
            with pytest.raises(ClientError) as caught:
                sb.reward(d["event_id"], 9.0)
            assert caught.value.status == 422 and caught.value.field == "value"
            with pytest.raises(ClientError) as caught:
                sb.put_slot("client.slot", timezone="Mars/Olympus")
            assert caught.value.status == 403
    finally:
        server.stop()
