"""retention indexes: find what is old without reading every row

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05 01:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.create_index(
            "ix_executions_ended_at", ["ended_at"], unique=False,
            postgresql_where=sa.text("ended_at IS NOT NULL"),
            sqlite_where=sa.text("ended_at IS NOT NULL"))
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.create_index("ix_conversations_updated_at", ["updated_at"], unique=False)
    with op.batch_alter_table("agent_events") as batch_op:
        batch_op.create_index("ix_agent_events_created_at", ["created_at"], unique=False)
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.create_index("ix_outbox_execution", ["execution_id"], unique=False)
    with op.batch_alter_table("dead_letters") as batch_op:
        batch_op.create_index("ix_dead_letters_received_at", ["received_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch_op:
        batch_op.drop_index("ix_dead_letters_received_at")
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_index("ix_outbox_execution")
    with op.batch_alter_table("agent_events") as batch_op:
        batch_op.drop_index("ix_agent_events_created_at")
    with op.batch_alter_table("conversations") as batch_op:
        batch_op.drop_index("ix_conversations_updated_at")
    with op.batch_alter_table("executions") as batch_op:
        batch_op.drop_index("ix_executions_ended_at")
