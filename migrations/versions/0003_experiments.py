"""experiments: experiments and their arms; decisions indexed by experiment

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 15:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'experiments',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('slot_id', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('control_arm', sa.String(length=128), nullable=False),
        sa.Column('metric', sa.String(length=32), nullable=False),
        sa.Column('learning_start', sa.String(length=16), nullable=False),
        sa.Column('analysis', sa.JSON(), nullable=False),
        sa.Column('guardrails', sa.JSON(), nullable=False),
        sa.Column('salt', sa.String(length=64), nullable=False),
        sa.Column('revision', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['slot_id'], ['slots.id'], name=op.f('fk_experiments_slot_id_slots'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_experiments')),
    )
    op.create_index('ix_experiments_slot_status', 'experiments', ['slot_id', 'status'], unique=False)
    op.create_table(
        'experiment_arms',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('experiment_id', sa.Integer(), nullable=False),
        sa.Column('position', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('policy_name', sa.String(length=128), nullable=False),
        sa.Column('share', sa.Float(), nullable=False),
        sa.Column('start', sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(['experiment_id'], ['experiments.id'],
                                name=op.f('fk_experiment_arms_experiment_id_experiments'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_experiment_arms')),
        sa.UniqueConstraint('experiment_id', 'name', name='uq_experiment_arms_experiment_name'),
    )
    op.create_index('ix_decisions_experiment_seq', 'decisions', ['experiment_id', 'seq'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_decisions_experiment_seq', table_name='decisions')
    op.drop_table('experiment_arms')
    op.drop_index('ix_experiments_slot_status', table_name='experiments')
    op.drop_table('experiments')
