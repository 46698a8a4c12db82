"""The shared state of a serving worker: :class:`AppState`, built once in the lifespan of
``api.app`` and handed to route handlers by Litestar's dependency injection::

    @get("/v1/experiments/{experiment_id:int}", guards=[require_admin], sync_to_thread=True)
    def get_experiment(app_state: ProvidedAppState, experiment_id: FromPath[int]) -> dict[str, Any]:
        return experiment_dict(app_state.engine, experiment_id)

Functions below the routes take the :class:`AppState` itself. Modules not converted yet (the
admin and hot routes of ``api.app``, the guards, ``api.learner``, ``api.model_admin``,
``api.offline``) read the same objects from Litestar's untyped ``app.state`` bag, where the
lifespan puts them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from litestar import Request
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.params import SkipValidation
from sqlalchemy import Engine

if TYPE_CHECKING:  # imported for the annotations only: api.experiments imports this module
    from api.auth import KeyStore
    from api.decide import Decider
    from api.experiments.assignment import ExperimentBook
    from api.log_writer import LogWriter
    from api.metrics import Metrics
    from api.registry import Registry
    from api.settings import ServiceSettings

__all__ = ["DEPENDENCIES", "AnyRequest", "AppState", "ProvidedAppState", "app_state_of"]

AnyRequest = Request[Any, Any, State]
"""A request as the handlers take it: no authenticated user or token types (keys are checked by guards)."""


@dataclass
class AppState:
    """What the handlers of one worker share; made by the lifespan, completed by start-up hooks."""

    settings: ServiceSettings
    engine: Engine
    metrics: Metrics
    registry: Registry
    """Slots, catalogs and policies in memory, polled from the database."""
    writer: LogWriter
    """The decision/activation/reward log writer (group commits)."""
    decider: Decider
    key_store: KeyStore
    experiment_book: ExperimentBook | None = None
    """The running experiments (set by the experiments feature at start-up)."""
    demo_key: str | None = None
    """A decide key for the demo page when ``settings.demo`` (set by the experiments feature)."""


# SkipValidation: the handlers get the object itself, unchecked, and Litestar does not resolve
# the annotations of AppState's fields (some are imported for type checking only).
ProvidedAppState = NamedDependency[SkipValidation[AppState]]
"""The annotation of a handler parameter named ``app_state``."""


def app_state_of(app: Any) -> AppState:
    """The worker's :class:`AppState` (for start-up and shut-down hooks, which receive the app)."""
    state: AppState = app.state.app_state
    return state


def _provide_app_state(state: State) -> AppState:
    provided: AppState = state.app_state
    return provided


DEPENDENCIES = {"app_state": Provide(_provide_app_state, sync_to_thread=False)}
"""The app-level dependencies (``Litestar(dependencies=...)``)."""
