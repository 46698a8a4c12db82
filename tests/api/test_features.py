"""The features list of ``api.app``: every feature's routes are served, its jobs run on threads of
their own while the app lives and stop with it, and its subcommands are on the command line."""

from __future__ import annotations

import threading

import pytest


def _job_names() -> set[str]:
    from api.app import FEATURES

    return {job.name for feature in FEATURES for job in feature.jobs}


def test_feature_names_are_unique_and_jobs_are_declared() -> None:
    from api.app import FEATURES

    names = [feature.name for feature in FEATURES]
    assert len(names) == len(set(names))
    assert {"experiment-refresh", "report-copies"} <= _job_names()


def test_every_feature_route_is_served(database_url, tmp_path) -> None:
    from litestar.testing import TestClient

    from api.app import FEATURES, create_app
    from tests.conftest import make_service_settings

    app = create_app(make_service_settings(database_url, tmp_path))
    served = {route.path for route in app.routes}
    for feature in FEATURES:
        for handler in feature.routes:
            paths = getattr(handler, "paths", None) or {route.path for route in getattr(handler, "routes", [])}
            assert paths and set(paths) <= served, (feature.name, paths)
    with TestClient(app=app):
        running = {t.name for t in threading.enumerate()}
        assert _job_names() <= running
    assert not _job_names() & {t.name for t in threading.enumerate() if t.is_alive()}


@pytest.mark.parametrize("command", ["learn", "model", "simulate", "evaluate", "report"])
def test_every_feature_adds_its_subcommands(command) -> None:
    from api.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
