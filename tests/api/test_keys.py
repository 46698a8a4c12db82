"""API keys are listed, revoked and rotated from the admin API and the CLI, and a revocation is
honoured by every worker within a second or two, even one that has the key cached."""

from __future__ import annotations

import time
from pathlib import Path

from litestar.testing import TestClient

from api.app import create_app
from api.cli import main
from tests.conftest import create_keys, make_service_settings


def _refused_within(client: TestClient, headers: dict[str, str], seconds: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        r = client.post("/v1/slots/s/decide", json={}, headers=headers)
        if r.status_code == 401:
            return time.monotonic() - started
        assert r.status_code == 200, r.text
        time.sleep(0.05)
    raise AssertionError(f"still accepted after {seconds} s")


def test_keys_are_listed_revoked_and_rotated_on_every_worker(database_url: str, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    admin_key, _ = create_keys(database_url)
    admin = {"Authorization": f"Bearer {admin_key}"}
    settings = make_service_settings(database_url, tmp_path)
    with TestClient(app=create_app(settings)) as one, TestClient(app=create_app(settings)) as two:
        assert one.put("/v1/slots/s", json={"default_block": "a"}, headers=admin).status_code == 201
        assert one.put("/v1/slots/s/blocks/a", json={}, headers=admin).status_code == 201
        created = one.post("/v1/keys", json={"scope": "decide", "name": "shop"}, headers=admin)
        assert created.status_code == 201, created.text
        shop = created.json()
        headers = {"Authorization": f"Bearer {shop['key']}"}
        assert two.post("/v1/slots/s/decide", json={}, headers=headers).status_code == 200  # cached on two
        listed = one.get("/v1/keys", headers=admin).json()["keys"]
        assert [(k["scope"], k["name"], k["revoked_at"]) for k in listed if k["id"] == shop["id"]] == [("decide", "shop", None)]
        assert all("key" not in k and "key_hash" not in k for k in listed)
        # revoked through worker one: worker two refuses it within a second or two
        assert one.post(f"/v1/keys/{shop['id']}/revoke", headers=admin).json()["revoked_at"] is not None
        assert one.post("/v1/slots/s/decide", json={}, headers=headers).status_code == 401
        lag = _refused_within(two, headers, 2.5)
        # rotated with a grace period: both keys work, then only the new one
        ci = one.post("/v1/keys", json={"scope": "decide", "name": "ci"}, headers=admin).json()
        old = {"Authorization": f"Bearer {ci['key']}"}
        assert two.post("/v1/slots/s/decide", json={}, headers=old).status_code == 200
        rotated = one.post(f"/v1/keys/{ci['id']}/rotate", json={"grace_s": 1.0}, headers=admin)
        assert rotated.status_code == 201, rotated.text
        new = {"Authorization": f"Bearer {rotated.json()['key']}"}
        assert rotated.json()["scope"] == "decide" and rotated.json()["name"] == "ci"
        assert two.post("/v1/slots/s/decide", json={}, headers=new).status_code == 200
        assert two.post("/v1/slots/s/decide", json={}, headers=old).status_code == 200  # in its grace period
        _refused_within(two, old, 3.5)
        assert two.post("/v1/slots/s/decide", json={}, headers=new).status_code == 200
        assert one.post("/v1/keys/999999/revoke", headers=admin).status_code == 404
        # the CLI: list, revoke
        cli_key = one.post("/v1/keys", json={"scope": "decide", "name": "cli"}, headers=admin).json()
        cli_headers = {"Authorization": f"Bearer {cli_key['key']}"}
        assert two.post("/v1/slots/s/decide", json={}, headers=cli_headers).status_code == 200
        monkeypatch.setenv("SLOTBANDIT_DATABASE_URL", database_url)
        capsys.readouterr()
        assert main(["keys", "list"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert any(line.split()[0] == str(cli_key["id"]) and "valid" in line and line.endswith("cli") for line in lines), lines
        assert main(["keys", "revoke", str(cli_key["id"])]) == 0
        _refused_within(two, cli_headers, 2.5)
        assert main(["keys", "rotate", "999999"]) == 2
    print(f"a revoked key was refused by the other worker after {lag:.2f} s")
