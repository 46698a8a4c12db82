"""How champion and challenger join the service: the admin routes, ``slotbandit challenger|optimize|
revisions``, and the auto-optimize job in every serving worker (one worker per slot and period, by
the slot's claim row)."""

from __future__ import annotations

from api.champion.cli import add_commands
from api.champion.optimize import POLL_INTERVAL_S, run_due
from api.champion.routes import ROUTES
from api.features import Feature, Job
from api.state import AppState

__all__ = ["FEATURE"]


def _auto_optimize(state: AppState) -> None:
    if run_due(state.engine):
        state.registry.refresh()  # a promotion here is served at once by this worker


FEATURE = Feature(
    name="champion",
    routes=ROUTES,
    jobs=(Job("auto-optimize", _auto_optimize, lambda settings: POLL_INTERVAL_S),),
    add_commands=add_commands,
)
