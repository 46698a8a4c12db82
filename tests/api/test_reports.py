"""The experiment report through the real service: a seeded experiment with a known lift, SRM, reward
aggregation, segments, time series, the offline section and the CLI formats."""

from __future__ import annotations

import csv
import io
import json
import random

import pytest

from api.cli import main

IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
          "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1")
DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
CTR = {"b0": 0.10, "b1": 0.22, "b2": 0.10}


def seed(service, **settings) -> None:
    c = service.client
    r = c.put("/v1/slots/home.hero", json={"default_block": "b0", "reward_range": [0, 1], **settings}, headers=service.admin)
    assert r.status_code in (200, 201), r.text
    for i in range(3):
        c.put(f"/v1/slots/home.hero/blocks/b{i}", json={"features": {"category": f"c{i}"}}, headers=service.admin)
    c.put("/v1/policies/editor", json={"kind": "fixed", "block": "b0"}, headers=service.admin)


def start(service, arms, **extra) -> int:
    c = service.client
    r = c.post("/v1/experiments", json={"slot": "home.hero", "control": "editor", "arms": arms, **extra},
               headers=service.admin)
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    assert c.post(f"/v1/experiments/{eid}/start", headers=service.admin).status_code == 200
    return eid


def simulate(service, units: int, seed_: int = 11, defer: bool = False, lose: str | None = None) -> None:
    """Each unit makes one decision; clicks follow CTR (true lift of b1 over b0: +12 pp)."""
    rng = random.Random(seed_)
    c = service.client
    for u in range(units):
        ua = IPHONE if u % 3 else DESKTOP
        body = {"unit_id": f"unit-{u}", "context": {"location": {"country": "DE" if u % 2 else "FR"}}}
        if defer:
            body["defer_activation"] = True
        d = c.post("/v1/slots/home.hero/decide", json=body, headers={**service.decider, "user-agent": ua}).json()
        if defer and not (d["arm"] == lose and rng.random() < 0.4):  # 40% of `lose`'s blocks never render
            c.post(f"/v1/events/{d['event_id']}/activate", headers=service.decider)
        if rng.random() < CTR[d["block"]["id"]]:
            c.post(f"/v1/events/{d['event_id']}/reward", json={"value": 1}, headers=service.decider)


ARMS = [{"name": "editor", "policy": "editor", "share": 0.5},
        {"name": "rules", "policy": {"kind": "rules", "rules": {"fallback": "b1", "exploration": 0.1}}, "share": 0.5}]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_seeded_experiment_reports_the_true_winner(service, tmp_path) -> None:
    seed(service)
    eid = start(service, ARMS, guardrails={"max_fallback_rate": 0.01, "max_latency_ms": 5000})
    simulate(service, 900)
    c = service.client
    report = c.get(f"/v1/experiments/{eid}/report", headers=service.admin).json()
    by_arm = {a["arm"]: a for a in report["arms"]}
    assert by_arm["editor"]["units"] + by_arm["rules"]["units"] == 900
    assert by_arm["editor"]["decisions"] == by_arm["editor"]["units"]
    # true means: editor 0.10, rules 0.9 * 0.22 + 0.1 * (0.22 + 0.10 + 0.10) / 3 = 0.212
    assert abs(by_arm["editor"]["mean"] - 0.10) < 0.05 and abs(by_arm["rules"]["mean"] - 0.212) < 0.06
    comparison = report["comparisons"][0]
    assert comparison["arm"] == "rules" and comparison["significant"] and comparison["absolute_lift"] > 0
    assert comparison["absolute_ci"][0] < 0.112 < comparison["absolute_ci"][1]
    assert report["verdicts"][0].startswith("arm rules beats editor by +")
    assert not report["srm"]["mismatch"] and report["summary"]["binary"]
    assert {g["name"]: g["breached"] for g in report["guardrails"]} == {"fallback_rate": False, "latency_p95_ms": False}
    # segments: device type from the User-Agent, country from the explicit context, day part from the clock
    devices = report["segments"]["device_type"]["results"]
    assert set(devices) == {"mobile", "desktop"}
    assert sum(a["units"] for a in devices["mobile"]["arms"]) == 600
    assert set(report["segments"]["country"]["results"]) == {"DE", "FR"}
    assert report["segments"]["day_part"]["results"]
    points = report["time_series"]["points"]
    assert {p["arm"] for p in points} == {"editor", "rules"} and points[-1]["units"] == by_arm[points[-1]["arm"]]["units"]
    # the offline section estimates both arms' policies from the logged exploration
    offline = report["offline"]
    assert offline["available"] and {e["arm"] for e in offline["estimates"]} == {"editor", "rules"}
    rules_dr = next(e for e in offline["estimates"] if e["arm"] == "rules")["dr"]
    assert rules_dr["ci"][0] < 0.212 < rules_dr["ci"][1]

    # CLI: md, csv, json, html from the same database
    outputs = {}
    for fmt in ("md", "csv", "json", "html"):
        path = tmp_path / f"report.{fmt}"
        assert main(["--database-url", service.database_url, "report", str(eid), "--format", fmt, "--no-offline",
                     "-o", str(path)]) == 0
        outputs[fmt] = path.read_text()
    assert "arm rules beats editor" in outputs["md"] and "| rules |" in outputs["md"]
    rows = list(csv.DictReader(io.StringIO(outputs["csv"])))
    assert {(r["dimension"], r["arm"]) for r in rows} >= {("all", "editor"), ("all", "rules"), ("device_type", "rules")}
    assert json.loads(outputs["json"])["comparisons"][0]["absolute_lift"] == pytest.approx(comparison["absolute_lift"])
    assert "<svg" in outputs["html"] and "<style>" in outputs["html"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_lost_activations_are_flagged_as_sample_ratio_mismatch(service) -> None:
    seed(service)
    eid = start(service, ARMS)
    simulate(service, 500, seed_=5, defer=True, lose="rules")
    report = service.client.get(f"/v1/experiments/{eid}/report?offline=false", headers=service.admin).json()
    assert report["srm"]["mismatch"] and report["srm"]["p_value"] < 0.001
    assert report["verdicts"][0].startswith("sample ratio mismatch")
    assert report["summary"]["excluded_never_activated"] > 50
    assert report["offline"]["available"] is False


@pytest.mark.parametrize(("aggregation", "expected"), [("sum", 1.0 + 0.0 + 0.5), ("max", 0.9 + 0.0 + 0.5),
                                                         ("first", 0.6 + 0.0 + 0.5)])
def test_reward_per_decision_follows_the_slot_aggregation(service, aggregation, expected) -> None:
    """Event 1 gets 0.6 then 0.9 (sum clipped to 1), event 2 nothing (default 0), event 3 gets 0.5."""
    seed(service, reward_aggregation=aggregation, default_reward=0.0)
    c = service.client
    eid = start(service, [{"name": "editor", "policy": "editor", "share": 0.5}, {"name": "b", "policy": "editor", "share": 0.5}])
    events = []
    for u in range(3):
        d = c.post("/v1/slots/home.hero/decide", json={"unit_id": f"same-{u}"}, headers=service.decider).json()
        events.append(d)
    for event, values in zip(events, ([0.6, 0.9], [], [0.5]), strict=True):
        for i, value in enumerate(values):
            c.post(f"/v1/events/{event['event_id']}/reward", json={"value": value, "reward_id": f"r{i}"},
                   headers=service.decider)
    report = c.get(f"/v1/experiments/{eid}/report?offline=false", headers=service.admin).json()
    assert sum(a["reward_sum"] for a in report["arms"]) == pytest.approx(expected)
    assert sum(a["rewarded_decisions"] for a in report["arms"]) == 2
    assert not report["summary"]["binary"]
