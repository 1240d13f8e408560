"""Initial schema: command log, lease projections, labels, idempotency keys, watch log,
hosts, images and enactment actions.

Revision ID: 0001
Revises:
Create Date: 2026-11-22 06:35:10.530016
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('wsched_commands',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True,
              nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('wsched_enactments',
    sa.Column('lease_id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('start', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('lease_id', 'kind', 'start')
    )
    op.create_table('wsched_hosts',
    sa.Column('index', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('cpu', sa.BigInteger(), nullable=False),
    sa.Column('memory', sa.BigInteger(), nullable=False),
    sa.Column('disk', sa.BigInteger(), nullable=False),
    sa.Column('net_in', sa.BigInteger(), nullable=False),
    sa.Column('net_out', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('index'),
    sa.UniqueConstraint('name')
    )
    op.create_table('wsched_idempotency',
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('lease_id', sa.BigInteger(), nullable=False),
    sa.Column('body_hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_table('wsched_images',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('size_mb', sa.BigInteger(), nullable=False),
    sa.Column('location', sa.Text(), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('wsched_leases',
    sa.Column('id', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('request_id', sa.String(length=128), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('revision', sa.BigInteger(), nullable=False),
    sa.Column('submit', sa.BigInteger(), nullable=False),
    sa.Column('start', sa.BigInteger(), nullable=True),
    sa.Column('end', sa.BigInteger(), nullable=True),
    sa.Column('spec', sa.Text(), nullable=False),
    sa.Column('events', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('wsched_leases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wsched_leases_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_wsched_leases_state'), ['state'], unique=False)

    op.create_table('wsched_meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('wsched_watch_log',
    sa.Column('revision', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('lease_id', sa.BigInteger(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('revision')
    )
    with op.batch_alter_table('wsched_watch_log', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wsched_watch_log_lease_id'), ['lease_id'],
                              unique=False)

    op.create_table('wsched_lease_labels',
    sa.Column('lease_id', sa.BigInteger(), nullable=False),
    sa.Column('key', sa.String(length=63), nullable=False),
    sa.Column('value', sa.String(length=256), nullable=False),
    sa.ForeignKeyConstraint(['lease_id'], ['wsched_leases.id'], ),
    sa.PrimaryKeyConstraint('lease_id', 'key')
    )
    with op.batch_alter_table('wsched_lease_labels', schema=None) as batch_op:
        batch_op.create_index('wsched_lease_labels_kv', ['key', 'value'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('wsched_lease_labels', schema=None) as batch_op:
        batch_op.drop_index('wsched_lease_labels_kv')

    op.drop_table('wsched_lease_labels')
    with op.batch_alter_table('wsched_watch_log', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wsched_watch_log_lease_id'))

    op.drop_table('wsched_watch_log')
    op.drop_table('wsched_meta')
    with op.batch_alter_table('wsched_leases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wsched_leases_state'))
        batch_op.drop_index(batch_op.f('ix_wsched_leases_kind'))

    op.drop_table('wsched_leases')
    op.drop_table('wsched_images')
    op.drop_table('wsched_idempotency')
    op.drop_table('wsched_hosts')
    op.drop_table('wsched_enactments')
    op.drop_table('wsched_commands')
