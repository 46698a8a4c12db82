"""Rewards are idempotent per (event, reward id), with a server-derived id when none is given; a
repeated id with another value is a 409; one event (and so one beacon token) takes a bounded
number of rewards. Both paths (ASGI and Litestar), both databases."""

from __future__ import annotations

from tests.api.test_decision_api import seed_slot, service, table_counts  # noqa: F401


def test_a_retried_reward_without_id_is_stored_once(service) -> None:  # noqa: F811
    seed_slot(service)
    c = service.client
    event = c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["event_id"]
    answers = [c.post(f"/v1/events/{event}/reward", json={"value": 1}, headers=service.decider).json() for _ in range(3)]
    assert [a["duplicate"] for a in answers] == [False, True, True]
    assert {a["reward_id"] for a in answers} == {"value:1.0"}
    assert c.post(f"/v1/events/{event}/reward", json={"value": 1.0}, headers=service.decider).json()["duplicate"] is True
    assert c.post(f"/v1/events/{event}/reward", json={"value": 0.5}, headers=service.decider).json()["duplicate"] is False
    assert table_counts(service.database_url)[1] == 2
    stored = c.get(f"/v1/events/{event}", headers=service.admin).json()["rewards"]
    assert [(r["reward_id"], r["value"]) for r in stored] == [("value:1.0", 1.0), ("value:0.5", 0.5)]


def test_a_reward_id_repeated_with_another_value_is_a_conflict(service) -> None:  # noqa: F811
    seed_slot(service)
    c = service.client
    event = c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()["event_id"]
    url = f"/v1/events/{event}/reward"
    assert c.post(url, json={"value": 1, "reward_id": "click"}, headers=service.decider).status_code == 200
    r = c.post(url, json={"value": 0.25, "reward_id": "click"}, headers=service.decider)
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "reward_conflict" and r.json()["field"] == "value"
    r = c.post(url, json={"value": 1, "reward_id": "click"}, headers=service.decider)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    stored = c.get(f"/v1/events/{event}", headers=service.admin).json()["rewards"]
    assert [(x["reward_id"], x["value"]) for x in stored] == [("click", 1.0)]


def test_a_beacon_token_adds_a_bounded_number_of_rewards(service) -> None:  # noqa: F811
    seed_slot(service)
    c = service.client
    limit = service.settings.max_rewards_per_event
    d = c.post("/v1/slots/home.hero/decide", json={}, headers=service.decider).json()
    url = f"/v1/beacon/{d['event_id']}/reward?t={d['token']}"
    beacon = {"content-type": "text/plain"}
    for i in range(limit):
        r = c.post(url, content=f'{{"value": 1, "reward_id": "r{i}"}}', headers=beacon)
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
    r = c.post(url, content='{"value": 1, "reward_id": "one-more"}', headers=beacon)
    assert r.status_code == 409 and r.json()["error"] == "reward_limit" and r.json()["field"] == "reward_id", r.text
    r = c.post(url, content='{"value": 1}', headers=beacon)
    assert r.status_code == 409 and r.json()["error"] == "reward_limit"
    # a retry of a stored reward is still answered as a duplicate
    r = c.post(url, content='{"value": 1, "reward_id": "r0"}', headers=beacon)
    assert r.status_code == 200 and r.json()["duplicate"] is True
    assert table_counts(service.database_url)[1] == limit
