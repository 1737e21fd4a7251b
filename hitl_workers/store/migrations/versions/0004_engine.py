"""the step engine: indexed eligibility, JSON kept as sent, event ids bound to their target

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 00:40:00

* ``agent_rule_groups``: one row per rule group of an agent: its tags (``varchar[]``, GIN
  index) and its *key tag*, the one of its tags the fewest groups had when it was written
  (btree index). "Who can see a conversation tagged T" is ``key_tag = ANY(T) AND tags <@ T``:
  a group whose tags are all in T has its key tag in T, so the btree finds every such group,
  and only the groups keyed by one of T's tags are read, however large the directory
  (docs/architecture.md). GIN's own ``<@`` would read every group sharing any tag with T.
* ``agent_events.result``, ``conversations.contact`` and ``outbox.payload`` become ``json``
  (text kept as written) instead of ``jsonb`` (which reorders keys): a repeated event id
  answers the stored result verbatim, the bell list shows the contact as it was sent.
* ``agent_events.conversation_id``: an event sent with ``conversation_id`` remembers it, so a
  reused event id can be told from a repeat (docs/contract.md §3 ``event_id_reused``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

TAGS = sa.ARRAY(sa.String(length=128)).with_variant(sa.JSON(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "agent_rule_groups",
        sa.Column("agent_id", sa.String(length=128), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("tags", TAGS, nullable=False),
        sa.Column("key_tag", sa.String(length=128), nullable=False, server_default=""),
        sa.ForeignKeyConstraint(["agent_id"], ["agents.agent_id"], ondelete="CASCADE",
                                name=op.f("fk_agent_rule_groups_agent_id_agents")),
        sa.PrimaryKeyConstraint("agent_id", "position", name=op.f("pk_agent_rule_groups")),
    )
    op.create_index("ix_agent_rule_groups_key_tag", "agent_rule_groups", ["key_tag"])
    with op.batch_alter_table("agent_events") as batch:
        batch.add_column(sa.Column("conversation_id", sa.String(length=128), nullable=True))
    if op.get_bind().dialect.name != "postgresql":
        # SQLite stores JSON as text already, in the order written; eligibility there is
        # read from ``agents.rule_groups`` (a directory small enough to run on one machine).
        _copy_rule_groups()
        return
    op.create_index("ix_agent_rule_groups_tags", "agent_rule_groups", ["tags"],
                    postgresql_using="gin")
    for table, column in (("agent_events", "result"), ("conversations", "contact"),
                          ("outbox", "payload")):
        op.alter_column(table, column, type_=postgresql.JSON(),
                        postgresql_using=f"{column}::json")
    _copy_rule_groups()


def _copy_rule_groups() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT agent_id, rule_groups FROM agents")).all()
    table = sa.table("agent_rule_groups", sa.column("agent_id"), sa.column("position"),
                     sa.column("tags", TAGS), sa.column("key_tag"))
    values = []
    for agent_id, groups in rows:
        if isinstance(groups, str):
            import json

            groups = json.loads(groups)
        # Any tag of the group is a correct key; the directory's next write of the agent
        # picks the rarest.
        values += [{"agent_id": agent_id, "position": i, "tags": list(g),
                    "key_tag": min(g) if g else ""} for i, g in enumerate(groups or [])]
    if values:
        op.bulk_insert(table, values)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table, column in (("agent_events", "result"), ("conversations", "contact"),
                              ("outbox", "payload")):
            op.alter_column(table, column, type_=postgresql.JSONB(),
                            postgresql_using=f"{column}::jsonb")
    with op.batch_alter_table("agent_events") as batch:
        batch.drop_column("conversation_id")
    op.drop_table("agent_rule_groups")
