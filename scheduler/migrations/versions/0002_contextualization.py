"""Contextualization: per-VM context state and the context broker's keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 07:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('wsched_context_vms',
    sa.Column('lease_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('instance_id', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('deadline', sa.BigInteger(), nullable=False),
    sa.Column('expires', sa.BigInteger(), nullable=False),
    sa.Column('reported_at', sa.BigInteger(), nullable=True),
    sa.Column('identity', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('lease_id', 'index'),
    sa.UniqueConstraint('instance_id')
    )
    with op.batch_alter_table('wsched_context_vms', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wsched_context_vms_address'), ['address'],
                              unique=False)
    op.create_table('wsched_context_keys',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('wsched_context_keys')
    with op.batch_alter_table('wsched_context_vms', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wsched_context_vms_address'))
    op.drop_table('wsched_context_vms')
