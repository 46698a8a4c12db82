"""What a feature of the service declares: its routes, start-up and shut-down hooks, background
jobs and ``slotbandit`` subcommands (:class:`Feature`). ``api.app.FEATURES`` lists the features by
name; the app and the command line read that one list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from litestar import Litestar
from litestar.types import ControllerRouterHandler

from api.settings import ServiceSettings
from api.state import AppState

__all__ = ["AddCommands", "Feature", "Hook", "Job"]

Hook = Callable[[Litestar], Awaitable[None]]
"""Run once at start-up (after the shared state exists) or at shut-down (before it goes)."""
AddCommands = Callable[[Any, Callable[[str], Callable[[Any], Any]]], None]
"""``add_commands(subparsers, command)``: adds subparsers and registers each one's function with
``command(name)`` (``api.cli``)."""


@dataclass(frozen=True)
class Job:
    """A function of the worker's :class:`~api.state.AppState` run every few seconds on a thread of its own
    (``api.periodic.Periodic``), from after the start-up hooks until before the shut-down hooks."""

    name: str
    """The thread's name, also in the log line when a run fails."""
    run: Callable[[AppState], None]
    interval_s: Callable[[ServiceSettings], float]
    """Seconds between runs (the first run comes one interval after start-up)."""


@dataclass(frozen=True)
class Feature:
    """One feature of the service, wired into the app and the command line by ``api.app.FEATURES``."""

    name: str
    routes: Sequence[ControllerRouterHandler] = ()
    startup: Hook | None = None
    """Awaited at start-up in the order of the list."""
    shutdown: Hook | None = None
    """Awaited at shut-down in the reverse order."""
    jobs: Sequence[Job] = ()
    add_commands: AddCommands | None = None
