"""champion and challenger: challenger policies, policy revisions, auto-optimize, holdout

``policies.source`` names the policy whose decisions a challenger learns (NULL for every policy
that serves). ``slots.holdout_share`` (0 = no holdout) and ``slots.auto_optimize`` (the JSON
setting, NULL = off) are the slot settings of ``api.champion``. ``policy_revisions`` audits every
promotion, dry-run recommendation and rollback with its evidence and the models it swapped;
``auto_optimize_state`` is the one claim row per slot that makes one worker run a slot's
auto-optimize at a time (and remembers when it last ran). Plain ``ADD COLUMN``s with server
defaults: no table is rebuilt on SQLite.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 10:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('policies') as batch:
        batch.add_column(sa.Column('source', sa.String(length=128), nullable=True))
    with op.batch_alter_table('slots') as batch:
        batch.add_column(sa.Column('holdout_share', sa.Float(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('auto_optimize', sa.JSON(), nullable=True))
    op.create_table(
        'policy_revisions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('slot_name', sa.String(length=128), nullable=False),
        sa.Column('policy_name', sa.String(length=128), nullable=False),
        sa.Column('action', sa.String(length=16), nullable=False),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('challenger', sa.String(length=128), nullable=True),
        sa.Column('policy_revision', sa.Integer(), nullable=True),
        sa.Column('old_config', sa.JSON(), nullable=True),
        sa.Column('new_config', sa.JSON(), nullable=True),
        sa.Column('old_model', sa.LargeBinary(), nullable=True),
        sa.Column('old_cursor', sa.BigInteger(), nullable=True),
        sa.Column('new_model', sa.LargeBinary(), nullable=True),
        sa.Column('new_cursor', sa.BigInteger(), nullable=True),
        sa.Column('snapshot_version', sa.Integer(), nullable=True),
        sa.Column('evidence', sa.JSON(), nullable=False),
        sa.Column('rollback_of', sa.Integer(), nullable=True),
        sa.Column('rolled_back_by', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_policy_revisions')),
    )
    op.create_index('ix_policy_revisions_slot_id', 'policy_revisions', ['slot_name', 'id'])
    op.create_table(
        'auto_optimize_state',
        sa.Column('slot_name', sa.String(length=128), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=True),
        sa.Column('claimed_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_run_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_outcome', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('slot_name', name=op.f('pk_auto_optimize_state')),
    )


def downgrade() -> None:
    op.drop_table('auto_optimize_state')
    op.drop_index('ix_policy_revisions_slot_id', table_name='policy_revisions')
    op.drop_table('policy_revisions')
    with op.batch_alter_table('slots') as batch:
        batch.drop_column('auto_optimize')
        batch.drop_column('holdout_share')
    with op.batch_alter_table('policies') as batch:
        batch.drop_column('source')
