"""How the reports feature joins the service: every serving worker runs the report copy keeper
(``api.reports.keeper``) on a thread of its own, started with the app and stopped at shut-down."""

from __future__ import annotations

import asyncio
from typing import Any

from api.periodic import Periodic
from api.reports.keeper import REPORT_COPY_KEEP_INTERVAL_S, keep_report_copies

__all__ = ["shutdown", "startup"]


async def startup(app: Any) -> None:
    engine = app.state.engine

    def keep() -> None:
        keep_report_copies(engine)

    app.state.report_copy_keeper = Periodic("report-copies", REPORT_COPY_KEEP_INTERVAL_S, keep).start()


async def shutdown(app: Any) -> None:
    keeper = getattr(app.state, "report_copy_keeper", None)
    if keeper is not None:
        await asyncio.to_thread(keeper.stop)
