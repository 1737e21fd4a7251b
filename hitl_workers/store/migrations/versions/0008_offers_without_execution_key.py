"""offers: no foreign key to executions (the fan-out's write)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 14:00:00

The foreign key ``offers.execution_id → executions`` checked every inserted offer with a
trigger call of its own: in a dispatch that offers a step to 1,000 agents, 1,000 calls, 9.8 of
the 15.9 ms the insert took (``EXPLAIN ANALYZE``; docs/benchmarks.md). It guarded against a bug,
not a race: an offer is written only by the statement that inserts its execution (dispatch's one
write) or by a transition holding that execution's row lock while it is waiting, and retention
deletes an ended execution's offers with it, in one transaction, under the same lock. So the key
goes; ``timers`` (a few rows per step) keeps its own.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("offers") as batch:
        batch.drop_constraint(op.f("fk_offers_execution_id_executions"), type_="foreignkey")


def downgrade() -> None:
    # An offer whose execution is gone could only come from a bug; the key cannot be added
    # back over it.
    op.execute("DELETE FROM offers WHERE NOT EXISTS (SELECT 1 FROM executions e "
               "WHERE e.execution_id = offers.execution_id)")
    with op.batch_alter_table("offers") as batch:
        batch.create_foreign_key(op.f("fk_offers_execution_id_executions"), "executions",
                                 ["execution_id"], ["execution_id"])
