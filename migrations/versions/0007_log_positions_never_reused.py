"""log positions never reused: AUTOINCREMENT for decisions.seq and rewards.id on SQLite

A SQLite ``INTEGER PRIMARY KEY`` without ``AUTOINCREMENT`` hands out
``max(rowid) + 1``: after a purge emptied the decisions table, new decisions
got positions the learner's cursor had already passed, and it silently skipped
them. With ``AUTOINCREMENT`` SQLite keeps the highest position ever used in
``sqlite_sequence`` and never hands it out again, as a PostgreSQL sequence
never does. SQLite cannot add the keyword in place: both tables are rebuilt
(rows, positions and indexes copied as they are). PostgreSQL is unchanged.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:00:00
"""
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

TABLES = ('decisions', 'rewards')


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != 'sqlite':
        return
    for table in TABLES:
        with op.batch_alter_table(table, recreate='always', table_kwargs={'sqlite_autoincrement': autoincrement}):
            pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
