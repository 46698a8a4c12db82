"""``GET /v1/experiments/{id}/report``: the report as JSON."""

from __future__ import annotations

from typing import Any, Literal

from litestar import get
from litestar.params import FromPath, FromQuery
from litestar.types import ControllerRouterHandler

from api.auth import require_admin
from api.errors import ApiError
from api.reports.build import build_report, latency_quantiles
from api.state import AppState, ProvidedAppState

__all__ = ["ROUTES", "report_for"]

_BUCKETS: dict[str, Literal["day", "hour", "auto"]] = {"day": "day", "hour": "hour", "auto": "auto"}


def report_for(state: AppState, experiment_id: int, bucket: str = "auto", offline: bool = True) -> dict[str, Any]:
    """The report as the route and the dashboard serve it: 422 for an unknown bucket, the registry's
    policies for the offline section, this worker's decide latency for the latency guardrail."""
    chosen = _BUCKETS.get(bucket)
    if chosen is None:
        raise ApiError(422, "invalid_request", "bucket must be 'day', 'hour' or 'auto'", "bucket")
    return build_report(state.engine, experiment_id, policies=state.registry.policies, bucket=chosen,
                        offline=offline, latency=latency_quantiles(state.metrics))


@get("/v1/experiments/{experiment_id:int}/report", guards=[require_admin], sync_to_thread=True)
def get_report(app_state: ProvidedAppState, experiment_id: FromPath[int], bucket: FromQuery[str] = "auto",
               offline: FromQuery[bool] = True) -> dict[str, Any]:
    return report_for(app_state, experiment_id, bucket, offline)


ROUTES: list[ControllerRouterHandler] = [get_report]
