"""Alembic environment: one history for SQLite and PostgreSQL."""

from __future__ import annotations

import os

from alembic import context

import api.db.champion_models  # noqa: F401 - registers the policy revisions and auto-optimize tables
import api.db.evaluation_models  # noqa: F401 - registers the evaluations table
import api.db.experiment_models  # noqa: F401 - registers the experiment tables on Base.metadata
import api.db.learning_models  # noqa: F401 - registers the learner tables
from api.db.engine import make_engine
from api.db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or os.environ.get(
        "SLOTBANDIT_DATABASE_URL", "sqlite:///var/slotbandit.db"
    )


def run_migrations_offline() -> None:
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url())
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
