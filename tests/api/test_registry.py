"""A serving worker's registry: the fast model poll picks up new snapshots, warms them before the
swap, and does not retry a snapshot that cannot be loaded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from api.db.models import Snapshot
from api.learner import Learner, LearnerSettings
from tests.conftest import create_keys, make_service_settings

SLOT = "home.hero"


@pytest.fixture
def app_state(database_url: str, tmp_path: Path) -> Iterator[Any]:
    """The app with its own polls slowed to an hour: the test calls them."""
    from litestar.testing import TestClient

    from api.app import create_app

    admin_key, decide_key = create_keys(database_url)
    settings = make_service_settings(database_url, tmp_path, reload_interval_s=3600.0, model_poll_interval_s=3600.0)
    with TestClient(app=create_app(settings)) as client:  # type: ignore[arg-type]
        admin = {"Authorization": f"Bearer {admin_key}"}
        assert client.put(f"/v1/slots/{SLOT}", json={"default_block": "b0", "reward_window_s": 0,
                                                     "reward_range": [0, 1]}, headers=admin).status_code == 201
        for i in range(3):
            client.put(f"/v1/slots/{SLOT}/blocks/b{i}", json={"features": {"kind": f"k{i}"}}, headers=admin)
        for _ in range(20):
            r = client.post(f"/v1/slots/{SLOT}/decide", json={}, headers={"Authorization": f"Bearer {decide_key}"})
            assert r.status_code == 200
        client.app.state.registry.refresh()
        yield client.app.state


def test_the_model_poll_swaps_in_a_new_snapshot_warmed(app_state: Any) -> None:
    registry = app_state.registry
    assert registry.policies[SLOT].model_version == 0
    learner = Learner(app_state.engine, LearnerSettings(safety_margin_s=0.0))
    learner.run_until_idle(datetime.now(UTC) + timedelta(seconds=5))
    learner.close()
    registry.refresh_models()
    served = registry.policies[SLOT]
    assert served.model_version == 1 and served.chooser.trained
    # the block examples of the slot's catalog were parsed before the swap, not by the first decision
    assert registry.slots[SLOT].catalog_key in served.chooser._action_cache
    registry.refresh_models()
    assert registry.policies[SLOT] is served  # nothing new: nothing reloaded


def test_a_broken_snapshot_is_tried_once(app_state: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = app_state.registry
    with app_state.engine.begin() as connection:
        connection.execute(insert(Snapshot).values(policy_name=SLOT, version=1, model=b"not a model", cursor=0, metrics={}))
    loads = []
    load = registry._load_policy
    monkeypatch.setattr(registry, "_load_policy", lambda *a: loads.append(a[1:]) or load(*a))
    registry.refresh_models()
    assert registry.policies[SLOT].model_version == 0  # served untrained
    registry.refresh_models()
    registry.refresh()
    assert len(loads) == 1
