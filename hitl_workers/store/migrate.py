"""Schema migrations (Alembic), driven from Python so ``hitl-workers db upgrade`` needs no ini."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from hitl_workers.errors import HitlError
from hitl_workers.store.db import make_engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


class SchemaOutOfDate(HitlError):
    """The database schema is not at the version this code needs."""


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url)
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def check_schema(url: str) -> None:
    """Raise :class:`SchemaOutOfDate` unless the database is at the head revision."""
    current, head = current_revision(url), head_revision(url)
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at {current or 'nothing'}, this code needs {head}: "
            f"run `hitl-workers db upgrade` (HITL_DATABASE_URL={_redact(url)})"
        )


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
