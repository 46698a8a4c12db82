"""The ``/personalizer`` routes: Azure Personalizer's single-slot REST API.

Every path is served as ``/personalizer/v1.0/<path>`` (``azure-cognitiveservices-personalizer``)
and ``/personalizer/<path>?api-version=2022-09-01-preview`` (``azure-ai-personalizer``; the
``api-version`` parameter is not needed), on the slot ``ServiceSettings.personalizer_slot``; and
both again under ``/services/{slot}``, on that (existing) slot: a client whose endpoint is
``https://host/services/news.hero`` is the Personalizer "service" ``news.hero``. Rank, reward and activate call the v1 hot path
(``api.hot_path``) with a translated body: the same decide path, log, propensities, idempotent
event ids and durability before the answer. Configuration changes go through the slot admin path
of ``PUT /v1/slots/{slot}`` and the model routes through ``api.model_admin``.

The routes are left out of our OpenAPI document (``/schema``): their contract is Microsoft's
Personalizer REST reference, not ours.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.params import FromPath, FromQuery
from sqlalchemy import delete as sqldelete
from sqlalchemy import func, select

from api import model_admin
from api.auth import require_admin, require_decide
from api.db.experiment_models import ReportChunk
from api.db.learning_models import LearnedDecision
from api.db.models import Activation, Decision, Reward
from api.errors import ApiError
from api.hot_path import activate_event, record_reward, serve_decision
from api.personalizer import evaluations, mapping
from api.personalizer.errors import EXCEPTION_HANDLERS
from api.registry import SlotState
from api.state import AppState, ProvidedAppState
from bandits.policies import VWConfig

__all__ = ["ROUTES", "ensure_slot"]

Req = Request[Any, Any, Any]


def _paths(path: str) -> list[str]:
    return [f"{prefix}/personalizer{version}{path}" for prefix in ("", "/services/{service:str}")
            for version in ("/v1.0", "")]


Service = FromPath[str | None]
"""The ``{service}`` of ``/services/{service}/personalizer/...``: the slot of that name (None: the
default, ``ServiceSettings.personalizer_slot``)."""


def slot_name(state: AppState, service: str | None) -> str:
    return service or state.settings.personalizer_slot


def _json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body or b"{}")
    except msgspec.DecodeError as error:
        raise ApiError(400, "malformed_json", f"the body is not valid JSON: {error}", "body") from error


def _object(body: bytes) -> dict[str, Any]:
    value = _json(body)
    if not isinstance(value, dict):
        raise ApiError(400, "invalid_request", "the body must be a JSON object", "body")
    return value


def _slot(state: AppState, slot: str) -> SlotState:
    return state.decider.slot(slot)


def ensure_slot(state: AppState) -> None:
    """Create the Personalizer slot when it is missing: default settings, a reward range of
    [-1, 1] as Personalizer accepted, the default ``vw`` policy."""
    if state.settings.personalizer_slot not in state.registry.slots:
        _put_slot(state, state.settings.personalizer_slot, {"reward_range": [-1, 1]})


def _put_slot(state: AppState, slot: str, values: dict[str, Any]) -> None:
    # the one slot admin path of PUT /v1/slots (imported late: api.app imports this feature)
    from api.app import _put_slot as put_slot

    put_slot(state, slot, msgspec.json.encode(values))  # type: ignore[arg-type]


_H: Any = {"exception_handlers": EXCEPTION_HANDLERS, "include_in_schema": False, "guards": [require_admin]}
"""What every admin route of the surface declares."""
_D: Any = {"exception_handlers": EXCEPTION_HANDLERS, "include_in_schema": False, "guards": [require_decide]}
"""... and every rank, reward and activate route."""


# -- rank, reward, activate ----------------------------------------------------------------


@post(_paths("/rank"), **_D, status_code=201)
async def rank(request: Req, app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    payload = _object(await request.body())
    body, _ = mapping.decide_body(payload)
    client = request.client.host if request.client else None
    decision = await serve_decision(app_state, slot_name(app_state, service), msgspec.json.encode(body),
                                    request.headers, client)
    return mapping.rank_response(decision, [action["id"] for action in payload["actions"]])


@post(_paths("/events/{event_id:str}/reward"), **_D, status_code=204)
async def reward(request: Req, app_state: ProvidedAppState, event_id: FromPath[str], service: Service = None) -> None:
    payload = _object(await request.body())
    value = payload.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ApiError(400, "invalid_request", "value must be a number", "value")
    await record_reward(app_state, event_id, msgspec.json.encode({"value": value}))


@post(_paths("/events/{event_id:str}/activate"), **_D, status_code=204)
async def activate(app_state: ProvidedAppState, event_id: FromPath[str], service: Service = None) -> None:
    await activate_event(app_state, event_id, b"")


# -- configurations ------------------------------------------------------------------------


def _vw(state: AppState, slot: SlotState) -> VWConfig | None:
    policy = state.registry.policies.get(slot.policy_name)
    if policy is None or policy.config.kind != "vw":
        return None
    return policy.config.vw or VWConfig()


def service_configuration(state: AppState, slot_: str) -> dict[str, Any]:
    slot = _slot(state, slot_)
    vw = _vw(state, slot)
    return {
        "rewardWaitTime": mapping.format_duration(slot.reward_window_s),
        "defaultReward": slot.default_reward,
        "rewardAggregation": {v: k for k, v in mapping.REWARD_AGGREGATIONS.items()}[slot.reward_aggregation],
        "explorationPercentage": round(vw.epsilon * 100, 6) if vw is not None else 0.0,
        "modelExportFrequency": mapping.format_duration(max(1.0, state.settings.model_poll_interval_s)),
        "logRetentionDays": -1,
        "modelRetrainDays": 0,
        "learningMode": {v: k for k, v in mapping.LEARNING_MODES.items()}[slot.learning_mode],
        "isAutoOptimizationEnabled": False,
        "logMirrorEnabled": False,
    }


def update_service_configuration(state: AppState, slot_: str, body: bytes) -> dict[str, Any]:
    """Map the fields we have onto the slot (one ``PUT /v1/slots`` change); the rest are ignored."""
    payload = _object(body)
    slot = _slot(state, slot_)
    values: dict[str, Any] = {}
    if payload.get("rewardWaitTime") is not None:
        values["reward_window_s"] = int(round(mapping.parse_duration(payload["rewardWaitTime"], "rewardWaitTime")))
    if payload.get("defaultReward") is not None:
        values["default_reward"] = payload["defaultReward"]
    if payload.get("rewardAggregation") is not None:
        names = {k.lower(): v for k, v in mapping.REWARD_AGGREGATIONS.items()}
        aggregation = str(payload["rewardAggregation"]).lower()
        if aggregation not in names:
            raise ApiError(400, "invalid_request", f"rewardAggregation must be one of "
                           f"{', '.join(mapping.REWARD_AGGREGATIONS)}", "rewardAggregation")
        values["reward_aggregation"] = names[aggregation]
    if payload.get("learningMode") is not None:
        modes = {k.lower(): v for k, v in mapping.LEARNING_MODES.items()}
        mode = str(payload["learningMode"]).lower()
        if mode not in modes:
            raise ApiError(400, "invalid_request", f"learningMode must be one of {', '.join(mapping.LEARNING_MODES)}",
                           "learningMode")
        values["learning_mode"] = modes[mode]
    percentage = payload.get("explorationPercentage")
    if percentage is not None:
        if isinstance(percentage, bool) or not isinstance(percentage, int | float) or not 0 <= percentage <= 100:
            raise ApiError(400, "invalid_request", "explorationPercentage must be a number in [0, 100]",
                           "explorationPercentage")
        vw = _vw(state, slot)
        if vw is not None and abs(vw.epsilon * 100 - percentage) > 1e-9:
            options = {**vw.to_dict(), "exploration": "epsilon", "epsilon": percentage / 100, "cb_type": "mtr"}
            values["policy"] = {"kind": "vw", "vw": options}
    if values:
        _put_slot(state, slot_, values)
    return service_configuration(state, slot_)


@get(_paths("/configurations/service"), **_H)
async def get_service_configuration(app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(service_configuration, app_state, slot_name(app_state, service))


@put(_paths("/configurations/service"), **_H)
async def put_service_configuration(request: Req, app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(update_service_configuration, app_state, slot_name(app_state, service),
                                   await request.body())


def policy_dict(state: AppState, slot_: str) -> dict[str, Any]:
    slot = _slot(state, slot_)
    policy = state.registry.policies.get(slot.policy_name)
    kind = policy.config.kind if policy else "vw"
    vw = _vw(state, slot)
    return {"name": slot.policy_name if kind == "vw" else f"{slot.policy_name} ({kind})",
            "arguments": mapping.policy_arguments(vw.to_args()) if vw is not None else ""}


def update_policy(state: AppState, slot_: str, body: bytes) -> dict[str, Any]:
    _slot(state, slot_)  # a 404 for a service that does not exist (PUT /v1/slots would create it)
    payload = _object(body)
    options = mapping.parse_policy_arguments(payload.get("arguments"))
    VWConfig.from_dict(options)  # refuse bad values (naming the option) before anything changes
    _put_slot(state, slot_, {"policy": {"kind": "vw", "vw": options}})
    return policy_dict(state, slot_)


def reset_policy(state: AppState, slot_: str) -> dict[str, Any]:
    _slot(state, slot_)
    _put_slot(state, slot_, {"policy": {"kind": "vw"}})  # the default VWConfig
    return policy_dict(state, slot_)


@get(_paths("/configurations/policy"), **_H)
async def get_policy(app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(policy_dict, app_state, slot_name(app_state, service))


@put(_paths("/configurations/policy"), **_H)
async def put_policy(request: Req, app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(update_policy, app_state, slot_name(app_state, service), await request.body())


@delete(_paths("/configurations/policy"), status_code=200, **_H)
async def delete_policy(app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(reset_policy, app_state, slot_name(app_state, service))


# -- model ---------------------------------------------------------------------------------


def _policy_name(state: AppState, service: str | None) -> str:
    return _slot(state, slot_name(state, service)).policy_name


@get(_paths("/model"), **_H)
async def get_model(app_state: ProvidedAppState, service: Service = None) -> Response[bytes]:
    name = _policy_name(app_state, service)
    _, model = await asyncio.to_thread(model_admin.export_model, app_state.engine, name)
    return Response(model, media_type="application/octet-stream")


@put(_paths("/model"), request_max_body_size=model_admin.MAX_MODEL_BYTES, status_code=204, **_H)
async def put_model(request: Req, app_state: ProvidedAppState, service: Service = None) -> None:
    name = _policy_name(app_state, service)
    await asyncio.to_thread(model_admin.import_model, app_state.engine, name, await request.body())
    await asyncio.to_thread(app_state.registry.refresh)


@delete(_paths("/model"), status_code=204, **_H)
async def delete_model(app_state: ProvidedAppState, service: Service = None) -> None:
    name = _policy_name(app_state, service)
    await asyncio.to_thread(model_admin.reset_policy, app_state.engine, name)
    await asyncio.to_thread(app_state.registry.refresh)


def model_properties(state: AppState, slot: str) -> dict[str, Any]:
    snapshots = model_admin.list_snapshots(state.engine, _slot(state, slot).policy_name)
    if not snapshots:
        return {}
    return {"creationTime": snapshots[-1]["created_at"], "lastModifiedTime": snapshots[0]["created_at"]}


@get(_paths("/model/properties"), **_H)
async def get_model_properties(app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(model_properties, app_state, slot_name(app_state, service))


# -- logs ----------------------------------------------------------------------------------


def log_properties(state: AppState, slot_: str) -> dict[str, Any]:
    slot = _slot(state, slot_)
    with state.engine.connect() as connection:
        first, last = connection.execute(
            select(func.min(Decision.created_at), func.max(Decision.created_at)).where(Decision.slot_id == slot.id)
        ).one()
    if first is None:
        return {"dateRange": {}}
    return {"dateRange": {"from": first.isoformat(), "to": last.isoformat()}}


@get(_paths("/logs/properties"), **_H)
async def get_log_properties(app_state: ProvidedAppState, service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(log_properties, app_state, slot_name(app_state, service))


# -- evaluations ---------------------------------------------------------------------------

def _submit(request: Req) -> None:
    runner = getattr(request.app.state, "evaluation_runner", None)
    if runner is not None:
        runner.submit()


@put(_paths("/evaluations/{evaluation_id:str}"), status_code=200, **_H)
async def put_evaluation(request: Req, app_state: ProvidedAppState, evaluation_id: FromPath[str],
                         service: Service = None) -> None:
    await asyncio.to_thread(evaluations.create_evaluation, app_state, slot_name(app_state, service), evaluation_id,
                            await request.body())
    _submit(request)


@get(_paths("/evaluations/{evaluation_id:str}"), **_H)
async def get_evaluation(app_state: ProvidedAppState, evaluation_id: FromPath[str],
                         service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(evaluations.evaluation_dict, app_state, slot_name(app_state, service),
                                   evaluation_id)


@get(_paths("/evaluations"), **_H)
async def get_evaluations(app_state: ProvidedAppState, service: Service = None, top: FromQuery[int | None] = None,
                          skip: FromQuery[int] = 0) -> dict[str, Any]:
    return await asyncio.to_thread(evaluations.list_evaluations, app_state, slot_name(app_state, service), top, skip)


@delete(_paths("/evaluations/{evaluation_id:str}"), status_code=204, **_H)
async def delete_evaluation(app_state: ProvidedAppState, evaluation_id: FromPath[str],
                            service: Service = None) -> None:
    await asyncio.to_thread(evaluations.delete_evaluation, app_state, slot_name(app_state, service), evaluation_id)


@post(_paths("/configurations/applyFromEvaluation"), status_code=204, **_H)
async def post_apply(request: Req, app_state: ProvidedAppState, service: Service = None) -> None:
    await asyncio.to_thread(evaluations.apply_from_evaluation, app_state, slot_name(app_state, service),
                            await request.body())
    await asyncio.to_thread(app_state.registry.refresh)


@put(_paths("/featureImportances/{importance_id:str}"), status_code=200, **_H)
async def put_feature_importance(request: Req, app_state: ProvidedAppState, importance_id: FromPath[str],
                                 service: Service = None) -> None:
    await asyncio.to_thread(evaluations.create_feature_importance, app_state, slot_name(app_state, service),
                            importance_id, await request.body())
    _submit(request)


@get(_paths("/featureImportances/{importance_id:str}"), **_H)
async def get_feature_importance(app_state: ProvidedAppState, importance_id: FromPath[str],
                                 service: Service = None) -> dict[str, Any]:
    return await asyncio.to_thread(evaluations.feature_importance_dict, app_state, slot_name(app_state, service),
                                   importance_id)


@get(_paths("/featureImportances"), **_H)
async def get_feature_importances(app_state: ProvidedAppState, service: Service = None,
                                  top: FromQuery[int | None] = None, skip: FromQuery[int] = 0) -> dict[str, Any]:
    return await asyncio.to_thread(evaluations.list_feature_importances, app_state, slot_name(app_state, service),
                                   top, skip)


@delete(_paths("/featureImportances/{importance_id:str}"), status_code=204, **_H)
async def delete_feature_importance(app_state: ProvidedAppState, importance_id: FromPath[str],
                                    service: Service = None) -> None:
    await asyncio.to_thread(evaluations.delete_evaluation, app_state, slot_name(app_state, service), importance_id,
                            "featureImportance")


def delete_logs(state: AppState, slot_: str) -> dict[str, int]:
    """Delete the slot's decisions with their activations, rewards and learner ledger rows (the
    model stays, as in Personalizer); report copies are rebuilt from what is left."""
    slot = _slot(state, slot_)
    events = select(Decision.event_id).where(Decision.slot_id == slot.id)
    with state.engine.begin() as connection:
        rewards = connection.execute(sqldelete(Reward).where(Reward.event_id.in_(events))).rowcount
        activations = connection.execute(sqldelete(Activation).where(Activation.event_id.in_(events))).rowcount
        connection.execute(sqldelete(LearnedDecision).where(
            LearnedDecision.seq.in_(select(Decision.seq).where(Decision.slot_id == slot.id))))
        decisions = connection.execute(sqldelete(Decision).where(Decision.slot_id == slot.id)).rowcount
        if decisions or rewards or activations:
            connection.execute(sqldelete(ReportChunk))
    return {"decisions": decisions, "activations": activations, "rewards": rewards}


@delete(_paths("/logs"), status_code=204, **_H)
async def delete_log(app_state: ProvidedAppState, service: Service = None) -> None:
    await asyncio.to_thread(delete_logs, app_state, slot_name(app_state, service))


ROUTES = [rank, reward, activate, get_service_configuration, put_service_configuration, get_policy, put_policy,
          delete_policy, get_model, put_model, delete_model, get_model_properties, get_log_properties, delete_log,
          put_evaluation, get_evaluation, get_evaluations, delete_evaluation, post_apply, put_feature_importance,
          get_feature_importance, get_feature_importances, delete_feature_importance]
"""Every Personalizer route, each with its errors in Personalizer's shape."""
