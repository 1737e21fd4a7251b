"""request digest: tell a retried request from a different one under the same execution_id

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: executions recorded before this revision, and failed requests, have none.
    with op.batch_alter_table("executions") as batch_op:
        batch_op.add_column(sa.Column("request_digest", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.drop_column("request_digest")
