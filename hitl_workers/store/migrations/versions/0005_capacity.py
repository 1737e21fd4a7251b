"""routing: agents' capacity, and an index to count an agent's load

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 01:40:00

* ``agents.capacity``: how many conversations the agent may hold claimed at once (1–1000);
  NULL, the default, is unlimited (docs/contract.md §9).
* ``ix_conversations_claimed_by`` (PostgreSQL, GIN): an agent's load is the number of
  conversations whose ``claimed_by`` holds it, counted under the claim's lock; the index keeps
  that count from reading every conversation.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("capacity", sa.Integer(), nullable=True))
        batch.create_check_constraint(
            op.f("ck_agents_capacity"), "capacity IS NULL OR (capacity >= 1 AND capacity <= 1000)")
    if op.get_bind().dialect.name == "postgresql":
        op.create_index("ix_conversations_claimed_by", "conversations", ["claimed_by"],
                        postgresql_using="gin")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_index("ix_conversations_claimed_by", table_name="conversations")
    with op.batch_alter_table("agents") as batch:
        batch.drop_constraint(op.f("ck_agents_capacity"), type_="check")
        batch.drop_column("capacity")
