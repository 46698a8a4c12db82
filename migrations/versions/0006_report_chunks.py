"""report chunks: a reader-side binary copy of each experiment's report columns

The experiment report reads every decision of an experiment with its rewards
and activations. On 1,000,000 decisions that costs about 1.5 s of SQLite work
per report even with the covering index of 0005, most of it per-row work on
rows that never change again. ``report_chunks`` keeps what the report derived
from them (encoded columns, unit hashes, windowed reward rows, activation
flags) as append-only binary chunks, each with the cursors (decision seq,
reward id, activation key) and row counts it covers, so a report reads the
chunks and only the rows past the cursors (``api.reports.copy``).

The table is written by report readers only; nothing on the decision, reward
or activation write path touches it. Existing experiments need no backfill:
their first report after this migration builds the copy from the log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 14:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'report_chunks',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('experiment_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('meta', sa.JSON(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'],
                                name=op.f('fk_report_chunks_experiment_id_experiments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_report_chunks')),
        sa.UniqueConstraint('experiment_id', 'position', name='uq_report_chunks_experiment_position'),
    )


def downgrade() -> None:
    op.drop_table('report_chunks')
