"""How the experiments feature joins the service: at start-up the running experiments are loaded into
an :class:`~api.experiments.assignment.ExperimentBook` that the decider asks for each unit's arm, and a
poller keeps the book fresh; at shut-down the poller stops."""

from __future__ import annotations

import asyncio
from typing import Any

from api.experiments.assignment import ExperimentBook
from api.periodic import Periodic

__all__ = ["shutdown", "startup"]


async def startup(app: Any) -> None:
    state = app.state
    book = ExperimentBook(state.engine)
    await asyncio.to_thread(book.refresh)
    state.experiment_book = book
    state.decider.resolve_arm = book.resolve
    if state.settings.demo:
        from api.auth import create_key

        state.demo_key = await asyncio.to_thread(create_key, state.engine, "decide", "demo page")

    state.experiment_poller = Periodic("experiment-refresh", state.settings.reload_interval_s, book.refresh).start()


async def shutdown(app: Any) -> None:
    poller = getattr(app.state, "experiment_poller", None)
    if poller is not None:
        await asyncio.to_thread(poller.stop)
