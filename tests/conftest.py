"""Shared fixtures: real databases (a SQLite file, and PostgreSQL when
``SLOTBANDIT_TEST_DATABASE_URL`` is set), the real app through Litestar's
TestClient, and API keys."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

PG_ENV = "SLOTBANDIT_TEST_DATABASE_URL"


def _postgres_url() -> str | None:
    return os.environ.get(PG_ENV) or None


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (dropped afterwards)."""
    base = _postgres_url()
    if base is None:
        pytest.skip(f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    name = f"sb_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as error:  # noqa: BLE001
        admin.dispose()
        pytest.fail(f"{PG_ENV} is set but PostgreSQL is not reachable: {error}")
    url = make_url(base).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'slotbandit.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test using it runs on a SQLite file and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@dataclass
class Service:
    client: object  # litestar.testing.TestClient
    admin_key: str
    decide_key: str
    settings: object
    database_url: str

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    @property
    def decider(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.decide_key}"}


def make_service_settings(database_url: str, tmp_path: Path, **overrides: object) -> object:
    from api.settings import ServiceSettings

    values: dict[str, object] = dict(
        database_url=database_url, secret="test-secret", embedded_learner=False, reload_interval_s=0.2,
        secret_file=str(tmp_path / "secret.key"),
    )
    values.update(overrides)
    return ServiceSettings(**values)  # type: ignore[arg-type]


def create_keys(database_url: str) -> tuple[str, str]:
    from api.auth import create_key
    from api.db.engine import make_engine, migrate

    migrate(database_url)
    engine = make_engine(database_url)
    try:
        return create_key(engine, "admin", "tests"), create_key(engine, "decide", "tests")
    finally:
        engine.dispose()


@pytest.fixture
def service(database_url: str, tmp_path: Path) -> Iterator[Service]:
    """The real app on a real database, driven through Litestar's TestClient."""
    from litestar.testing import TestClient

    from api.app import create_app

    admin_key, decide_key = create_keys(database_url)
    settings = make_service_settings(database_url, tmp_path)
    with TestClient(app=create_app(settings)) as client:  # type: ignore[arg-type]
        yield Service(client, admin_key, decide_key, settings, database_url)
