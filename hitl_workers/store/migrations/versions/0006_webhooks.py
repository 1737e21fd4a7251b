"""webhook exits: where an execution answers over HTTP, and when its exit is tried again

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 01:40:00

* ``executions.reply_webhook``: the URL of a request whose ``reply_to`` is a webhook
  (docs/contract.md §10); ``reply_task`` then holds ``(webhook)``, which no Celery task name
  can be.
* ``outbox.next_attempt_at``: a webhook exit that failed is not tried again before this
  (exponential backoff with jitter, kept in the row so that it survives restarts); while an
  attempt is in flight it holds the attempt's lease. NULL: due now.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("executions") as batch_op:
        batch_op.add_column(sa.Column("reply_webhook", sa.String(2000), nullable=True))
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True),
                                      nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch_op:
        batch_op.drop_column("next_attempt_at")
    with op.batch_alter_table("executions") as batch_op:
        batch_op.drop_column("reply_webhook")
