"""Experiments on slots: policies ("arms") compared on one slot, units assigned to arms stickily.

An experiment compares policies ("arms") on one slot. Lifecycle: ``draft`` ->
``running`` -> ``stopped``; at most one running experiment per slot (409
otherwise). While one runs, every consented decision of the slot is assigned
to an arm and logs ``experiment_id`` and ``arm``; the arm's policy chooses.
What a growth team reads about it is the report, ``api.reports``.

One role per file:

    assignment.py  the unit -> arm draw and the running experiments in memory (:class:`ExperimentBook`)
    schemas.py     the request bodies (msgspec structs)
    lifecycle.py   create, start, stop, list and read experiments (routes, reports and dashboard call them)
    routes.py      ``/v1/experiments`` and the beacon routes of the browser snippet
    feature.py     how the feature joins the service (:data:`FEATURE`): the book and its poll job
"""

from __future__ import annotations

from api.experiments.assignment import ExperimentBook, RunningExperiment, unit_draw
from api.experiments.feature import FEATURE
from api.experiments.lifecycle import (
    analysis_config,
    check_policy_for_slot,
    create_experiment,
    experiment_dict,
    list_experiments,
    read_experiment,
    slot_row,
    start_experiment,
    stop_experiment,
)
from api.experiments.routes import ROUTES

__all__ = [
    "FEATURE",
    "ROUTES",
    "ExperimentBook",
    "RunningExperiment",
    "analysis_config",
    "check_policy_for_slot",
    "create_experiment",
    "experiment_dict",
    "list_experiments",
    "read_experiment",
    "slot_row",
    "start_experiment",
    "stop_experiment",
    "unit_draw",
]
