"""The dashboard's cookie is a signed session, not the admin key, and a state-changing request
that only that cookie authorises must come from this origin with a JSON body: a page on another
port of the same host (the same site, so the SameSite cookie goes along) changes nothing."""

from __future__ import annotations

from tests.api.test_decision_api import seed_slot, table_counts
from tests.conftest import Service

ORIGIN = "http://testserver.local"  # the TestClient's own origin


def _login(service: Service) -> str:
    r = service.client.post("/dashboard/login", data={"key": service.admin_key}, headers={"Origin": ORIGIN},
                            follow_redirects=False)
    assert r.status_code == 303, r.text
    return service.client.cookies["slotbandit_admin"]


def test_the_admin_cookie_is_a_session_that_ends_with_its_key(service: Service) -> None:
    c = service.client
    session = _login(service)
    assert session.startswith("s1.") and service.admin_key not in session
    assert c.get("/v1/slots").status_code == 200
    assert c.get("/dashboard", follow_redirects=False).status_code == 200
    # a forged or altered session is nobody's
    key_id, expires, signature = session.split(".")[1:]
    for forged in (f"s1.{key_id}.{int(expires) + 3600}.{signature}", f"s1.{key_id}.{expires}.{'0' * 32}",
                   f"s1.{int(key_id) + 1}.{expires}.{signature}", service.admin_key):
        c.cookies.set("slotbandit_admin", forged)
        assert c.get("/v1/slots").status_code == 401, forged
    # revoking the key ends its sessions
    c.cookies.set("slotbandit_admin", session)
    assert c.get("/v1/slots").status_code == 200
    assert c.post(f"/v1/keys/{key_id}/revoke", headers={"Origin": ORIGIN}).status_code == 200
    assert c.get("/v1/slots").status_code == 401


def test_a_page_of_another_origin_changes_nothing_with_the_cookie(service: Service) -> None:
    seed_slot(service, blocks=2)
    c = service.client
    _login(service)
    before = table_counts(service.database_url), c.get("/v1/slots").json()
    body = '{"default_block": "b1"}'
    forged = [
        {"Origin": "http://testserver.local:8081", "content-type": "application/json"},  # another port
        {"Origin": ORIGIN, "Sec-Fetch-Site": "same-site", "content-type": "application/json"},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "cross-site", "content-type": "application/json"},
        {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin", "content-type": "text/plain"},  # a "simple" request
        {"content-type": "application/x-www-form-urlencoded"},  # a form
    ]
    for headers in forged:
        r = c.put("/v1/slots/home.hero", content=body, headers=headers)
        assert r.status_code == 403 and r.json()["error"] == "cross_origin", (headers, r.text)
        r = c.post("/v1/slots/home.hero/decide", content="{}", headers=headers)
        assert r.status_code == 403, (headers, r.text)
        r = c.post("/v1/experiments", content='{"slot": "home.hero", "arms": []}', headers=headers)
        assert r.status_code == 403, (headers, r.text)
    assert (table_counts(service.database_url), c.get("/v1/slots").json()) == before
    assert c.get("/v1/slots/home.hero").json()["default_block"] == "b0"
    # the dashboard's own calls pass, and a key header is never checked (no page can send one)
    same = {"Origin": ORIGIN, "Sec-Fetch-Site": "same-origin", "content-type": "application/json"}
    assert c.put("/v1/slots/home.hero", content=body, headers=same).status_code == 200
    assert c.put("/v1/slots/home.hero", content='{"default_block": "b0"}',
                 headers={**service.admin, "Origin": "http://elsewhere", "content-type": "text/plain"}).status_code == 200
    # nor can another origin log a browser in
    r = c.post("/dashboard/login", data={"key": service.admin_key}, headers={"Origin": "http://testserver.local:8081"},
               follow_redirects=False)
    assert r.status_code == 403
