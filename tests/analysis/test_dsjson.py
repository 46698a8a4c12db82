"""DSJSON export/import, checked against Vowpal Wabbit's own JSON parser."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import vowpalwabbit

from analysis.dsjson import FormatError, action_json, context_json, read_dsjson, write_dsjson
from analysis.log import BanditLog
from bandits.features import action_line, shared_line
from bandits.policies import Candidate

CONTEXTS = [
    {
        "time": {"daypart": "morning", "hour": "09", "hour_sin": 0.707107, "weekend": False},
        "device": {"type": "mobile", "os": "ios"},
        "location": {"country": "DE"},
        "user": {"plan": "pro", "visits": 3.0},
    },
    {
        "time": {"daypart": "evening", "hour": "20", "hour_sin": -0.866025, "weekend": True},
        "device": {"type": "desktop", "os": "windows"},
        "location": {"country": "FR", "city": "saint-étienne"},
        "user": {},
    },
    {
        "time": {"daypart": "night", "hour": "02"},
        "device": {"type": "tablet"},
        "location": {"country": "US"},
        "user": {"segment": "a b|c:d"},
    },
]
BLOCKS = (
    Candidate("hero-1", {"category": "news", "format": "image"}),
    Candidate("hero 2", {"category": "sport", "score": 0.5}),
    Candidate("hero-3", {}),
)


def _log() -> BanditLog:
    records = []
    for i, context in enumerate(CONTEXTS):
        pmf = [[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5]][i]
        records.append(
            {
                "event_id": f"ev-{i}",
                "timestamp": 1_714_555_800.25 + 3600 * i,
                "action_ids": [b.id for b in BLOCKS],
                "pmf": pmf,
                "chosen": [1, 2, 0][i],
                "reward": [1.0, 0.0, 2.5][i],
                "arm": ["control", "treatment", ""][i],
                "context": context,
                "candidates": list(BLOCKS),
                "learnable": i != 2,
            }
        )
    return BanditLog.from_records(records)


def _export(log: BanditLog, **kwargs: object) -> list[str]:
    stream = io.StringIO()
    assert write_dsjson(log, stream, **kwargs) == log.n  # type: ignore[arg-type]
    return stream.getvalue().splitlines()


def test_label_keys_precede_context_and_actions_are_one_based() -> None:
    lines = _export(_log())
    first = json.loads(lines[0])
    keys = list(first)
    assert keys[:4] == ["_label_cost", "_label_probability", "_label_Action", "_labelIndex"]
    assert keys.index("c") > 3
    assert first["_labelIndex"] == 1 and first["_label_Action"] == 2
    assert first["a"] == [2, 1, 3] and first["p"] == [0.2, 0.7, 0.1]
    assert first["_label_cost"] == -1.0 and first["_label_probability"] == 0.2
    assert first["Timestamp"] == "2024-05-01T09:30:00.250000Z"
    assert first["EventId"] == "ev-0"
    assert "_skipLearn" not in first and json.loads(lines[2])["_skipLearn"] is True


def test_vw_parses_the_export_with_the_right_labels(tmp_path: Path) -> None:
    log = _log()
    lines = _export(log)
    ws = vowpalwabbit.Workspace("--cb_explore_adf --dsjson --quiet")
    try:
        for row, line in enumerate(lines):
            examples = ws.parse(line)
            if not log.learnable[row]:
                # "_skipLearn": VW's DSJSON reader replaces the event by one empty example
                assert len(examples) == 1
                ws.finish_example(examples)
                continue
            assert len(examples) == 4  # the shared example and 3 actions
            actions = examples[1:]
            labelled = [
                (i, e.get_label(vowpalwabbit.LabelType.CONTEXTUAL_BANDIT)) for i, e in enumerate(actions)
            ]
            labelled = [(i, label) for i, label in labelled if label.costs]
            assert len(labelled) == 1
            index, label = labelled[0]
            assert index == log.chosen[row]
            assert label.costs[0].cost == pytest.approx(-log.reward[row])
            assert label.costs[0].probability == pytest.approx(log.propensity[row])
            ws.finish_example(examples)
    finally:
        ws.finish()

    # run VW over the file: one prediction (a pmf over 3 actions) per event
    path = tmp_path / "log.dsjson"
    path.write_text("\n".join(lines) + "\n")
    ws = vowpalwabbit.Workspace(
        f"--cb_explore_adf --dsjson --quiet --epsilon 0.2 -d {path} -p {tmp_path / 'preds'}"
    )
    ws.finish()
    predictions = [p for p in (tmp_path / "preds").read_text().splitlines() if p.strip()]
    assert len(predictions) == 2  # the _skipLearn event is skipped
    for prediction in predictions:
        pairs = [item.split(":") for item in prediction.split(",")]
        assert sorted(int(a) for a, _ in pairs) == [0, 1, 2]
        assert sum(float(p) for _, p in pairs) == pytest.approx(1.0, abs=1e-5)


def _audit(capfd: pytest.CaptureFixture[str], args: str, example: object) -> list[dict[str, float]]:
    """Per example, the features VW's --audit prints (on stdout): {"ns^name:hash": weight}."""
    capfd.readouterr()
    ws = vowpalwabbit.Workspace(f"{args} --quiet --audit -q TA -q UA")
    try:
        parsed = ws.parse(example)  # type: ignore[arg-type]
        ws.predict(parsed)
        ws.finish_example(parsed)
    finally:
        ws.finish()
    blocks = [line for line in capfd.readouterr().out.splitlines() if line.startswith("\t")]
    # "T^daypart=morning:163462:1:0@0" -> ("T^daypart=morning:163462", 1.0)
    return [
        {token.rsplit(":", 2)[0]: float(token.rsplit(":", 2)[1]) for token in block.split()}
        for block in blocks
    ]


def test_json_features_hash_exactly_like_the_text_examples(capfd: pytest.CaptureFixture[str]) -> None:
    context = {**CONTEXTS[0], "user": {"plan": "pro", "visits": 3.0, "segment": "a b|c:d"}}
    text = [shared_line(context), *(action_line(b.id, b.features) for b in BLOCKS)]
    record = {
        "_label_cost": 0.0,
        "_label_probability": 1.0,
        "_labelIndex": 0,
        "a": [1, 2, 3],
        "p": [1.0, 0.0, 0.0],
        "c": {**context_json(context), "_multi": [action_json(b) for b in BLOCKS]},
    }
    from_text = _audit(capfd, "--cb_explore_adf", text)
    from_json = _audit(capfd, "--cb_explore_adf --dsjson", json.dumps(record))
    assert len(from_text) == 3
    for text_features, json_features in zip(from_text, from_json, strict=True):
        assert text_features.keys() == json_features.keys()  # same names, same hashes
        for key, weight in text_features.items():
            # VW's JSON reader (rapidjson) may round a weight one float32 ulp apart from strtof
            assert json_features[key] == pytest.approx(weight, rel=1e-5)
    assert any(key.startswith("T^daypart=morning*A^category=news:") for key in from_text[0])
    assert any(key.startswith("T^hour_sin:") for key in from_text[0])


def test_leading_underscore_features_are_kept_by_vw_under_an_escaped_name(
    capfd: pytest.CaptureFixture[str],
) -> None:
    context = {"user": {"_seg": "x"}}
    assert context_json(context) == {"U": {"%5Fseg=x": 1}}
    record = {"_labelIndex": 0, "a": [1], "p": [1.0], "_label_cost": 0.0, "_label_probability": 1.0,
              "c": {**context_json(context), "_multi": [action_json(BLOCKS[2])]}}
    (action,) = _audit(capfd, "--cb_explore_adf --dsjson", json.dumps(record))
    assert any(key.startswith("U^%5Fseg=x:") for key in action)
    # the text parser reads the unescaped token: the one documented hash difference
    (text_action,) = _audit(capfd, "--cb_explore_adf", [shared_line(context), action_line("hero-3", {})])
    assert any(key.startswith("U^_seg=x:") for key in text_action)


def test_round_trip_keeps_the_whole_log(tmp_path: Path) -> None:
    log = _log()
    path = tmp_path / "log.dsjson"
    write_dsjson(log, path)
    back = read_dsjson(path)
    assert list(back.event_ids) == list(log.event_ids)
    np.testing.assert_allclose(back.timestamps, log.timestamps, atol=1e-6)
    assert (back.action_ids == log.action_ids).all()
    np.testing.assert_array_equal(back.logging_pmf, log.logging_pmf)
    np.testing.assert_array_equal(back.chosen, log.chosen)
    np.testing.assert_array_equal(back.reward, log.reward)
    assert list(back.arms) == list(log.arms)
    np.testing.assert_array_equal(back.learnable, log.learnable)
    assert back.candidates == log.candidates
    # bools (weekend) are exact thanks to the extension
    assert back.contexts[0] == CONTEXTS[0]
    assert back.contexts[0]["time"]["weekend"] is False
    assert back.contexts[1] == CONTEXTS[1]
    assert back.contexts[2] == CONTEXTS[2]
    assert back.meta["format"] == "dsjson" and "logging_pmf" not in back.meta


def test_extension_only_when_the_tokens_are_not_exact() -> None:
    lines = [json.loads(line) for line in _export(_log())]
    assert "context" in lines[0]["slotbandit"]  # weekend: False is a bool
    assert "context" not in lines[2]["slotbandit"]  # strings and numbers decode exactly
    assert "candidates" not in lines[2]["slotbandit"]
    assert lines[2]["slotbandit"] == {"reward": 2.5}


def test_custom_cost_encoding() -> None:
    lines = _export(_log(), reward_to_cost=lambda r: (2.5 - r) / 2.5)
    assert json.loads(lines[0])["_label_cost"] == pytest.approx(0.6)
    back = read_dsjson(lines)
    np.testing.assert_array_equal(back.reward, [1.0, 0.0, 2.5])  # exact reward from the extension


# A decision-service line in the layout of VW's test/train-sets/dsjson_cb.json (values made up).
FOREIGN = [
    {
        "_label_cost": -1.0,
        "_label_probability": 0.8500000238418579,
        "_label_Action": 2,
        "_labelIndex": 1,
        "o": [{"v": 1.0, "EventId": "abc", "ActionTaken": False}],
        "Timestamp": "2021-02-04T16:31:29.2460000Z",
        "Version": "1",
        "EventId": "abc",
        "a": [2, 1, 3],
        "c": {
            "FromUrl": [{"timeofday": "Afternoon", "weather": "Sunny"}],
            "_multi": [
                {"_tag": "Cappucino", "i": {"constant": 1, "id": "Cappucino"}, "j": [{"type": "hot"}]},
                {"_tag": "Cold brew", "i": {"constant": 1, "id": "Cold brew"}, "j": [{"type": "cold"}]},
                {"i": {"constant": 1, "id": "Latte"}, "j": [{"type": "hot", "organic": True}]},
            ],
        },
        "p": [0.85, 0.1, 0.05],
        "VWState": {"m": "ff07/550c"},
        "_original_label_cost": -1.0,
    },
    {
        "_label_cost": 0.0,
        "_label_probability": 0.5,
        "_labelIndex": 0,
        "_skipLearn": True,
        "pdrop": 0.2,
        "Timestamp": "2021-02-04T16:31:30Z",
        "EventId": "def",
        "a": [1, 2],
        "c": {"weather": "Rainy", "_multi": [{"_tag": "Cappucino"}, {"_tag": "Cold brew"}]},
        "p": [0.5, 0.5],
    },
]


def test_reads_decision_service_json() -> None:
    log = read_dsjson([json.dumps(r) for r in FOREIGN])
    assert log.n == 2
    assert list(log.event_ids) == ["abc", "def"]
    assert list(log.action_ids[0]) == ["Cappucino", "Cold brew", "Latte"]
    assert list(log.action_ids[1]) == ["Cappucino", "Cold brew", ""]
    np.testing.assert_allclose(log.logging_pmf[0], [0.1, 0.85, 0.05])
    np.testing.assert_array_equal(log.chosen, [1, 0])
    np.testing.assert_array_equal(log.reward, [1.0, -0.0])
    np.testing.assert_array_equal(log.learnable, [True, False])
    assert log.timestamps[0] == pytest.approx(1612456289.246)
    assert log.contexts[0] == {"user": {"FromUrl.timeofday": "Afternoon", "FromUrl.weather": "Sunny"}}
    assert log.contexts[1] == {"user": {"weather": "Rainy"}}
    assert log.candidates[0][2] == Candidate("Latte", {"i.constant": 1.0, "i.id": "Latte", "j.type": "hot", "j.organic": True})
    np.testing.assert_allclose(log.meta["pdrop"], [0.0, 0.2])
    # the imported contexts are valid input for our text examples
    assert shared_line(log.contexts[0]).startswith("shared |U FromUrl.timeofday=Afternoon")


def test_a_in_plain_order_is_accepted_when_the_label_probability_confirms_it() -> None:
    # the layout of VW's test/train-sets/igl.dsjson: "a" lists every action in order
    line = {"_label_cost": 0, "_label_probability": 0.1, "_label_Action": 3, "_labelIndex": 2,
            "o": [{"v": {"v=none": 1}}], "a": [0, 1, 2], "p": [0.6, 0.3, 0.1],
            "c": {"User": {"user=Anna": 1}, "_multi": [{"Action": {f"action={x}": 1}} for x in "abc"]}}
    log = read_dsjson([json.dumps(line)])
    np.testing.assert_allclose(log.logging_pmf[0], [0.6, 0.3, 0.1])
    assert log.chosen[0] == 2 and log.propensity[0] == pytest.approx(0.1)
    assert list(log.action_ids[0]) == ["1", "2", "3"]
    assert log.contexts[0] == {"user": {"User.user=Anna": 1.0}}


def test_reads_vw_sample_with_zero_based_actions_and_outcome_only_rewards() -> None:
    # test/train-sets/cb_features_w_zero_vals.dsjson numbers "a" from 0
    line = {"_label_cost": -1.0, "_label_probability": 0.5, "_label_Action": 1, "_labelIndex": 0,
            "event_id": "12", "a": [0, 1], "c": {"A": {"F": 0.0}, "_multi": [{}, {"B": {"f": 0}}]},
            "p": [0.5, 0.5]}
    outcome_only = {"EventId": "x", "a": [2, 1], "p": [0.9, 0.1], "o": [{"v": 0.5}, {"v": 0.25}],
                    "c": {"_multi": [{"_tag": "a"}, {"_tag": "b"}]}}
    log = read_dsjson([json.dumps(line), "", json.dumps(outcome_only)])
    assert list(log.event_ids) == ["12", "x"]
    np.testing.assert_array_equal(log.chosen, [0, 1])
    np.testing.assert_array_equal(log.reward, [1.0, 0.75])
    assert np.isnan(log.timestamps).all()


BAD = [
    ("{not json", 1, None, "not valid JSON"),
    ('[1, 2]', 1, None, "JSON object"),
    ('{"a": [1], "p": [1.0]}', 1, "c", "missing context"),
    ('{"c": {"_multi": []}, "a": [1], "p": [1.0]}', 1, "c._multi", "non-empty list"),
    ('{"c": {"_multi": [{}]}, "_labelIndex": 0, "_label_cost": 0}', 1, "p", "no logged probability"),
    ('{"c": {"_multi": [{}]}, "_label_cost": 0}', 1, "_labelIndex", "no chosen action"),
    ('{"c": {"_multi": [{}, {}]}, "a": [1, 2], "p": [0.5]}', 1, "p", "as long as 'a'"),
    ('{"c": {"_multi": [{}, {}]}, "a": [1, 3], "p": [0.5, 0.5], "_label_cost": 0}', 1, "a", "within 1..2"),
    ('{"c": {"_multi": [{}, {}]}, "a": [2, 1], "p": [0.5, 0.5], "_labelIndex": 0, "_label_cost": 0}', 1, "a", "start with the chosen"),
    ('{"c": {"_multi": [{}, {}]}, "a": [2, 1], "p": [0.7, 0.3], "_labelIndex": 0, "_label_probability": 0.7, "_label_cost": 0}', 1, "_label_probability", "disagrees"),
    ('{"c": {"_multi": [{}, {}]}, "a": [1, 2], "p": [0.5, 0.5], "_labelIndex": 0, "_label_Action": 0, "_label_cost": 0}', 1, "_label_Action", "1-based"),
    ('{"c": {"_multi": [{}, {}]}, "a": [1, 2], "p": [0.5, 0.5], "_label_probability": 0.9, "_label_cost": 0}', 1, "_label_probability", "disagrees"),
    ('{"c": {"_multi": [{}, {}]}, "a": [1, 2], "p": [0.0, 1.0], "_label_cost": 0}', 1, "p", "not in (0, 1]"),
    ('{"c": {"_multi": [{}, {}]}, "a": [1, 2], "p": [0.5, 0.5]}', 1, "_label_cost", "default_reward"),
    ('{"c": {"_multi": [{}]}, "a": [1], "p": [1], "_label_cost": "x"}', 1, "_label_cost", "finite number"),
    ('{"c": {"_multi": [{}]}, "a": [1], "p": [1], "_label_cost": 0, "Timestamp": "yesterday"}', 1, "Timestamp", "ISO 8601"),
    ('{"c": {"X": {"a": 1}, "_multi": [{"A": {"id=b": 1}}]}, "a": [1], "p": [1], "slotbandit": {"reward": 0}}', 1, "c.X", "unknown context namespace"),
    ('{"c": {"_multi": [{"A": {"cat=x": 1}}]}, "a": [1], "p": [1], "slotbandit": {"reward": 0}}', 1, "c._multi[0]", "'id=' token"),
]


@pytest.mark.parametrize(("text", "line", "field", "message"), BAD)
def test_bad_lines_name_line_and_field(text: str, line: int, field: str | None, message: str) -> None:
    good = json.dumps(FOREIGN[1])
    with pytest.raises(FormatError, match=re.escape(message)) as info:
        read_dsjson([good, text] if line == 2 else [text, good])
    assert info.value.line == line
    assert info.value.field == field
    assert str(info.value).startswith(f"line {line}")


def test_error_names_the_real_line_number() -> None:
    good = json.dumps(FOREIGN[1])
    with pytest.raises(FormatError, match=r"^line 4, field 'p'"):
        read_dsjson([good, "", good, '{"c": {"_multi": [{}]}, "a": [1], "p": [2.0], "_label_cost": 0}'])
