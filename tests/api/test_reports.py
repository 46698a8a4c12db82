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


def _fix_salt(url: str, experiment_id: int) -> None:
    """A fixed assignment salt: with seeded event ids the whole simulation is reproducible."""
    from sqlalchemy import update

    from api.db.engine import make_engine
    from api.db.experiment_models import Experiment

    engine = make_engine(url)
    with engine.begin() as c:
        c.execute(update(Experiment).where(Experiment.id == experiment_id).values(salt="5eed" * 8))
    engine.dispose()


def start(service, arms, **extra) -> int:
    c = service.client
    r = c.post("/v1/experiments", json={"slot": "home.hero", "control": "editor", "arms": arms, **extra},
               headers=service.admin)
    assert r.status_code == 201, r.text
    eid = r.json()["id"]
    _fix_salt(service.database_url, eid)
    assert c.post(f"/v1/experiments/{eid}/start", headers=service.admin).status_code == 200
    return eid


def simulate(service, units: int, seed_: int = 11, defer: bool = False, lose: str | None = None) -> None:
    """Each unit makes one decision; clicks follow CTR (true lift of b1 over b0: +12 pp)."""
    rng = random.Random(seed_)
    c = service.client
    for u in range(units):
        ua = IPHONE if u % 3 else DESKTOP
        body = {"unit_id": f"unit-{u}", "event_id": f"ev-{seed_}-{u}",  # seeded: the draws are reproducible
                "context": {"location": {"country": "DE" if u % 2 else "FR"}}}
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


# ----------------------------------------------------------------------------- the fast report path against a reference

def _seed_log(url: str, aggregation: str, messy: bool, seed: int = 3) -> tuple[int, dict]:
    """A small experiment written straight into the log: 3 arms, ~150 units, deferred decisions, activations,
    rewards (several per event, awkward floats, some after the window). ``messy`` adds what only old or foreign
    rows hold: no unit key, a unit key and a country holding the separator, a device type outside the
    vocabulary, missing segment columns, a decision of an arm the experiment does not have."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert

    from api.db.engine import make_engine, migrate
    from api.db.experiment_models import Experiment, ExperimentArm
    from api.db.models import Activation, Decision, Policy, Reward, Slot

    migrate(url)
    rng = random.Random(seed)
    engine = make_engine(url)
    start = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    slot_values = dict(name="s.hero", default_block="b0", timezone="UTC", reward_window_s=600, default_reward=0.25,
                       reward_aggregation=aggregation, reward_min=0.0, reward_max=1.5, learning_mode="online",
                       require_activation=False, policy_name="s.hero", catalog_version=0, revision=1,
                       created_at=start, updated_at=start)
    with engine.begin() as c:
        slot_id = c.execute(insert(Slot).values(**slot_values)).inserted_primary_key[0]
        for name in ("p.a", "p.b", "p.c"):
            c.execute(insert(Policy).values(name=name, kind="uniform", config={"kind": "uniform"}, revision=1,
                                            created_at=start, updated_at=start))
        eid = c.execute(insert(Experiment).values(
            name="x", slot_id=slot_id, status="stopped", control_arm="a", metric="reward_per_decision",
            learning_start="scratch", analysis={}, guardrails={}, salt="00", revision=1, created_at=start,
            started_at=start, stopped_at=start + timedelta(days=2))).inserted_primary_key[0]
        for position, (arm, policy) in enumerate((("a", "p.a"), ("b", "p.b"), ("c", "p.c"))):
            c.execute(insert(ExperimentArm).values(experiment_id=eid, position=position, name=arm,
                                                   policy_name=policy, share=1 / 3))
        devices = ["mobile", "desktop", "tablet", "unknown"] + (["smart-tv", None] if messy else [])
        countries = ["DE", "FR", "US", "unknown"] + ([None, "X\x1fY"] if messy else [])
        dayparts = ["night", "morning", "afternoon", "evening"] + ([None] if messy else [])
        units = [f"{rng.getrandbits(128):032x}" for _ in range(150)]
        if messy:
            units += ["legacy-unit", "odd\x1funit"]
        rows, rewards, activations = [], [], []
        for i in range(600):
            created = start + timedelta(seconds=i * 290 + rng.randrange(60))
            unit = rng.choice(units)
            arm = "abc"[int(unit[:2], 16) % 3] if unit[0] in "0123456789abcdef" else "b"
            if messy and i % 97 == 5:
                unit = None
            if messy and i % 151 == 7:
                arm = "ghost"
            other = messy and i % 10 == 3  # a decision outside the experiment, between its decisions
            rows.append(dict(
                event_id=f"ev{i}", slot_id=slot_id, policy_name=f"p.{arm}", policy_kind="uniform", model_version=0,
                trained=False, learning_mode="online", catalog_version=None, candidate_ids=["b0", "b1"],
                pmf=[0.5, 0.5], chosen_index=0, chosen_block="b0", probability=0.5, context={}, unit_key=unit,
                experiment_id=None if other else eid, arm=None if other else arm, consent=True, deferred=rng.random() < 0.3, fallback=rng.random() < 0.05,
                fallback_reason=None, created_at=created, device_type=rng.choice(devices),
                country=rng.choice(countries), daypart=rng.choice(dayparts)))
            if rng.random() < 0.6:
                activations.append(dict(event_id=f"ev{i}", created_at=created + timedelta(seconds=1)))
            for k in range(rng.choice([0, 0, 1, 1, 2, 3])):
                late = rng.random() < 0.15
                rewards.append(dict(event_id=f"ev{i}", reward_id=f"r{k}", value=rng.choice([1.0, 0.1, 0.7, 1 / 3, 0.2]),
                                    created_at=created + timedelta(seconds=900 if late else 5 + k)))
        rng.shuffle(rewards)  # reward ids in arrival order, not event order
        if messy:  # reward ids far above the decisions' seqs
            rewards = [dict(r, id=10_000 + k) for k, r in enumerate(rewards)]
        c.execute(insert(Decision), rows)
        c.execute(insert(Reward), rewards)
        c.execute(insert(Activation), activations)
    engine.dispose()
    return eid, slot_values


def _reference_data(connection, experiment_id, arms, slot, bucket="day"):
    """The report's exposures computed the plain way: rows in Python, dictionaries, no SQL aggregation."""
    import numpy as np
    from sqlalchemy import select

    from api.db.models import Activation, Decision, Reward
    from api.reports import ExperimentData

    decisions = connection.execute(select(Decision.__table__).where(Decision.experiment_id == experiment_id)
                                   .order_by(Decision.seq)).mappings().all()
    activated_events = set(connection.execute(select(Activation.event_id)).scalars())
    created = {d["event_id"]: d["created_at"] for d in decisions}
    got: dict[str, list[float]] = {}
    for event_id, value, at in connection.execute(select(Reward.event_id, Reward.value, Reward.created_at)
                                                  .order_by(Reward.id)).all():
        if event_id in created and (at - created[event_id]).total_seconds() <= slot["reward_window_s"]:
            got.setdefault(event_id, []).append(value)

    def code(values):
        index: dict = {}
        return [index.setdefault(v, len(index)) for v in values], tuple(index)

    rule = {"sum": sum, "max": max, "first": lambda v: v[0]}[slot["reward_aggregation"]]
    rewards = [min(max(rule(got[d["event_id"]]), slot["reward_min"]), slot["reward_max"]) if d["event_id"] in got
               else slot["default_reward"] for d in decisions]
    activated = [d["event_id"] in activated_events for d in decisions]
    shown = [not d["deferred"] or a for d, a in zip(decisions, activated, strict=True)]
    arm = [arms.index(d["arm"]) if d["arm"] in arms else -1 for d in decisions]
    keep = np.array([s and a >= 0 for s, a in zip(shown, arm, strict=True)], dtype=bool)
    units, _ = code([d["unit_key"] or d["event_id"] for d in decisions])
    fmt = "%Y-%m-%d %H" if bucket == "hour" else "%Y-%m-%d"
    buckets, bucket_labels = code([d["created_at"].strftime(fmt) for d in decisions])
    segments = {}
    for dimension, column in (("device_type", "device_type"), ("country", "country"), ("day_part", "daypart")):
        codes, labels = code([d[column] or "unknown" for d in decisions])
        segments[dimension] = (np.array(codes)[keep], labels)

    def kept(values, dtype):
        return np.array(values, dtype=dtype)[keep]

    return ExperimentData(arm=kept(arm, np.int64), unit=kept(units, np.int64), reward=kept(rewards, np.float64),
                          rewarded=kept([d["event_id"] in got for d in decisions], bool),
                          activated=kept(activated, bool), fallback=kept([d["fallback"] for d in decisions], bool),
                          segments=segments, bucket=kept(buckets, np.int64), bucket_labels=bucket_labels,
                          excluded=int(len(decisions) - sum(shown)))


@pytest.mark.parametrize("messy", [False, True])
@pytest.mark.parametrize("aggregation", ["sum", "max", "first"])
def test_fast_report_equals_the_reference_computation(database_url, aggregation, messy, monkeypatch) -> None:
    """The joined-column scan and its numpy encoding give the very report that plain Python gives."""
    from api.db.engine import make_engine
    from api.reports import build, scan

    eid, _ = _seed_log(database_url, aggregation, messy)
    engine = make_engine(database_url)
    try:
        for bucket in ("day", "hour"):
            with monkeypatch.context() as patch:
                if not messy:  # clean rows never take the Python path
                    patch.setattr(scan, "_codes", lambda *a: pytest.fail("slow path on clean rows"))
                fast = build.build_report(engine, eid, bucket=bucket, offline=False, cache=False)
            with monkeypatch.context() as patch:
                patch.setattr(build, "fetch_experiment_data", _reference_data)
                reference = build.build_report(engine, eid, bucket=bucket, offline=False, cache=False)
            for report in (fast, reference):
                report.pop("generated_at"), report.pop("timing_ms")
            assert fast == reference
            assert fast["summary"]["excluded_never_activated"] > 0 and fast["summary"]["decisions"] > 300
            assert {a["arm"] for a in fast["arms"]} == {"a", "b", "c"} and not fast["summary"]["binary"]
            if messy:
                assert "smart-tv" in fast["segments"]["device_type"]["results"]
                assert "X\x1fY" in fast["segments"]["country"]["results"]
    finally:
        engine.dispose()


def test_report_cache_serves_repeats_and_notices_new_rewards(sqlite_url) -> None:
    from datetime import datetime

    from sqlalchemy import insert

    from api.db.engine import make_engine
    from api.db.models import Reward
    from api.reports import build

    eid, _ = _seed_log(sqlite_url, "sum", messy=False)
    engine = make_engine(sqlite_url)
    build.clear_report_cache()
    try:
        first = build.build_report(engine, eid, bucket="day", offline=False)
        again = build.build_report(engine, eid, bucket="day", offline=False)
        assert not first["timing_ms"]["cached"] and again["timing_ms"]["cached"]
        assert again["arms"] == first["arms"] and again["segments"] == first["segments"]
        with engine.begin() as c:  # a reward for the first decision, within its window
            c.execute(insert(Reward).values(event_id="ev0", reward_id="late-click", value=0.5,
                                            created_at=datetime.fromisoformat(first["experiment"]["started_at"])))
        fresh = build.build_report(engine, eid, bucket="day", offline=False)
        assert not fresh["timing_ms"]["cached"]
        assert build.build_report(engine, eid, bucket="day", offline=False, latency={"p95": 1.0})["timing_ms"][
            "cached"]
    finally:
        build.clear_report_cache()
        engine.dispose()


def test_migration_backfills_the_segment_columns_from_the_context(database_url) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import text

    from api.db.engine import make_engine, migrate

    migrate(database_url, "0004")
    engine = make_engine(database_url)
    contexts = [{"device": {"type": "mobile"}, "location": {"country": "DE"}, "time": {"daypart": "evening"}},
                {"device": {}, "location": {}, "time": {"daypart": "night"}}]
    try:
        with engine.begin() as c:
            for i, context in enumerate(contexts):
                c.execute(text(
                    "INSERT INTO decisions (event_id, slot_id, policy_name, policy_kind, model_version, trained, "
                    "learning_mode, candidate_ids, pmf, chosen_index, chosen_block, probability, context, consent, "
                    "deferred, fallback, created_at) VALUES (:e, 1, 'p', 'uniform', 0, false, 'online', '[\"b\"]', "
                    "'[1.0]', 0, 'b', 1.0, :c, true, false, false, :t)"),
                    {"e": f"e{i}", "c": json.dumps(context), "t": datetime(2026, 1, 1, tzinfo=UTC)})
        migrate(database_url)
        with engine.connect() as c:
            rows = c.execute(text("SELECT device_type, country, daypart FROM decisions ORDER BY seq")).all()
        assert [tuple(r) for r in rows] == [("mobile", "DE", "evening"), (None, None, "night")]
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------- the report copy against a read of the log

def _append_log(engine, eid: int, first: int, count: int, seed: int, *, old_rewards: int = 0, live: bool = False) -> None:
    """``count`` more decisions of experiment ``eid`` (event ids ev{first}...), half of them from units already in
    the log; rewards and activations for them, and ``old_rewards`` rewards and activations for decisions already
    logged (inside and outside their window), as they keep arriving while an experiment runs. ``live``: the
    decisions were made 60 to 12 seconds ago and their rewards arrive now."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, select

    from api.db.models import Activation, Decision, Reward

    rng = random.Random(seed)
    with engine.begin() as c:
        old = c.execute(select(Decision.event_id, Decision.unit_key, Decision.arm, Decision.slot_id,
                               Decision.created_at, Decision.deferred)
                        .where(Decision.experiment_id == eid).order_by(Decision.seq)).all()
        activated = set(c.execute(select(Activation.event_id)).scalars())
        last = old[-1].created_at
        rows, rewards, activations = [], [], []
        for i in range(first, first + count):
            if rng.random() < 0.5:
                pick = rng.choice(old)
                unit, arm = pick.unit_key, pick.arm
            else:
                unit, arm = f"{rng.getrandbits(128):032x}", rng.choice("abc")
            created = (datetime.now(UTC) - timedelta(seconds=60 - 48 * (i - first) / count) if live
                       else last + timedelta(seconds=(i - first + 1) * 290))
            rows.append(dict(
                event_id=f"ev{i}", slot_id=old[0].slot_id, policy_name=f"p.{arm}", policy_kind="uniform",
                model_version=0, trained=False, learning_mode="online", catalog_version=None,
                candidate_ids=["b0", "b1"], pmf=[0.5, 0.5], chosen_index=0, chosen_block="b0", probability=0.5,
                context={}, unit_key=unit, experiment_id=eid, arm=arm, consent=True, deferred=rng.random() < 0.3,
                fallback=rng.random() < 0.05, fallback_reason=None, created_at=created,
                device_type=rng.choice(["mobile", "desktop", "tv"]), country=rng.choice(["DE", "BR", "unknown"]),
                daypart=rng.choice(["night", "morning"])))
            if rng.random() < 0.6:  # stamped when it arrives (PostgreSQL's copy keys activations by that time)
                activations.append(dict(event_id=f"ev{i}", created_at=datetime.now(UTC)))
            if rng.random() < (0.9 if live else 0.4):
                rewards.append(dict(event_id=f"ev{i}", reward_id="r0", value=rng.choice([1.0, 0.3, 1 / 7]),
                                    created_at=datetime.now(UTC) if live else created + timedelta(seconds=3)))
        for k, pick in enumerate(rng.sample(old, old_rewards)):
            late = k % 4 == 0
            rewards.append(dict(event_id=pick.event_id, reward_id=f"again{first}-{k}", value=rng.choice([0.5, 2 / 3]),
                                created_at=pick.created_at + timedelta(seconds=900 if late else 60)))
            if pick.deferred and pick.event_id not in activated:  # a deferred block finally shown
                activations.append(dict(event_id=pick.event_id, created_at=datetime.now(UTC)))
                activated.add(pick.event_id)
        c.execute(insert(Decision), rows)
        c.execute(insert(Reward), rewards)
        if activations:
            c.execute(insert(Activation), activations)


@pytest.mark.parametrize("aggregation", ["sum", "first"])
def test_report_copy_equals_a_read_of_the_whole_log(database_url, aggregation, monkeypatch) -> None:
    """The report built from the stored copy plus the rows past its cursors equals the report read from the
    whole log (and the plain-Python reference), after new decisions, rewards and activations arrive, after a
    restart, through appended chunks and their compaction, and after what voids a copy: a row below a cursor
    committing late, an erased unit, a purge."""
    from datetime import UTC, datetime

    from sqlalchemy import func, insert, select

    from api.db import queries
    from api.db.engine import make_engine
    from api.db.experiment_models import ReportChunk
    from api.db.models import Decision, Reward
    from api.reports import build, scan
    from api.reports import copy as report_copy

    monkeypatch.setattr(report_copy, "REPORT_COPY_MIN_DECISIONS", 50)
    monkeypatch.setattr(report_copy, "REPORT_COPY_GROWTH", 0.05)
    monkeypatch.setattr(report_copy, "REPORT_COPY_MAX_CHUNKS", 3)
    read = scan.fetch_experiment_data
    eid, _ = _seed_log(database_url, aggregation, messy=False)
    engine = make_engine(database_url)

    def report(patched=None, bucket="day", offline=False):
        with monkeypatch.context() as patch:
            if patched is not None:
                patch.setattr(build, "fetch_experiment_data", patched)
            body = build.build_report(engine, eid, bucket=bucket, offline=offline, cache=False)
        body.pop("generated_at")
        return body, body.pop("timing_ms")

    def check(offline=False, **expected):
        sources = []
        for bucket in ("day", "hour"):  # the second report finds what the first one wrote
            copied, timing = report(bucket=bucket)
            whole, _ = report(lambda *a, **k: read(*a, **k, use_copy=False), bucket)
            reference, _ = report(_reference_data, bucket)
            assert copied == whole == reference
            sources.append(timing["source"])
        for key, value in expected.items():
            assert sources[0][key] == value, (key, sources[0])
        if offline:  # the offline section too (it takes its rewards from the report's rows); at the
            # first report, after a restart, on compacted chunks and after a purge: it costs seconds
            copied, _ = report(offline=True)
            assert copied == report(lambda *a, **k: read(*a, **k, use_copy=False), offline=True)[0]
            assert copied["offline"]["available"]
        return sources[0]

    def chunks():
        with engine.connect() as c:
            return c.execute(select(func.count()).select_from(ReportChunk).where(ReportChunk.experiment_id == eid)).scalar()

    try:
        check(copied_decisions=0, read_decisions=600, copy_written=True, offline=True)
        assert chunks() == 1
        check(copied_decisions=600, read_decisions=0, copy_written=False)
        _append_log(engine, eid, 600, 30, seed=1, old_rewards=40)  # below the growth threshold: read, not copied
        check(copied_decisions=600, read_decisions=30, copy_written=False)
        engine.dispose()  # a restart: a new process finds the copy in the database
        build.clear_report_cache()
        engine = make_engine(database_url)
        check(copied_decisions=600, read_decisions=30, offline=True)
        first = 630
        for round_ in range(4):  # appended chunks, then their compaction into one
            _append_log(engine, eid, first, 70, seed=2 + round_, old_rewards=25)
            first += 70
            check(copy_written=True)
            assert chunks() == (2, 3, 1, 2)[round_]
        source = check(copy_written=False, read_decisions=0, copy_chunks=2, offline=True)
        assert source["copied_decisions"] == first
        # decisions a few seconds old whose rewards arrive as the copy is written (PostgreSQL copies the
        # decisions, not yet the rewards: their ids could still be overtaken by lower ones)
        _append_log(engine, eid, first, 60, seed=9, live=True)
        first += 60
        check(copy_written=True, copy_chunks=2)
        check(copy_written=False, read_decisions=0, copied_decisions=first)
        with engine.begin() as c:  # a reward below the copy's cursor that commits late (a low id)
            event = c.execute(select(Decision.event_id, Decision.created_at).where(Decision.experiment_id == eid)
                              .order_by(Decision.seq).limit(1)).one()
            c.execute(insert(Reward).values(id=0, event_id=event.event_id, reward_id="late-commit", value=1.0,
                                            created_at=event.created_at))
        check(copy_dropped=True, copied_decisions=0)
        with engine.connect() as c:
            unit = c.execute(select(Decision.unit_key).where(Decision.experiment_id == eid, Decision.unit_key.is_not(None))
                             .group_by(Decision.unit_key).order_by(func.count().desc()).limit(1)).scalar()
        assert queries.erase_unit(engine, unit) > 1 and chunks() == 0  # its decisions are no longer one unit
        check(copied_decisions=0, copy_written=True)
        removed = queries.purge_older_than(engine, 0, now=datetime(2026, 3, 2, 6, tzinfo=UTC))
        assert removed["decisions"] > 0 and chunks() == 0
        check(copied_decisions=0, copy_written=True, offline=True)
    finally:
        engine.dispose()


def test_report_copy_is_not_written_for_keys_it_cannot_carry(sqlite_url, monkeypatch) -> None:
    """Unit keys holding the column separator take the Python path: that report reads the whole log, as before."""
    from api.db.engine import make_engine
    from api.reports import build
    from api.reports import copy as report_copy

    monkeypatch.setattr(report_copy, "REPORT_COPY_MIN_DECISIONS", 50)
    eid, _ = _seed_log(sqlite_url, "max", messy=True)
    engine = make_engine(sqlite_url)
    try:
        for _ in range(2):
            report = build.build_report(engine, eid, bucket="day", offline=False, cache=False)
            assert report["timing_ms"]["source"]["copy_written"] is False
            assert report["timing_ms"]["source"]["copied_decisions"] == 0
    finally:
        engine.dispose()


def test_guardrail_fallback_rate_is_tested_against_control_and_named_in_the_verdicts(database_url, monkeypatch) -> None:
    """An arm whose policy falls back on a third of its decisions: its fallback rate is significantly higher than
    control's 10% (one-sided, unit-clustered, Holm), a verdict line says so, the HTML shows it; an arm with
    control's rate is not flagged. The numbers are those of ``guardrail_checks`` on per-unit counts made in plain Python."""
    from collections import defaultdict

    from sqlalchemy import select, update

    from analysis.experiments import AnalysisConfig, ArmStats, guardrail_checks
    from api.db.engine import make_engine
    from api.db.models import Decision
    from api.reports import build, render_report_page

    eid, _ = _seed_log(database_url, "sum", messy=False)
    engine = make_engine(database_url)
    try:
        with engine.begin() as c:
            c.execute(update(Decision).values(fallback=False))
            c.execute(update(Decision).where(Decision.arm == "b", Decision.seq % 3 == 0).values(fallback=True))
            c.execute(update(Decision).where(Decision.arm == "a", Decision.seq % 10 == 0).values(fallback=True))
            c.execute(update(Decision).where(Decision.arm == "c", Decision.seq % 10 == 1).values(fallback=True))
            rows = c.execute(select(Decision.unit_key, Decision.arm, Decision.fallback, Decision.deferred,
                                    Decision.event_id).where(Decision.experiment_id == eid)).all()
        report = build.build_report(engine, eid, bucket="day", offline=False, cache=False)
        # per-unit fallback counts of the shown decisions, the plain way
        shown = {r.event_id for r in rows if not r.deferred} | {
            e for e in experiments_activated(engine) if e in {r.event_id for r in rows}}
        per_unit: dict[str, dict[str, list[int]]] = defaultdict(dict)
        for r in rows:
            if r.event_id in shown:
                y_x = per_unit[r.arm].setdefault(r.unit_key, [0, 0])
                y_x[0] += int(r.fallback)
                y_x[1] += 1
        stats = {arm: ArmStats.from_unit_totals([v[0] for v in units.values()], [v[1] for v in units.values()])
                 for arm, units in per_unit.items()}
        tests, verdicts = guardrail_checks(stats, metric="fallback_rate", control="a", shares=dict.fromkeys("abc", 1 / 3),
                                           config=AnalysisConfig())
        rows_by_arm = {g["arm"]: g for g in report["guardrails"] if g["name"] == "fallback_rate"}
        assert set(rows_by_arm) == {"a", "b", "c"} and rows_by_arm["a"]["p_value"] is None  # control: its rate only
        for test in tests:
            got = rows_by_arm[test.arm]
            assert got["value"] == pytest.approx(test.value) and got["control_value"] == pytest.approx(test.control_value)
            assert got["p_value_adjusted"] == pytest.approx(test.p_value_adjusted) and got["worsened"] == test.worsened
        assert rows_by_arm["b"]["worsened"] and not rows_by_arm["c"]["worsened"]
        assert rows_by_arm["b"]["value"] > 0.25 and 0.05 < rows_by_arm["a"]["value"] < 0.15
        assert not any(g["breached"] for g in report["guardrails"])  # no limit configured
        line = next(v for v in report["verdicts"] if v.startswith("guardrail fallback rate worsened in arm b: "))
        assert line == verdicts[0] and line.endswith("after correction") and len(verdicts) == 1
        assert report["verdicts"].index(line) == 0  # most important first (no sample ratio mismatch here)
        html = render_report_page(report, standalone=True)
        assert "guardrail fallback rate worsened in arm b" in html and "worse than control" in html
    finally:
        engine.dispose()


def experiments_activated(engine) -> set[str]:
    from sqlalchemy import select

    from api.db.models import Activation

    with engine.connect() as c:
        return set(c.execute(select(Activation.event_id)).scalars())


def test_offline_section_uses_every_decision_or_an_even_sample_and_says_how_many(sqlite_url, monkeypatch) -> None:
    """The offline section samples the experiment's decisions (all of them up to the limit, else that many at ranks
    floor(i * N / limit)) and evaluates those the report counts (shown, of an arm) with the report's rewards; the
    JSON says how many. With uniform logging and a uniform target every weight is 1, so SNIPS is the mean reward
    of the evaluated decisions."""
    from sqlalchemy import select

    from api.db.engine import make_engine
    from api.db.models import Decision
    from api.reports import build
    from api.reports import offline as report_offline

    eid, slot = _seed_log(sqlite_url, "sum", messy=False)
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as c:
            reference = _reference_data(c, eid, ["a", "b", "c"], slot)
            seqs = c.execute(select(Decision.seq).where(Decision.experiment_id == eid).order_by(Decision.seq)).scalars().all()
        kept = _kept_rows(engine, eid)
        row_of = {s: i for i, s in enumerate(s for s, keep in zip(seqs, kept, strict=True) if keep)}  # report rows
        n = len(seqs)
        assert len(row_of) == reference.arm.size > 300 and n == 600
        for limit, ranks in ((10_000, range(n)), (100, [i * n // 100 for i in range(100)])):
            monkeypatch.setattr(report_offline, "OFFLINE_SAMPLE_EVENTS", limit)
            report = build.build_report(engine, eid, bucket="day", offline=True, cache=False)
            offline = report["offline"]
            evaluated = [row_of[seqs[r]] for r in ranks if seqs[r] in row_of]
            assert offline["available"] and offline["events"] == len(evaluated) < len(ranks)
            assert offline["sample"] == {"decisions": n, "sampled": len(ranks), "evaluated": len(evaluated),
                                         "limit": limit, "rule": "every decision" if limit > n else
                                         "1 in 6 decisions, evenly spaced in log order"}
            mean = float(reference.reward[evaluated].mean())
            for estimate in offline["estimates"]:
                assert estimate["snips"]["value"] == pytest.approx(mean, abs=1e-12)
    finally:
        engine.dispose()


def _kept_rows(engine, eid: int) -> list[bool]:
    """Per decision of the experiment in seq order: the report counts it (shown, of an arm)."""
    from sqlalchemy import select

    from api.db.models import Decision

    activated = experiments_activated(engine)
    with engine.connect() as c:
        rows = c.execute(select(Decision.event_id, Decision.deferred, Decision.arm).where(Decision.experiment_id == eid)
                         .order_by(Decision.seq)).all()
    return [(not r.deferred or r.event_id in activated) and r.arm in ("a", "b", "c") for r in rows]


def test_migration_0006_adds_the_report_copy_to_a_database_with_experiments(database_url, monkeypatch) -> None:
    """A log written before 0006 upgrades in place; its experiment's first report builds the copy from the log,
    and the next one, read from the copy, is the same report."""
    from api.db import engine as engine_module
    from api.db.engine import make_engine, migrate
    from api.reports import build
    from api.reports import copy as report_copy

    migrate(database_url, "0005")
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "migrate", lambda *a, **k: None)  # seed the 0005 schema as it is
        eid, _ = _seed_log(database_url, "max", messy=False)
    migrate(database_url)
    monkeypatch.setattr(report_copy, "REPORT_COPY_MIN_DECISIONS", 50)
    engine = make_engine(database_url)
    try:
        first = build.build_report(engine, eid, bucket="day", offline=False, cache=False)
        second = build.build_report(engine, eid, bucket="day", offline=False, cache=False)
        assert first["timing_ms"]["source"]["copy_written"] and second["timing_ms"]["source"]["copied_decisions"] == 600
        for report in (first, second):
            report.pop("generated_at"), report.pop("timing_ms")
        assert first == second
    finally:
        engine.dispose()


def test_the_keeper_brings_running_experiments_copies_up_to_date_once(database_url, monkeypatch) -> None:
    """``keep_report_copies`` writes the missing copy of a running experiment (one keeper at a time: a fresh
    claim of another keeper is respected, a stale one taken over), extends it once the log grew past the
    threshold, leaves stopped experiments alone; the report then reads the copy, and is the same report."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import func, insert, select, update

    from api.db.engine import make_engine
    from api.db.experiment_models import Experiment, ReportChunk
    from api.reports import build, keeper
    from api.reports import copy as report_copy

    monkeypatch.setattr(report_copy, "REPORT_COPY_MIN_DECISIONS", 50)
    eid, _ = _seed_log(database_url, "sum", messy=False)
    engine = make_engine(database_url)

    def chunks() -> int:
        with engine.connect() as c:
            return c.execute(select(func.count()).select_from(ReportChunk).where(ReportChunk.experiment_id == eid,
                                                                                 ReportChunk.position >= 0)).scalar()

    try:
        assert keeper.keep_report_copies(engine) == [] and chunks() == 0  # stopped: left alone
        with engine.begin() as c:
            c.execute(update(Experiment).where(Experiment.id == eid).values(status="running"))
            c.execute(insert(ReportChunk).values(experiment_id=eid, position=-1, fingerprint="claim", meta={},
                                                 data=b"", created_at=datetime.now(UTC)))
        assert keeper.keep_report_copies(engine) == [] and chunks() == 0  # another keeper holds it
        with engine.begin() as c:
            c.execute(update(ReportChunk).where(ReportChunk.position == -1)
                      .values(created_at=datetime.now(UTC) - timedelta(hours=1)))
        assert keeper.keep_report_copies(engine) == [eid] and chunks() == 1  # the stale claim taken over
        assert keeper.keep_report_copies(engine) == []  # up to date: nothing to do
        _append_log(engine, eid, 600, 70, seed=4, old_rewards=10)
        assert keeper.keep_report_copies(engine) == [eid] and chunks() == 2
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(ReportChunk).where(ReportChunk.position == -1)).scalar() == 0
        kept = build.build_report(engine, eid, bucket="day", offline=False, cache=False)
        assert kept["timing_ms"]["source"]["copied_decisions"] == 670 and kept["timing_ms"]["source"]["read_decisions"] == 0
        with monkeypatch.context() as patch:
            patch.setattr(build, "fetch_experiment_data", _reference_data)
            reference = build.build_report(engine, eid, bucket="day", offline=False, cache=False)
        for report in (kept, reference):
            report.pop("generated_at"), report.pop("timing_ms")
        assert kept == reference
    finally:
        engine.dispose()
