"""learning loop: learner leases, learned-decision ledger, decisions by policy

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 14:00:00
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'learner_leases',
        sa.Column('policy_name', sa.String(length=128), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('policy_name', name=op.f('pk_learner_leases')),
    )
    op.create_table(
        'learned_decisions',
        sa.Column('policy_name', sa.String(length=128), nullable=False),
        sa.Column('seq', sa.BigInteger(), nullable=False),
        sa.Column('reward', sa.Float(), nullable=False),
        sa.Column('snapshot_version', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('policy_name', 'seq', name=op.f('pk_learned_decisions')),
    )
    # the learner reads one policy's decisions in seq order after its cursor
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.create_index('ix_decisions_policy_seq', ['policy_name', 'seq'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('decisions', schema=None) as batch_op:
        batch_op.drop_index('ix_decisions_policy_seq')
    op.drop_table('learned_decisions')
    op.drop_table('learner_leases')
