"""How the experiments feature joins the service: at start-up the running experiments are loaded into
an :class:`~api.experiments.assignment.ExperimentBook` that the decider asks for each unit's arm; a
job polls the database to keep the book fresh."""

from __future__ import annotations

import asyncio
from typing import Any

from api.experiments.assignment import ExperimentBook
from api.experiments.lifecycle import refresh_experiment_book
from api.experiments.routes import ROUTES
from api.features import Feature, Job
from api.state import app_state_of

__all__ = ["FEATURE"]


async def startup(app: Any) -> None:
    state = app_state_of(app)
    book = ExperimentBook(state.engine)
    await asyncio.to_thread(book.refresh)
    state.experiment_book = book
    state.decider.resolve_arm = book.resolve
    if state.settings.demo:
        from api.auth import create_key

        state.demo_key = await asyncio.to_thread(create_key, state.engine, "decide", "demo page")


FEATURE = Feature(
    name="experiments",
    routes=ROUTES,
    startup=startup,
    jobs=(Job("experiment-refresh", refresh_experiment_book, lambda settings: settings.reload_interval_s),),
)
