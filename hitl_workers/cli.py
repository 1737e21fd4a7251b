"""``hitl-workers``: the operator's and developer's command line."""

from __future__ import annotations

import click


@click.group()
def main() -> None:
    """hitl_workers: the Request agent assistance step as a distributed Celery system."""


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema at HITL_DATABASE_URL."""
    from hitl_workers.settings import get_settings
    from hitl_workers.store.migrate import upgrade

    url = get_settings().database_url
    upgrade(url, revision)
    click.echo(f"schema at {revision}")
