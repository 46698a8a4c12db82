"""Model management through the admin API and the CLI: export, checked import, reset, rollback."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from api.cli import main
from api.db.engine import make_engine
from api.db.models import Snapshot
from api.learner import Learner, LearnerSettings

SLOT = "admin.hero"


@pytest.fixture(params=["vw", "linear"])
def trained(service, request):
    """A slot whose model policy (each learning kind in turn) has learned 60 decisions into snapshot v1."""
    c = service.client
    body = {"default_block": "b0", "reward_window_s": 0, "policy": {"kind": request.param}}
    assert c.put(f"/v1/slots/{SLOT}", json=body, headers=service.admin).status_code == 201
    for i in range(3):
        c.put(f"/v1/slots/{SLOT}/blocks/b{i}", json={"features": {"kind": f"k{i}"}}, headers=service.admin)
    for _ in range(60):
        c.post(f"/v1/slots/{SLOT}/decide", json={}, headers=service.decider)
    engine = make_engine(service.database_url)
    learner = Learner(engine, LearnerSettings(safety_margin_s=0.0))
    learner.run_until_idle(datetime.now(UTC) + timedelta(seconds=5))
    learner.close()
    c.app.state.registry.refresh()
    yield service
    engine.dispose()


def snapshots(url: str) -> list[tuple[int, int, bytes, dict]]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(
                select(Snapshot.version, Snapshot.cursor, Snapshot.model, Snapshot.metrics).order_by(Snapshot.version))]
    finally:
        engine.dispose()


def test_export_import_reset_rollback(trained) -> None:
    c, admin = trained.client, trained.admin
    r = c.get(f"/v1/policies/{SLOT}/model", headers=admin)
    assert r.status_code == 200 and r.headers["x-slotbandit-version"] == "1"
    v1 = r.content
    kind = c.get(f"/v1/policies/{SLOT}", headers=admin).json()["kind"]
    suffix = {"vw": ".vw", "linear": ".linear"}[kind]
    assert r.headers["content-disposition"].endswith(f'-v1{suffix}"')
    assert v1.startswith(b"SBLINEAR") == (kind == "linear")
    assert c.put(f"/v1/policies/{SLOT}/model", content=b"not a model", headers=admin).status_code == 422
    assert [s[0] for s in snapshots(trained.database_url)] == [1]  # a rejected import changes nothing
    r = c.put(f"/v1/policies/{SLOT}/model", content=v1, headers=admin)
    assert r.status_code == 201 and r.json()["version"] == 2
    r = c.post(f"/v1/policies/{SLOT}/reset", headers=admin)
    assert r.status_code == 201 and r.json()["version"] == 3
    # the reset model serves uniformly and its decisions say it is untrained
    d = c.post(f"/v1/slots/{SLOT}/decide", json={}, headers=trained.decider).json()
    assert d["model_version"] == 3 and d["probability"] == 1 / 3
    assert c.get(f"/v1/events/{d['event_id']}", headers=admin).json()["trained"] is False
    r = c.post(f"/v1/policies/{SLOT}/rollback", json={"version": 1}, headers=admin)
    assert r.status_code == 201 and r.json()["version"] == 4
    rows = snapshots(trained.database_url)
    assert [s[0] for s in rows] == [1, 2, 3, 4]
    assert len({s[1] for s in rows}) == 1  # the cursor stays: the model changes, not the position in the log
    assert rows[1][2] == v1 and rows[3][2] == v1
    assert rows[2][3]["trained"] is False and rows[3][3]["rolled_back_to"] == 1
    assert c.get(f"/v1/policies/{SLOT}", headers=admin).json()["model_version"] == 4  # this worker serves it at once
    listing = c.get(f"/v1/policies/{SLOT}/snapshots", headers=admin).json()["snapshots"]
    assert [s["version"] for s in listing] == [4, 3, 2, 1] and listing[0]["bytes"] == len(v1)
    r = c.post(f"/v1/policies/{SLOT}/reset", json={"from_start": True}, headers=admin)
    assert r.status_code == 201 and snapshots(trained.database_url)[-1][1] == 0  # relearn the whole log


BAD = [  # (method, path, body, status, error code)
    ("get", "/v1/policies/nope/model", None, 404, "unknown_policy"),
    ("get", f"/v1/policies/{SLOT}/model?version=99", None, 404, "unknown_snapshot"),
    ("post", f"/v1/policies/{SLOT}/rollback", {"version": 99}, 404, "unknown_snapshot"),
    ("post", f"/v1/policies/{SLOT}/rollback", {"version": "1"}, 422, "invalid_request"),
    ("post", f"/v1/policies/{SLOT}/reset", {"from_start": "yes"}, 422, "invalid_request"),
    ("put", f"/v1/policies/{SLOT}/model", b"", 422, "invalid_model"),
]


def test_bad_requests_change_nothing(trained) -> None:
    c = trained.client
    before = snapshots(trained.database_url)
    for method, path, body, status, code in BAD:
        kwargs = {"content": body} if isinstance(body, bytes) else ({"json": body} if body is not None else {})
        r = getattr(c, method)(path, headers=trained.admin, **kwargs)
        assert r.status_code == status and r.json()["error"] == code, (path, r.text)
        assert getattr(c, method)(path, headers=trained.decider, **kwargs).status_code == 403
    assert snapshots(trained.database_url) == before


def test_cli_export_import_list(trained, tmp_path: Path, capsys) -> None:
    url = trained.database_url
    out = tmp_path / "model.vw"
    assert main(["--database-url", url, "model", "export", "--policy", SLOT, "--out", str(out)]) == 0
    assert out.read_bytes() == snapshots(url)[0][2]
    assert main(["--database-url", url, "model", "import", "--policy", SLOT, str(out)]) == 0
    assert main(["--database-url", url, "model", "rollback", "--policy", SLOT, "--version", "1"]) == 0
    assert main(["--database-url", url, "model", "reset", "--policy", SLOT]) == 0
    bad = tmp_path / "bad.vw"
    bad.write_bytes(b"\x00" * 64)
    assert main(["--database-url", url, "model", "import", "--policy", SLOT, str(bad)]) == 1
    capsys.readouterr()
    assert main(["--database-url", url, "model", "list", "--policy", SLOT]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in listed] == ["v4", "v3", "v2", "v1"]
    assert "reset" in listed[0] and "rollback" in listed[1] and "import" in listed[2]


def test_a_model_of_another_kind_or_configuration_is_refused(trained) -> None:
    """A vw model into a linear policy (and back), or a linear model of another configuration digest: 422."""
    from bandits.linear import LinearConfig, LinearPolicy
    from bandits.policies import VWConfig, VWPolicy

    c, admin = trained.client, trained.admin
    kind = c.get(f"/v1/policies/{SLOT}", headers=admin).json()["kind"]
    before = snapshots(trained.database_url)
    others = [VWPolicy(VWConfig()).save()] if kind == "linear" else []
    others.append(LinearPolicy(LinearConfig(max_features=64)).save())  # not this policy's configuration
    for other in others:
        r = c.put(f"/v1/policies/{SLOT}/model", content=other, headers=admin)
        assert r.status_code == 422 and r.json()["error"] == "invalid_model", r.text
    assert snapshots(trained.database_url) == before
