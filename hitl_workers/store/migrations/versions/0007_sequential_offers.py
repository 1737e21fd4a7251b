"""sequential offers: missed offers, rounds, one holder, the offer timer, idle stamps

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 03:50:00

* ``offers.status`` gains ``missed`` (a sequential offer whose ``offer_timeout`` passed) and
  ``offers.round`` (NULL for broadcast offers) is the round a sequential offer was made in
  (docs/contract.md §9 "Offer strategy").
* ``ux_offers_one_holder``: at most one agent holds a step's sequential offer, a constraint
  rather than a promise of the code (partial unique index, PostgreSQL and SQLite).
* ``timers.kind`` gains ``offer``: the holder's offer timeout, a deadline like the others.
* ``agents.last_offered_at`` / ``last_claimed_at``: the ``longest_idle`` order.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_HOLDING = "round IS NOT NULL AND status IN ('offered', 'closed')"


def upgrade() -> None:
    with op.batch_alter_table("offers") as batch:
        batch.add_column(sa.Column("round", sa.Integer(), nullable=True))
        batch.drop_constraint(op.f("ck_offers_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_offers_status"),
            "status IN ('offered', 'closed', 'rejected', 'withdrawn', 'missed')")
    op.create_index("ux_offers_one_holder", "offers", ["execution_id"], unique=True,
                    postgresql_where=sa.text(_HOLDING), sqlite_where=sa.text(_HOLDING))
    with op.batch_alter_table("timers") as batch:
        batch.drop_constraint(op.f("ck_timers_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_timers_kind"),
                                      "kind IN ('countdown', 'timeout', 'offer')")
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("last_offered_at", sa.DateTime(timezone=True),
                                   nullable=True))
        batch.add_column(sa.Column("last_claimed_at", sa.DateTime(timezone=True),
                                   nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("last_claimed_at")
        batch.drop_column("last_offered_at")
    op.execute("DELETE FROM timers WHERE kind = 'offer'")
    with op.batch_alter_table("timers") as batch:
        batch.drop_constraint(op.f("ck_timers_kind"), type_="check")
        batch.create_check_constraint(op.f("ck_timers_kind"), "kind IN ('countdown', 'timeout')")
    op.drop_index("ux_offers_one_holder", table_name="offers")
    op.execute("UPDATE offers SET status = 'withdrawn' WHERE status = 'missed'")
    with op.batch_alter_table("offers") as batch:
        batch.drop_constraint(op.f("ck_offers_status"), type_="check")
        batch.create_check_constraint(
            op.f("ck_offers_status"), "status IN ('offered', 'closed', 'rejected', 'withdrawn')")
        batch.drop_column("round")
