"""`broker audit prune`: remove audit rows past their retention now, in small batches."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from service.cli.common import audit_app, settings_or_exit, with_database
from service.config import Settings


async def _prune(settings: Settings, days: int, batch_size: int) -> int | None:
    """Rows removed, or None when a replica holds the retention lease right now."""
    from service.jobs import retention
    from service.jobs.leases import LeaseKeeper

    target = retention.Retained("audit_events", "at", days)

    async def work(sessionmaker: Any) -> int | None:
        lease = LeaseKeeper(sessionmaker, retention.LEASE, ttl_seconds=retention.LEASE_SECONDS)
        if not await lease.hold():
            return None
        try:
            return await retention.prune(
                sessionmaker, target, batch_size=batch_size, still_ours=lease.hold
            )
        finally:
            await lease.release()

    return await with_database(settings, work)


@audit_app.command("prune")
def audit_prune(
    days: Annotated[
        int | None,
        typer.Option(min=1, help="Keep this many days (default: BROKER_AUDIT_RETENTION_DAYS)."),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=100_000, help="Rows per batch.")] = 1000,
) -> None:
    """Delete audit rows older than the retention, in batches, as the replicas do."""
    settings = settings_or_exit()
    keep = days if days is not None else settings.audit_retention_days
    if keep == 0:
        typer.echo("BROKER_AUDIT_RETENTION_DAYS is 0: the audit log is kept in full.")
        return
    removed = asyncio.run(_prune(settings, keep, batch_size))
    if removed is None:
        typer.secho("a replica is pruning right now (retention lease held); try later",
                    err=True, fg="yellow")  # fmt: skip
        raise typer.Exit(1)
    typer.echo(f"pruned {removed} audit rows older than {keep} days")
