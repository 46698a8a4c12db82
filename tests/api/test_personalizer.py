"""Azure Personalizer's API, served: Microsoft's own client libraries against a live server.

``azure-cognitiveservices-personalizer`` 0.1.1 (``/personalizer/v1.0``: rank, reward, activate)
and ``azure-ai-personalizer`` 1.0.0b1 (``/personalizer/...?api-version=2022-09-01-preview``: the
same plus the administration client), pointed at ``slotbandit serve``; the learner runs in-test
on the server's database as ``slotbandit learn`` would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest

from api.personalizer import mapping
from tests.conftest import create_keys
from tests.e2e.live import LiveServer

pytest.importorskip("azure.ai.personalizer")
pytest.importorskip("azure.cognitiveservices.personalizer")

from azure.ai.personalizer import PersonalizerAdministrationClient  # noqa: E402
from azure.ai.personalizer import PersonalizerClient as NewClient  # noqa: E402
from azure.cognitiveservices.personalizer import PersonalizerClient as OldClient  # noqa: E402
from azure.cognitiveservices.personalizer.models import (  # noqa: E402
    ErrorResponseException,
    RankableAction,
    RankRequest,
)
from azure.core.credentials import AzureKeyCredential  # noqa: E402
from azure.core.exceptions import HttpResponseError  # noqa: E402
from msrest.authentication import CognitiveServicesCredentials  # noqa: E402
from msrest.exceptions import HttpOperationError  # noqa: E402

ACTIONS = [
    {"id": "news", "features": [{"topic": "news", "length": 3}, {"tags": ["daily", "world"]}]},
    {"id": "sports", "features": [{"topic": "sports", "media": {"video": True}}]},
    {"id": "cooking", "features": [{"topic": "food"}]},
]
CONTEXT = [{"user": {"tier": "gold", "visits": 4}}, {"device": {"kind": "phone"}}]


@pytest.fixture
def live(database_url: str, tmp_path: Path) -> Iterator[tuple[LiveServer, str, str]]:
    """A live server on a SQLite file, and on PostgreSQL when the tests have one."""
    admin_key, decide_key = create_keys(database_url)
    server = LiveServer(database_url, tmp_path, extra_env={"SLOTBANDIT_MODEL_POLL_INTERVAL_S": "0.2"}).start()
    try:
        yield server, admin_key, decide_key
    finally:
        server.stop()


@pytest.fixture
def clients() -> Iterator[list]:
    """Every client made in a test, closed at its end (their sessions hold sockets)."""
    made: list = []
    yield made
    for client in made:
        client.close()


def _event(server: LiveServer, admin_key: str, event_id: str) -> dict:
    r = httpx.get(f"{server.url}/v1/events/{event_id}", headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_v1_0_client_ranks_rewards_and_activates(live, clients) -> None:
    server, admin_key, decide_key = live
    client = OldClient(server.url, CognitiveServicesCredentials(decide_key))
    clients.append(client)
    actions = [RankableAction(id=a["id"], features=a["features"]) for a in ACTIONS]
    iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148"
    response = client.rank(RankRequest(actions=actions, context_features=CONTEXT, excluded_actions=["cooking"],
                                       event_id="old-1", defer_activation=True),
                           custom_headers={"User-Agent": iphone, "CF-IPCountry": "DE"})
    assert response.event_id == "old-1"
    assert response.reward_action_id in ("news", "sports")
    ranking = {a.id: a.probability for a in response.ranking}
    assert set(ranking) == {"news", "sports", "cooking"} and ranking["cooking"] == 0.0
    assert response.ranking[0].id == response.reward_action_id
    assert sum(ranking.values()) == pytest.approx(1.0)

    logged = _event(server, admin_key, "old-1")
    decision = logged
    assert decision["deferred"] is True and decision["activated_at"] is None
    assert decision["chosen_block"] == response.reward_action_id
    assert decision["probability"] == pytest.approx(ranking[response.reward_action_id])
    assert decision["context"]["user"] == {"user.tier": "gold", "user.visits": 4.0, "device.kind": "phone"}
    # what the client did not send is derived from the request, as on /v1
    assert decision["context"]["device"]["type"] == "mobile" and decision["context"]["location"]["country"] == "DE"
    assert "daypart" in decision["context"]["time"]

    # idempotent: the same event id answers the logged decision
    again = client.rank(RankRequest(actions=actions, excluded_actions=["cooking"], event_id="old-1"))
    assert again.reward_action_id == response.reward_action_id

    client.events.activate("old-1")
    client.events.activate("old-1")  # a repeat is a no-op
    client.events.reward("old-1", 1.0)
    logged = _event(server, admin_key, "old-1")
    assert [r["value"] for r in logged["rewards"]] == [1.0]
    assert logged["activated_at"] is not None

    with pytest.raises(HttpOperationError) as caught:  # the events operations raise the plain error
        client.events.reward("no-such-event", 1.0)
    assert caught.value.response.status_code == 404
    assert caught.value.response.json()["error"]["code"] == "ResourceNotFound"
    with pytest.raises(ErrorResponseException) as caught:
        client.rank(RankRequest(actions=actions, excluded_actions=["news", "sports", "cooking"]))
    assert caught.value.response.status_code == 400 and caught.value.error.error.code == "BadRequest"


def test_the_new_client_ranks_rewards_and_activates(live, clients) -> None:
    server, admin_key, decide_key = live
    client = NewClient(server.url, AzureKeyCredential(decide_key))
    clients.append(client)
    response = client.rank({"actions": ACTIONS, "contextFeatures": CONTEXT, "excludedActions": ["news"],
                            "deferActivation": True, "someFieldPersonalizerNeverHad": 1})
    assert response["rewardActionId"] in ("sports", "cooking")
    assert {a["id"] for a in response["ranking"]} == {"news", "sports", "cooking"}
    event_id = response["eventId"]
    client.activate(event_id)
    client.reward(event_id, {"value": 0.5})
    assert [r["value"] for r in _event(server, admin_key, event_id)["rewards"]] == [0.5]
    with pytest.raises(HttpResponseError) as caught:
        client.reward(event_id, {"value": 7.0})  # outside the slot's reward range [-1, 1]
    assert caught.value.status_code == 400 and caught.value.error.code == "BadRequest"

    # the decide key may not administer; the admin key may
    with pytest.raises(HttpResponseError) as caught:
        clients.append(PersonalizerAdministrationClient(server.url, AzureKeyCredential(decide_key)))
        clients[-1].get_policy()
    assert caught.value.status_code == 403
    with pytest.raises(HttpResponseError) as caught:
        clients.append(NewClient(server.url, AzureKeyCredential("wrong")))
        clients[-1].rank({"actions": ACTIONS})
    assert caught.value.status_code == 401


def test_service_and_policy_configuration_with_the_new_client(live, clients) -> None:
    server, admin_key, decide_key = live
    admin = PersonalizerAdministrationClient(server.url, AzureKeyCredential(admin_key))
    clients.append(admin)
    config = admin.get_service_configuration()
    assert config["learningMode"] == "Online" and config["rewardAggregation"] in ("Sum", "Earliest", "Max")
    config.update(rewardWaitTime="PT5M", defaultReward=0.25, rewardAggregation="Earliest", learningMode="Apprentice")
    changed = admin.update_service_configuration(config)
    assert (changed["rewardWaitTime"], changed["defaultReward"], changed["rewardAggregation"],
            changed["learningMode"]) == ("PT5M", 0.25, "Earliest", "Apprentice")
    slot = httpx.get(f"{server.url}/v1/slots/personalizer", headers={"Authorization": f"Bearer {admin_key}"}).json()
    assert (slot["reward_window_s"], slot["learning_mode"], slot["reward_aggregation"]) == (300, "apprentice", "first")
    with pytest.raises(HttpResponseError) as caught:
        admin.update_service_configuration({**changed, "rewardAggregation": "Average"})
    assert caught.value.status_code == 400 and "rewardAggregation" in str(caught.value)

    changed = admin.update_service_configuration({**changed, "explorationPercentage": 20, "learningMode": "Online"})
    assert changed["explorationPercentage"] == pytest.approx(20.0)
    policy = admin.get_policy()
    assert "--epsilon 0.2" in policy["arguments"] and "--cb_explore_adf" in policy["arguments"]

    updated = admin.update_policy({"name": "mine", "arguments": "--cb_explore_adf --squarecb --gamma_scale 100 "
                                                                "-q UA -q DA -l 0.1"})
    assert "--squarecb --gamma_scale 100.0" in updated["arguments"] and "--interactions UA" in updated["arguments"]
    with pytest.raises(HttpResponseError) as caught:
        admin.update_policy({"name": "theirs", "arguments": "--cb_explore_adf --epsilon 0.2 --dsjson"})
    assert caught.value.status_code == 400 and "--dsjson" in caught.value.error.message
    with pytest.raises(HttpResponseError) as caught:
        admin.update_policy({"name": "theirs", "arguments": "--cb_explore_adf -q GT"})
    assert caught.value.status_code == 400 and "GT" in caught.value.error.message
    assert admin.get_policy() == updated  # nothing changed by a refused update
    reset = admin.reset_policy()
    assert "--squarecb --gamma_scale 1000.0" in reset["arguments"]


def _learn(database_url: str) -> None:
    from api.db.engine import make_engine
    from api.learner import Learner, LearnerSettings

    engine = make_engine(database_url)
    try:
        learner = Learner(engine, LearnerSettings(safety_margin_s=0.0, snapshot_every=1, snapshot_interval_s=0.0))
        while learner.step(datetime.now(UTC) + timedelta(days=1)).learned:
            pass
    finally:
        engine.dispose()


def test_learning_changes_the_ranking_and_the_model_moves(live, clients) -> None:
    server, admin_key, decide_key = live
    client = NewClient(server.url, AzureKeyCredential(decide_key))
    clients.append(client)
    admin = PersonalizerAdministrationClient(server.url, AzureKeyCredential(admin_key))
    clients.append(admin)
    admin.update_service_configuration({**admin.get_service_configuration(), "rewardWaitTime": "PT5S"})
    nothing = httpx.get(f"{server.url}/personalizer/model", headers={"Ocp-Apim-Subscription-Key": admin_key})
    assert nothing.status_code == 404 and nothing.json()["error"]["code"] == "ResourceNotFound"  # nothing learned yet

    def share_of_sports(n: int, reward: bool) -> float:
        chosen = 0
        for _ in range(n):
            r = client.rank({"actions": ACTIONS, "contextFeatures": CONTEXT})
            chosen += r["rewardActionId"] == "sports"
            if reward:
                client.reward(r["eventId"], {"value": 1.0 if r["rewardActionId"] == "sports" else 0.0})
        return chosen / n

    before = share_of_sports(150, reward=True)
    _learn(server.database_url)
    deadline = time.monotonic() + 10
    probability = 0.0
    while time.monotonic() < deadline:
        ranking = {a["id"]: a["probability"] for a in client.rank({"actions": ACTIONS, "contextFeatures": CONTEXT})["ranking"]}
        probability = ranking["sports"]
        if probability > 0.8:
            break
        time.sleep(0.3)
    assert before < 0.6 and probability > 0.8

    model = b"".join(admin.export_model())
    assert len(model) > 1000
    properties = admin.get_model_properties()
    assert properties["lastModifiedTime"] and properties["creationTime"]
    admin.reset_model()
    admin.import_model(model)
    assert b"".join(admin.export_model()) == model
    assert admin.get_log_properties()["dateRange"]["from"]
    event_id = client.rank({"actions": ACTIONS})["eventId"]
    admin.delete_logs()
    assert admin.get_log_properties()["dateRange"] == {}
    assert httpx.get(f"{server.url}/v1/events/{event_id}", headers={"Authorization": f"Bearer {admin_key}"}).status_code == 404
    assert b"".join(admin.export_model()) == model  # the model stays


def test_an_evaluation_created_read_back_applied_and_deleted(live, clients) -> None:
    server, admin_key, decide_key = live
    client = NewClient(server.url, AzureKeyCredential(decide_key))
    admin = PersonalizerAdministrationClient(server.url, AzureKeyCredential(admin_key))
    clients += [client, admin]
    admin.update_service_configuration({**admin.get_service_configuration(), "rewardWaitTime": "PT0S"})
    for _ in range(80):
        r = client.rank({"actions": ACTIONS, "contextFeatures": CONTEXT})
        client.reward(r["eventId"], {"value": 1.0 if r["rewardActionId"] == "sports" else 0.0})
    now = datetime.now(UTC)
    window = {"startTime": (now - timedelta(hours=1)).isoformat(), "endTime": (now + timedelta(hours=1)).isoformat()}
    with pytest.raises(HttpResponseError) as caught:
        admin.create_evaluation("bad", {"name": "bad", **window,
                                        "policies": [{"name": "x", "arguments": "--cb_explore_adf --bootstrap 4"}]})
    assert caught.value.status_code == 400 and "--bootstrap" in caught.value.error.message
    admin.create_evaluation("eval-1", {"name": "greedier", **window, "policies": [
        {"name": "epsilon 20%", "arguments": "--cb_explore_adf --epsilon 0.2 -q UA"}]})
    with pytest.raises(HttpResponseError) as caught:
        admin.create_evaluation("eval-1", {"name": "again", **window})
    assert caught.value.status_code == 409
    deadline = time.monotonic() + 120
    while True:
        evaluation = admin.get_evaluation("eval-1", start_time=now - timedelta(hours=1), end_time=now)
        if evaluation["status"] != "Running" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert evaluation["status"] == "Succeeded", evaluation
    assert (evaluation["id"], evaluation["name"], evaluation["evaluationType"]) == ("eval-1", "greedier", "Manual")
    results = {item["name"]: item for item in evaluation["content"]["value"]}
    assert results["epsilon 20%"]["policySource"] == "Custom"
    assert results["epsilon 20%"]["arguments"] == "--cb_explore_adf --epsilon 0.2 -q UA"
    assert {item["policySource"] for item in results.values()} >= {"Online", "Random", "Custom"}
    for item in results.values():
        low, high = item["summary"]["confidenceInterval"]
        assert low <= item["summary"]["expectedReward"] <= high
    assert [e["id"] for e in admin.list_evaluations()] == ["eval-1"]

    admin.apply_from_evaluation({"evaluationId": "eval-1", "policyName": "epsilon 20%"})
    assert "--epsilon 0.2" in admin.get_policy()["arguments"]
    assert admin.get_evaluation("eval-1", start_time=now, end_time=now)["status"] == "OptimalPolicyApplied"
    admin.create_feature_importance("fi-1", {"name": "what matters", **window})
    deadline = time.monotonic() + 120
    while (importance := admin.get_feature_importance("fi-1"))["status"] == "Running" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert importance["status"] == "Succeeded", importance
    assert {s["namespace"] for s in importance["featureScores"]} == {"time", "device", "location", "user"}
    assert [f["id"] for f in admin.list_feature_importances()] == ["fi-1"]
    assert [e["id"] for e in admin.list_evaluations()] == ["eval-1"]  # each kind lists its own
    admin.delete_feature_importance("fi-1")
    assert list(admin.list_feature_importances()) == []
    admin.delete_evaluation("eval-1")
    with pytest.raises(HttpResponseError) as caught:
        admin.get_evaluation("eval-1", start_time=now, end_time=now)
    assert caught.value.status_code == 404 and caught.value.error.code == "ResourceNotFound"


def test_a_second_service_is_another_slot(live, clients) -> None:
    server, admin_key, decide_key = live
    r = httpx.put(f"{server.url}/v1/slots/news.hero", json={"reward_range": [-1, 1], "reward_window_s": 60},
                  headers={"Authorization": f"Bearer {admin_key}"})
    assert r.status_code == 201, r.text
    endpoint = f"{server.url}/services/news.hero"
    client = NewClient(endpoint, AzureKeyCredential(decide_key))
    admin = PersonalizerAdministrationClient(endpoint, AzureKeyCredential(admin_key))
    old = OldClient(endpoint, CognitiveServicesCredentials(decide_key))
    clients += [client, admin, old]
    event_id = client.rank({"actions": ACTIONS, "contextFeatures": CONTEXT})["eventId"]
    client.reward(event_id, {"value": 1.0})
    assert old.rank(RankRequest(actions=[RankableAction(id="a", features=[{"k": "v"}])])).reward_action_id == "a"
    assert _event(server, admin_key, event_id)["policy_name"] == "news.hero"
    assert admin.get_service_configuration()["rewardWaitTime"] == "PT1M"
    default = PersonalizerAdministrationClient(server.url, AzureKeyCredential(admin_key))
    clients.append(default)
    assert default.get_service_configuration()["rewardWaitTime"] != "PT1M"
    missing = PersonalizerAdministrationClient(f"{server.url}/services/nope", AzureKeyCredential(admin_key))
    clients.append(missing)
    for call in (missing.get_policy, lambda: missing.update_policy({"name": "x", "arguments": "--epsilon 0.1"})):
        with pytest.raises(HttpResponseError) as caught:
            call()
        assert caught.value.status_code == 404 and caught.value.error.code == "ResourceNotFound"
    slots = httpx.get(f"{server.url}/v1/slots", headers={"Authorization": f"Bearer {admin_key}"}).json()["slots"]
    assert "nope" not in {slot["name"] for slot in slots}


RANK = {"actions": [{"id": "a", "features": [{"k": "v"}]}, {"id": "b", "features": []}]}


@pytest.mark.parametrize(
    ("path", "body", "status", "target"),
    [
        ("/rank", b"{not json", 400, "body"),
        ("/rank", b"[]", 400, "body"),
        ("/rank", {}, 400, "actions"),
        ("/rank", {"actions": []}, 400, "actions"),
        ("/rank", {"actions": [{"features": []}]}, 400, "actions[0].id"),
        ("/rank", {"actions": [{"id": "a"}, {"id": "a"}]}, 400, "candidates.1.id"),
        ("/rank", {**RANK, "contextFeatures": "user"}, 400, "contextFeatures"),
        ("/rank", {**RANK, "contextFeatures": [1]}, 400, "contextFeatures[0]"),
        ("/rank", {**RANK, "contextFeatures": [{f"f{i}": i for i in range(40)}]}, 400, "context.user"),
        ("/rank", {**RANK, "excludedActions": "a"}, 400, "excludedActions"),
        ("/rank", {**RANK, "excludedActions": ["a", "b"]}, 400, "exclude"),
        ("/rank", {**RANK, "eventId": 5}, 400, "eventId"),
        ("/rank", {**RANK, "eventId": "e" * 300}, 400, "event_id"),
        ("/rank", {**RANK, "deferActivation": "yes"}, 400, "deferActivation"),
        ("/rank", {"actions": [{"id": "a", "features": [{"x": {"y": {"z": {"w": {"v": {"u": {"t": {"s": {"r": {"q": 1}}}}}}}}}}]}]},
         400, "actions[0].features[0]"),
        ("/events/nope/reward", {"value": 1}, 404, "event_id"),
        ("/events/nope/reward", {"value": "high"}, 400, "value"),
        ("/events/nope/activate", {}, 404, "event_id"),
    ],
)
def test_invalid_requests_get_personalizer_errors(service, path: str, body, status: int, target: str) -> None:
    content = body if isinstance(body, bytes) else msgspec.json.encode(body)
    headers = {"Ocp-Apim-Subscription-Key": service.decide_key, "Content-Type": "application/json"}
    for prefix in ("/personalizer/v1.0", "/personalizer"):
        r = service.client.post(f"{prefix}{path}", content=content, headers=headers)
        assert r.status_code == status, r.text
        error = r.json()["error"]
        assert error["code"] == {400: "BadRequest", 404: "ResourceNotFound"}[status]
        assert error["target"] == target and error["message"]


def test_the_flattening_of_nested_features() -> None:
    flat = mapping.flatten_features(
        [{"a": {"b": 1, "c": [1.5, {"d": "x"}], "tags": ["p", "q"], "none": None}}, {"e": True}], "contextFeatures"
    )
    assert flat == {"a.b": 1.0, "a.c.0": 1.5, "a.c.1.d": "x", "a.tags.p": True, "a.tags.q": True, "e": True}


@pytest.mark.parametrize(
    ("arguments", "refused"),
    [("--cb_explore_adf --dsjson", "--dsjson"), ("--epsilon", "--epsilon"), ("--squarecb --softmax", "--softmax"),
     ("--ignore_linear T", "--ignore_linear"), ("--epsilon abc", "--epsilon"), ("--power_t nan", "--power_t")],
)
def test_refused_vw_arguments_are_named(arguments: str, refused: str) -> None:
    from api.errors import ApiError

    with pytest.raises(ApiError) as caught:
        mapping.parse_policy_arguments(arguments)
    assert caught.value.status == 400 and refused in caught.value.detail


def test_vw_arguments_round_trip() -> None:
    from bandits.policies import VWConfig

    for config in (VWConfig(), VWConfig(exploration="epsilon", epsilon=0.2, cb_type="ips"),
                   VWConfig(exploration="cover", cover=4, interactions=("UA", "TDA"), ignore_linear_context=False),
                   VWConfig(exploration="softmax", softmax_lambda=3.0, l2=0.01, bits=20)):
        parsed = mapping.parse_policy_arguments(mapping.policy_arguments(config.to_args()))
        assert VWConfig.from_dict({"ignore_linear_context": False, **parsed}) == config


@pytest.mark.parametrize(("text", "seconds"), [("PT5M", 300), ("P1DT2H", 93600), ("PT0.5S", 0.5), ("00:10:00", 600),
                                               ("1.00:00:05", 86405)])
def test_durations(text: str, seconds: float) -> None:
    assert mapping.parse_duration(text, "rewardWaitTime") == seconds
    if seconds == int(seconds):
        assert mapping.parse_duration(mapping.format_duration(seconds), "x") == seconds
