"""Decisions made through the real service, rewarded, exported with ``slotbandit export``, and read back
by Vowpal Wabbit itself (``--cb_explore_adf --dsjson``): labels, actions, probabilities, ``_labelIndex``,
``_skipLearn``, EventId and Timestamp. CSV and Parquet exports round-trip the same log."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import vowpalwabbit
from sqlalchemy import select

from analysis.dsjson import read_dsjson
from analysis.tabular import read_csv, read_parquet
from api.cli import main
from api.db.engine import make_engine
from api.db.models import Decision
from api.offline import load_log
from bandits.policies import cost_from_reward

SLOT = "home.hero"
LABEL_KEYS = ["_label_cost", "_label_probability", "_label_Action", "_labelIndex"]


def _make_traffic(service) -> dict[str, dict]:
    """Decisions of every kind, with the reward each should carry once joined (range [0, 5], sum)."""
    admin, decider, client = service.admin, service.decider, service.client
    r = client.put(f"/v1/slots/{SLOT}", json={"default_block": "b0", "reward_range": [0, 5], "reward_window_s": 3600,
                                              "reward_aggregation": "sum", "policy": {"kind": "uniform"}},
                   headers=admin)
    assert r.status_code == 201, r.text
    for i in range(4):
        assert client.put(f"/v1/slots/{SLOT}/blocks/b{i}", json={"features": {"kind": f"k{i}", "long": i % 2 == 0}},
                          headers=admin).status_code == 201
    rng = np.random.default_rng(7)
    events: dict[str, dict] = {}
    for i in range(40):
        body: dict = {"context": {"device": {"type": ["mobile", "desktop"][i % 2]}, "user": {"segment": f"s{i % 3}"}}}
        kind = "plain"
        if i % 10 == 3:
            body["defer_activation"], kind = True, "deferred-never"
        elif i % 10 == 6:
            body["defer_activation"], kind = True, "deferred-shown"
        elif i % 10 == 9:
            body["candidates"], kind = [{"id": "x1", "features": {"kind": "inline"}}, {"id": "x2"}], "inline"
        r = client.post(f"/v1/slots/{SLOT}/decide", json=body, headers=decider)
        assert r.status_code == 200, r.text
        d = r.json()
        if kind == "deferred-shown":
            assert client.post(f"/v1/events/{d['event_id']}/activate", headers=decider).status_code == 200
        total = 0.0
        for n, value in enumerate(rng.choice([0.0, 1.0, 2.5], size=int(rng.integers(0, 3))).tolist()):
            # distinct rewards carry their ids: without one, a repeat of the same value is a retry
            assert client.post(f"/v1/events/{d['event_id']}/reward", json={"value": value, "reward_id": f"r{n}"},
                               headers=decider).status_code == 200
            total += value
        events[d["event_id"]] = {"kind": kind, "reward": min(total, 5.0), "block": d["block"]["id"],
                                 "probability": d["probability"], "n": len(d["ranking"])}
    return events


def test_export_is_read_by_vw_with_the_right_labels(service, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    events = _make_traffic(service)
    url = service.database_url
    path = tmp_path / "decisions.dsjson"
    assert main(["--database-url", url, "export", "--slot", SLOT, "--format", "dsjson", "--output", str(path)]) == 0
    assert "exported 40 decisions" in capsys.readouterr().err
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            stored = {r.event_id: r for r in connection.execute(
                select(Decision.event_id, Decision.created_at, Decision.chosen_index, Decision.candidate_ids)
                .order_by(Decision.seq))}
    finally:
        engine.dispose()
    lines = path.read_text().splitlines()
    assert len(lines) == 40
    ws = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    learnable_lines = 0
    try:
        for line, event_id in zip(lines, stored, strict=True):
            record = json.loads(line)
            expected = events[event_id]
            row = stored[event_id]
            keys = list(record)
            assert keys[:4] == LABEL_KEYS and keys.index("c") > max(keys.index(k) for k in LABEL_KEYS)
            assert record["EventId"] == event_id
            created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
            assert datetime.fromisoformat(record["Timestamp"].replace("Z", "+00:00")) == created
            k = len(row.candidate_ids)
            assert k == expected["n"] == len(record["c"]["_multi"]) == len(record["a"]) == len(record["p"])
            assert sorted(record["a"]) == list(range(1, k + 1))  # 1-based, every action once
            assert record["a"][0] == row.chosen_index + 1 == record["_label_Action"]  # chosen first
            assert record["_labelIndex"] == row.chosen_index  # 0-based into _multi
            assert record["p"][0] == pytest.approx(expected["probability"]) == record["_label_probability"]
            assert sum(record["p"]) == pytest.approx(1.0)
            assert record["_label_cost"] == pytest.approx(-expected["reward"])  # cost = -reward (default)
            assert record["slotbandit"]["reward"] == pytest.approx(expected["reward"])
            skip = expected["kind"] == "deferred-never"
            assert record.get("_skipLearn", False) is skip

            examples = ws.parse(line)
            try:
                if skip:
                    assert len(examples) == 1  # VW replaces a _skipLearn event by one empty example
                    continue
                learnable_lines += 1
                assert len(examples) == 1 + k  # shared + one per action
                labels = [e.get_label(vowpalwabbit.LabelType.CONTEXTUAL_BANDIT) for e in examples[1:]]
                labelled = [i for i, label in enumerate(labels) if label.costs]
                assert labelled == [row.chosen_index]
                cost = labels[row.chosen_index].costs[0]
                assert cost.cost == pytest.approx(-expected["reward"])
                assert cost.probability == pytest.approx(expected["probability"])
            finally:
                ws.finish_example(examples)
    finally:
        ws.finish()
    assert learnable_lines == 36

    # VW over the file: one prediction (a pmf over the event's actions) per learnable event
    predictions = tmp_path / "preds.txt"
    vowpalwabbit.Workspace(f"--cb_explore_adf --dsjson --quiet --epsilon 0.2 -d {path} -p {predictions}").finish()
    pmfs = [line for line in predictions.read_text().splitlines() if line.strip()]
    sizes = [events[e]["n"] for e in stored if events[e]["kind"] != "deferred-never"]
    assert len(pmfs) == learnable_lines
    for line, k in zip(pmfs, sizes, strict=True):
        pairs = [item.split(":") for item in line.split(",")]
        assert sorted(int(a) for a, _ in pairs) == list(range(k))
        assert sum(float(p) for _, p in pairs) == pytest.approx(1.0, abs=1e-5)

    # the learner's cost encoding on request; and our reader gets the exact log back
    learner_path = tmp_path / "learner.dsjson"
    assert main(["--database-url", url, "export", "--slot", SLOT, "--format", "dsjson", "--output",
                 str(learner_path), "--cost", "learner"]) == 0
    for line, event_id in zip(learner_path.read_text().splitlines(), stored, strict=True):
        assert json.loads(line)["_label_cost"] == pytest.approx(cost_from_reward(events[event_id]["reward"], 0.0, 5.0))
    back = read_dsjson(path)
    assert back.event_ids.tolist() == list(stored)
    np.testing.assert_allclose(back.reward, [events[e]["reward"] for e in stored])


def test_csv_and_parquet_round_trip_the_database_log(service, tmp_path: Path) -> None:
    _make_traffic(service)
    url = service.database_url
    engine = make_engine(url)
    try:
        original = load_log(engine, SLOT)
    finally:
        engine.dispose()
    for fmt, reader in (("csv", read_csv), ("parquet", read_parquet)):
        path = tmp_path / f"log.{fmt}"
        assert main(["--database-url", url, "export", "--slot", SLOT, "--format", fmt, "--output", str(path)]) == 0
        back = reader(path)
        assert back.event_ids.tolist() == original.event_ids.tolist()
        np.testing.assert_allclose(back.timestamps, original.timestamps)
        np.testing.assert_array_equal(back.action_ids, original.action_ids)
        np.testing.assert_allclose(back.logging_pmf, original.logging_pmf)
        np.testing.assert_array_equal(back.chosen, original.chosen)
        np.testing.assert_allclose(back.reward, original.reward)
        np.testing.assert_array_equal(back.learnable, original.learnable)
        assert back.arms.tolist() == original.arms.tolist()
        assert back.contexts == original.contexts
        assert back.candidates == original.candidates
