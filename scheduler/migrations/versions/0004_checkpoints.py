"""Checkpoints: the core's state after the first N commands, so a restart re-applies
only the commands after it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 02:10:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table('wsched_checkpoints',
    sa.Column('commands', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('at', sa.BigInteger(), nullable=False),
    sa.Column('format', sa.String(length=128), nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('commands')
    )


def downgrade() -> None:
    op.drop_table('wsched_checkpoints')
