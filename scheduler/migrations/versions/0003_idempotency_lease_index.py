"""Index the idempotency keys by lease: expired keys are deleted by lease id.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 00:55:00.000000
"""

from __future__ import annotations

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table('wsched_idempotency', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_wsched_idempotency_lease_id'), ['lease_id'],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table('wsched_idempotency', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_wsched_idempotency_lease_id'))
