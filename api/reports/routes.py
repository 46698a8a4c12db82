"""``GET /v1/experiments/{id}/report``: the report as JSON."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery

from api.auth import require_admin
from api.errors import ApiError
from api.reports.build import build_report, latency_quantiles

__all__ = ["ROUTES", "report_for"]


def _state(request: Request) -> State:  # type: ignore[type-arg]
    return request.app.state


def report_for(state: State, experiment_id: int, bucket: FromQuery[str] = "auto", offline: FromQuery[bool] = True) -> dict[str, Any]:
    if bucket not in ("day", "hour", "auto"):
        raise ApiError(422, "invalid_request", "bucket must be 'day', 'hour' or 'auto'", "bucket")
    return build_report(state.engine, experiment_id, policies=state.registry.policies, bucket=bucket,  # type: ignore[arg-type]
                        offline=offline, latency=latency_quantiles(state.metrics))


@get("/v1/experiments/{experiment_id:int}/report", guards=[require_admin], sync_to_thread=True)
def get_report(request: Request, experiment_id: FromPath[int], bucket: FromQuery[str] = "auto",  # type: ignore[type-arg]
               offline: FromQuery[bool] = True) -> dict[str, Any]:
    return report_for(_state(request), experiment_id, bucket, offline)


ROUTES = [get_report]
