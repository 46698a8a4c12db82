"""Two workers on one database: an admin write on one is read back by the other at once (a
registry miss reads through to the database; admin reads reload), with polling that would take
an hour. The README's first calls, each on a different worker."""

from __future__ import annotations

from pathlib import Path

from litestar.testing import TestClient

from api.app import create_app
from tests.conftest import create_keys, make_service_settings


def test_a_write_on_one_worker_is_read_back_by_the_other_at_once(database_url: str, tmp_path: Path) -> None:
    admin_key, decide_key = create_keys(database_url)
    admin = {"Authorization": f"Bearer {admin_key}"}
    decide = {"Authorization": f"Bearer {decide_key}"}
    settings = make_service_settings(database_url, tmp_path, reload_interval_s=3600.0)
    with TestClient(app=create_app(settings)) as one, TestClient(app=create_app(settings)) as two:
        assert one.put("/v1/slots/home.hero", json={"default_block": "news-1"}, headers=admin).status_code == 201
        r = two.post("/v1/slots/home.hero/decide", json={}, headers=decide)  # two now holds it without blocks
        assert r.status_code == 422 and r.json()["field"] == "candidates", r.text
        r = two.put("/v1/slots/home.hero/blocks/news-1", json={"features": {"category": "news"}}, headers=admin)
        assert r.status_code == 201, r.text
        d = one.post("/v1/slots/home.hero/decide", json={}, headers=decide)  # one still holds it without blocks
        assert d.status_code == 200 and d.json()["block"]["id"] == "news-1", d.text
        assert one.put("/v1/slots/home.hero/blocks/news-2", json={}, headers=admin).status_code == 201
        slot = two.get("/v1/slots/home.hero", headers=admin).json()
        assert [b["id"] for b in slot["blocks"]] == ["news-1", "news-2"]
        assert "home.hero" in [s["name"] for s in two.get("/v1/slots", headers=admin).json()["slots"]]
        # a decision on a slot the deciding worker learnt of by reading through, on both paths
        for headers in (decide, {**decide, "Origin": "https://shop.example"}):
            d = one.post("/v1/slots/home.hero/decide", json={}, headers=headers)
            assert d.status_code == 200 and d.json()["ranking"][0]["id"] in ("news-1", "news-2"), d.text
        assert two.put("/v1/slots/other", json={}, headers=admin).status_code == 201
        assert one.post("/v1/slots/other/decide", json={"candidates": [{"id": "x"}]}, headers=decide).status_code == 200
        assert two.put("/v1/policies/p1", json={"kind": "uniform"}, headers=admin).status_code == 201
        assert one.get("/v1/policies/p1", headers=admin).json()["kind"] == "uniform"
        assert "p1" in [p["name"] for p in one.get("/v1/policies", headers=admin).json()["policies"]]
        # an unknown slot stays a 404 after its read through
        r = one.post("/v1/slots/never.made/decide", json={}, headers=decide)
        assert r.status_code == 404 and r.json()["error"] == "unknown_slot"
