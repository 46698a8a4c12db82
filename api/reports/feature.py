"""How the reports feature joins the service: the report route, ``slotbandit report``, and the
report copy keeper (``api.reports.keeper``) as a job in every serving worker."""

from __future__ import annotations

from api.features import Feature, Job
from api.reports.cli import add_commands
from api.reports.keeper import REPORT_COPY_KEEP_INTERVAL_S, keep_report_copies
from api.reports.routes import ROUTES
from api.state import AppState

__all__ = ["FEATURE"]


def _keep_copies(state: AppState) -> None:
    keep_report_copies(state.engine)


FEATURE = Feature(
    name="reports",
    routes=ROUTES,
    jobs=(Job("report-copies", _keep_copies, lambda settings: REPORT_COPY_KEEP_INTERVAL_S),),
    add_commands=add_commands,
)
