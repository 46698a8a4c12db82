"""Personalizer's offline evaluations and feature importances, backed by our evaluations (``api.offline``).

``PUT /evaluations/{evaluationId}`` with ``{name, startTime, endTime, policies: [{name,
arguments}], enablePolicyOptimization}`` becomes one of our evaluations of the Personalizer slot:
``since``/``until`` from the times, each policy a candidate whose VW arguments are parsed as in
``configurations/policy`` (:func:`api.personalizer.mapping.parse_policy_arguments`), and
``enablePolicyOptimization`` adds our standard candidate set (the nearest thing to Personalizer's
search for better learning settings). The client's id, name and policies are kept with our
evaluation's request under ``"personalizer"``; our own evaluations of the slot are listed too,
by their numeric id.

Results: every evaluated policy is one item of ``content.value`` with ``policySource`` ``Online``
(the logging policy), ``Baseline`` (the default action), ``Random`` (uniform) or ``Custom`` (a
candidate), ``summary.expectedReward`` our estimate (doubly robust by default) with its
confidence interval, and ``timeseries`` our daily series. ``optimalPolicy`` is the candidate our
paired test recommends, if any. Statuses: pending and running are ``Running``, done is
``Succeeded`` (``OptimalPolicyApplied`` once applied), failed is ``Failed``.

A feature importance (``PUT /featureImportances/{id}``, ``{name, startTime, endTime}``) is one of
our evaluations too, kept apart by ``"kind": "featureImportance"``: the slot's current VW settings
as its one candidate, with ``feature_importance`` on; ``featureScores`` are the value lost
without each context group (``namespace`` the group, ``featureName`` empty).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec
from sqlalchemy import delete, select, update

from api import offline
from api.db.evaluation_models import StoredEvaluation
from api.errors import ApiError
from api.personalizer import mapping
from api.state import AppState

__all__ = ["apply_from_evaluation", "create_evaluation", "create_feature_importance", "delete_evaluation",
           "evaluation_dict", "feature_importance_dict", "list_evaluations", "list_feature_importances"]

_SOURCES = {"online": "Online", "logging": "Online", "baseline": "Baseline", "uniform": "Random", "candidate": "Custom"}
_STATUSES = {"pending": "Running", "running": "Running", "done": "Succeeded", "failed": "Failed"}
_INVALID = re.compile(r"[^A-Za-z0-9._:-]")
MAX_ID_LENGTH = 256


def _kind(row: Mapping[str, Any]) -> str:
    return str(((row["request"] or {}).get("personalizer") or {}).get("kind", "evaluation"))


def _rows(state: AppState, slot: str, kind: str = "evaluation") -> list[dict[str, Any]]:
    with state.engine.connect() as connection:
        rows = connection.execute(
            select(StoredEvaluation.__table__).where(StoredEvaluation.slot_name == slot)
            .order_by(StoredEvaluation.id.desc())
        ).mappings().all()
    return [item for item in (dict(row) for row in rows) if _kind(item) == kind]


def _public_id(row: Mapping[str, Any]) -> str:
    meta = (row["request"] or {}).get("personalizer") or {}
    return str(meta.get("id") or row["id"])


def _find(state: AppState, slot: str, evaluation_id: str, kind: str = "evaluation") -> dict[str, Any] | None:
    for row in _rows(state, slot, kind):
        if _public_id(row) == evaluation_id:
            return row
    return None


def _row(state: AppState, slot: str, evaluation_id: str, kind: str = "evaluation") -> dict[str, Any]:
    state.decider.slot(slot)  # a 404 for a service that does not exist
    row = _find(state, slot, evaluation_id, kind)
    if row is None:
        what, field = ("evaluation", "evaluationId") if kind == "evaluation" else ("feature importance",
                                                                                "featureImportanceId")
        raise ApiError(404, f"unknown_{kind}", f"no {what} '{evaluation_id}'", field)
    return row


def _candidate_name(name: Any, index: int, taken: set[str]) -> str:
    base = _INVALID.sub("-", name if isinstance(name, str) and name else f"policy-{index}")[:56].strip("-._:")
    if not base or base in ("online", "baseline", "uniform"):
        base = f"policy-{index}"
    if not base[0].isalnum():
        base = f"p{base}"
    name_ = base
    suffix = 1
    while name_ in taken:
        suffix += 1
        name_ = f"{base}-{suffix}"
    taken.add(name_)
    return name_


def create_evaluation(state: AppState, slot: str, evaluation_id: str, body: bytes) -> None:
    if not 1 <= len(evaluation_id) <= MAX_ID_LENGTH:
        raise ApiError(400, "invalid_request", f"evaluation ids are 1..{MAX_ID_LENGTH} characters", "evaluationId")
    payload = _object(body)
    state.decider.slot(slot)
    if _find(state, slot, evaluation_id) is not None:
        raise ApiError(409, "evaluation_exists", f"evaluation '{evaluation_id}' exists", "evaluationId")
    policies = payload.get("policies") or []
    if not isinstance(policies, list):
        raise ApiError(400, "invalid_request", "policies must be a list of {name, arguments}", "policies")
    candidates: dict[str, Any] = {}
    originals: dict[str, Any] = {}
    taken: set[str] = set()
    for index, policy in enumerate(policies):
        if not isinstance(policy, Mapping):
            raise ApiError(400, "invalid_request", "every policy is an object {name, arguments}", f"policies[{index}]")
        key = _candidate_name(policy.get("name"), index, taken)
        candidates[key] = mapping.parse_policy_arguments(policy.get("arguments"), f"policies[{index}].arguments")
        originals[key] = {"name": policy.get("name") or key, "arguments": policy.get("arguments")}
    ours: dict[str, Any] = {"slot": slot, "candidates": candidates,
                            "standard_candidates": bool(payload.get("enablePolicyOptimization"))}
    for theirs, field in (("startTime", "since"), ("endTime", "until")):
        if payload.get(theirs) is not None:
            ours[field] = str(payload[theirs])
    our_id = offline.create_evaluation(state.engine, msgspec.json.encode(ours))
    meta = {"id": evaluation_id, "name": payload.get("name") or evaluation_id, "policies": originals}
    with state.engine.begin() as connection:
        request = connection.execute(select(StoredEvaluation.request).where(StoredEvaluation.id == our_id)).scalar_one()
        connection.execute(update(StoredEvaluation).where(StoredEvaluation.id == our_id)
                           .values(request={**request, "personalizer": meta}))


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body or b"{}")
    except msgspec.DecodeError as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}", "body") from error
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object", "body")
    return value


def _iso(moment: Any) -> str | None:
    return offline._iso(moment)  # noqa: SLF001 - the same aware ISO form as our evaluations


def _summary(row: Mapping[str, Any]) -> dict[str, Any]:
    request = row["request"] or {}
    meta = request.get("personalizer") or {}
    status = "OptimalPolicyApplied" if row["applied"] else _STATUSES.get(row["status"], "Running")
    created = _iso(row["created_at"])
    return {"id": _public_id(row), "name": meta.get("name") or f"evaluation {row['id']}",
            "startTime": request.get("since") or created, "endTime": request.get("until") or created,
            "creationTime": created, "evaluationType": "Manual", "status": status}


def evaluation_dict(state: AppState, slot: str, evaluation_id: str) -> dict[str, Any]:
    row = _row(state, slot, evaluation_id)
    data = _summary(row)
    request = row["request"] or {}
    originals = (request.get("personalizer") or {}).get("policies") or {}
    result = row["result"] or {}
    if row["error"]:
        data["description"] = row["error"]
    elif result.get("notes"):
        data["description"] = " ".join(result["notes"])
    recommended = (result.get("recommendation") or {}).get("candidate")
    if recommended:
        data["optimalPolicy"] = originals.get(recommended, {}).get("name", recommended)
    if row["status"] != "done":
        return data
    online = policy_arguments_of(state, slot)
    series = result.get("series") or []
    values = []
    for policy in result.get("policies", []):
        name = policy["name"]
        original = originals.get(name, {})
        arguments = original.get("arguments")
        if arguments is None and policy.get("config") and policy["kind"] == "candidate":
            arguments = _arguments_of(policy["config"])
        if policy["kind"] in ("online", "logging"):
            arguments = online
        values.append({
            "name": original.get("name", name),
            "arguments": arguments or "",
            "policySource": _SOURCES.get(policy["kind"], "Custom"),
            "summary": {"expectedReward": policy["value"], "confidenceInterval": policy["ci"]},
            "timeseries": {"data": [
                {"timeStamp": point["bucket_start"], "expectedReward": point["values"][name]["value"],
                 "confidenceInterval": point["values"][name]["ci"]}
                for point in series if name in point.get("values", {})
            ]},
        })
    data["content"] = {"startTime": data["startTime"], "endTime": data["endTime"],
                       "intervalInMinutes": 60 if result.get("bucket") == "hour" else 1440, "value": values}
    return data


def _arguments_of(config: Mapping[str, Any]) -> str:
    from bandits.policies import VWConfig

    if config.get("kind") == "linear":
        return ""
    try:
        return mapping.policy_arguments(VWConfig.from_dict(config).to_args())
    except Exception:  # noqa: BLE001 - a stored configuration of an older shape: shown without arguments
        return ""


def policy_arguments_of(state: AppState, slot: str) -> str:
    policy = state.registry.policies.get(state.decider.slot(slot).policy_name)
    if policy is None or policy.config.kind != "vw":
        return ""
    from bandits.policies import VWConfig

    return mapping.policy_arguments((policy.config.vw or VWConfig()).to_args())


def list_evaluations(state: AppState, slot: str, top: int | None, skip: int) -> dict[str, Any]:
    state.decider.slot(slot)
    rows = _rows(state, slot)[max(0, skip):]
    if top is not None:
        rows = rows[:max(0, top)]
    return {"value": [_summary(row) for row in rows]}


def delete_evaluation(state: AppState, slot: str, evaluation_id: str, kind: str = "evaluation") -> None:
    row = _row(state, slot, evaluation_id, kind)
    with state.engine.begin() as connection:
        connection.execute(delete(StoredEvaluation).where(StoredEvaluation.id == row["id"]))


def apply_from_evaluation(state: AppState, slot: str, body: bytes) -> None:
    """``{"evaluationId", "policyName"}``: the candidate becomes the slot's policy with a model
    trained on the log (``api.offline.apply_candidate``; applied even when not recommended, as
    Personalizer did)."""
    payload = _object(body)
    evaluation_id = payload.get("evaluationId")
    if not isinstance(evaluation_id, str):
        raise ApiError(400, "invalid_request", "evaluationId must be a string", "evaluationId")
    row = _row(state, slot, evaluation_id)
    wanted = payload.get("policyName")
    originals = ((row["request"] or {}).get("personalizer") or {}).get("policies") or {}
    candidates = (row["request"] or {}).get("candidates") or {}
    key = next((k for k, v in originals.items() if v.get("name") == wanted), None)
    if key is None and wanted in candidates:
        key = wanted
    if key is None:
        raise ApiError(400, "unknown_candidate", f"'{wanted}' is not a policy of evaluation '{evaluation_id}'",
                       "policyName")
    offline.apply_candidate(state.engine, row["id"], key, force=True)


# -- feature importances: an evaluation of the current learning settings with importance on --------


def create_feature_importance(state: AppState, slot: str, importance_id: str, body: bytes) -> None:
    """``{name, startTime, endTime}``: our evaluation of the slot's current VW settings as the one
    candidate, with ``feature_importance`` (the value lost without each context group)."""
    if not 1 <= len(importance_id) <= MAX_ID_LENGTH:
        raise ApiError(400, "invalid_request", f"ids are 1..{MAX_ID_LENGTH} characters", "featureImportanceId")
    payload = _object(body)
    state.decider.slot(slot)
    if _find(state, slot, importance_id, "featureImportance") is not None:
        raise ApiError(409, "feature_importance_exists", f"feature importance '{importance_id}' exists",
                       "featureImportanceId")
    current = policy_arguments_of(state, slot)
    if not current:
        raise ApiError(400, "invalid_request", "feature importance needs a vw policy on the slot", "policy")
    ours: dict[str, Any] = {"slot": slot, "candidates": {"current": mapping.parse_policy_arguments(current)},
                            "feature_importance": True}
    for theirs, field in (("startTime", "since"), ("endTime", "until")):
        if payload.get(theirs) is not None:
            ours[field] = str(payload[theirs])
    our_id = offline.create_evaluation(state.engine, msgspec.json.encode(ours))
    meta = {"kind": "featureImportance", "id": importance_id, "name": payload.get("name") or importance_id}
    with state.engine.begin() as connection:
        request = connection.execute(select(StoredEvaluation.request).where(StoredEvaluation.id == our_id)).scalar_one()
        connection.execute(update(StoredEvaluation).where(StoredEvaluation.id == our_id)
                           .values(request={**request, "personalizer": meta}))


def _importance_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    data = _summary(row)
    data.pop("evaluationType")
    data["status"] = _STATUSES.get(row["status"], "Running")
    if row["error"]:
        data["description"] = row["error"]
    importance = (row["result"] or {}).get("feature_importance") or {}
    scores = importance.get("importance") or {}
    data["featureScores"] = [
        {"namespace": key.split(".", 1)[0], "featureName": key.split(".", 1)[1] if "." in key else "", "score": score}
        for key, score in sorted(scores.items(), key=lambda item: -(item[1] or 0.0))
    ]
    return data


def feature_importance_dict(state: AppState, slot: str, importance_id: str) -> dict[str, Any]:
    return _importance_dict(_row(state, slot, importance_id, "featureImportance"))


def list_feature_importances(state: AppState, slot: str, top: int | None, skip: int) -> dict[str, Any]:
    state.decider.slot(slot)
    rows = _rows(state, slot, "featureImportance")[max(0, skip):]
    if top is not None:
        rows = rows[:max(0, top)]
    return {"value": [_importance_dict(row) for row in rows]}
