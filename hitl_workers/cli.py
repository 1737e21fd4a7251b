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


@main.command()
@click.argument("execution_id")
@click.option("--json", "as_json", is_flag=True, help="Print the raw story as JSON.")
def show(execution_id: str, as_json: bool) -> None:
    """What happened to one step execution: notified, skipped and why, events, exit, delivery."""
    from hitl_workers.ops.show import format_text, to_json
    from hitl_workers.store.db import read_only
    from hitl_workers.store.journal import load

    with read_only() as conn:
        found = load(conn, execution_id)
    if found is None:
        raise click.ClickException(
            f"no execution {execution_id!r} in the database (executions that ended more than "
            f"HITL_RETENTION_DAYS ago are deleted: docs/operations.md §7)")
    click.echo(to_json(found) if as_json else format_text(found))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option("--timeout", default=1.5, show_default=True,
              help="Seconds to wait for the broker and for the workers' answers.")
def status(as_json: bool, timeout: float) -> None:
    """What is waiting, late or stuck, and whether workers and the reconciler run.

    Exits 1 when something is wrong (and says what to do), 0 when all is well.
    """
    from hitl_workers.app import app
    from hitl_workers.ops import status as checks
    from hitl_workers.settings import get_settings

    found = checks.gather(app, get_settings(), timeout_s=timeout)
    problems = checks.problems(found)
    click.echo(checks.to_json(found, problems) if as_json else checks.to_text(found, problems))
    if problems:
        raise SystemExit(1)


@main.command()
@click.option("--older-than", "older_than", required=True,
              help="A time string: what ended (or was written) longer ago is deleted, e.g. 7d.")
@click.option("--skip-streams", is_flag=True,
              help="Leave the agents' notification streams alone (no Redis needed).")
def purge(older_than: str, skip_streams: bool) -> None:
    """Delete ended executions and what hangs off them, old event answers, dead letters, idle
    conversations, and the streams of removed agents — in small batches, until none is left.

    Waiting steps, and ended ones whose exit message is still unsent, are never touched.
    """
    from hitl_workers.ops.purge import purge_older_than

    try:
        purged = purge_older_than(older_than, streams=not skip_streams)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--older-than") from None
    for table, count in sorted(purged.rows.items()):
        click.echo(f"{table:<18} {count:>10} deleted")
    click.echo(f"{'total':<18} {purged.total:>10} deleted")


@main.command()
@click.option("--leave-waiting", is_flag=True,
              help="Also leave one request waiting, for a human to claim in the console.")
@click.option("--timeout", default=30.0, show_default=True, help="Seconds to wait for answers.")
def simulate(leave_waiting: bool, timeout: float) -> None:
    """Play a flow engine and a handful of agents against the running system."""
    from hitl_workers.app import app
    from hitl_workers.ops.simulate import Simulator

    summary = Simulator(app, click.echo, timeout).run(leave_waiting=leave_waiting)
    click.echo("\nSummary")
    failed = 0
    for title, expected, got in summary:
        mark = "ok " if got == expected else "BAD"
        failed += got != expected
        click.echo(f"  {mark} {got:<24} {title}")
    if failed:
        raise click.ClickException(f"{failed} scenario(s) did not exit as expected")


@main.command()
@click.option("--gateway-port", default=8000, show_default=True, envvar="HITL_GATEWAY_PORT")
@click.option("--flower-port", default=5555, show_default=True, envvar="HITL_FLOWER_PORT")
@click.option("--no-simulate", is_flag=True, help="Start the system without the simulator.")
@click.option("--log-dir", default="run/logs", show_default=True, type=click.Path())
def run(gateway_port: int, flower_port: int, no_simulate: bool, log_dir: str) -> None:
    """Run everything on this machine (SQLite + local Redis by default) and simulate a flow."""
    from pathlib import Path

    from hitl_workers.ops.run import run_system
    from hitl_workers.settings import get_settings

    run_system(get_settings(), gateway_port=gateway_port, flower_port=flower_port,
               simulate=not no_simulate, log_dir=Path(log_dir), echo=click.echo)


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="docs/schema",
              show_default=True, help="Directory to write the *.json files into.")
def schema(out_dir: str) -> None:
    """Write a JSON Schema for every message of the contract (docs/contract.md §1–§6)."""
    from pathlib import Path

    from hitl_workers import schema as schemas

    for path in schemas.write(Path(out_dir)):
        click.echo(str(path))


# The agent gateway's commands live with the gateway (hitl_workers/gateway/commands.py).
from hitl_workers.gateway.commands import gateway as _gateway_cmd  # noqa: E402
from hitl_workers.gateway.commands import token as _token_cmd  # noqa: E402

main.add_command(_gateway_cmd)
main.add_command(_token_cmd)


if __name__ == "__main__":
    main()
