"""Retention: only rows past their retention go, in batches, while bundles are issued;
the settings and the registration point; the job in a running app; `broker audit prune`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, insert, select

from service.audit.models import AuditEvent
from service.db import metadata, utcnow
from service.jobs import retention
from service.jobs.leases import LeaseKeeper
from tests.cli.test_installs_list import run_cli
from tests.support import register_api_key_store

AUDIT = AuditEvent.__table__


async def stop_jobs(app) -> None:
    """The app's own retention job would prune the seeded rows under the test."""
    for job in app.state.services.jobs:
        await job.stop()


async def seed(sessionmaker, *, count: int, age_days: float, event: str) -> None:
    at = utcnow() - timedelta(days=age_days)
    rows = [{"at": at, "event": event, "actor": "seed", "details": {}} for _ in range(count)]
    async with sessionmaker() as session, session.begin():
        await session.execute(insert(AUDIT), rows)


async def count(sessionmaker, event: str | None = None) -> int:
    stmt = select(func.count()).select_from(AUDIT)
    if event is not None:
        stmt = stmt.where(AUDIT.c.event == event)
    async with sessionmaker() as session:
        return int((await session.execute(stmt)).scalar_one())


async def test_prune_removes_only_old_rows_in_batches_while_bundles_are_issued(
    app, client, auth, neto
):
    await stop_jobs(app)
    sessionmaker = app.state.services.sessionmaker
    await register_api_key_store(client, auth("installs:admin"), "S1")
    await seed(sessionmaker, count=2_500, age_days=91, event="old")
    await seed(sessionmaker, count=300, age_days=89, event="recent")
    headers = auth("credentials:read", stores=["S1"])
    batches = 0

    async def still_ours() -> bool:  # called before every batch
        nonlocal batches
        batches += 1
        return True

    async def issue_bundles() -> list[int]:
        statuses = []
        for _ in range(40):
            statuses.append((await client.get("/credentials/S1", headers=headers)).status_code)
            await asyncio.sleep(0)
        return statuses

    target = retention.Retained("audit_events", "at", 90)
    removed, statuses = await asyncio.gather(
        retention.prune(
            sessionmaker, target, batch_size=500, pause_seconds=0.01, still_ours=still_ours
        ),
        issue_bundles(),
    )
    assert statuses == [200] * 40
    assert removed == 2_500
    # The install's own audit row is the oldest by id: the first batch of the 500 oldest
    # deletes 499 of them; then 4 full ones, 1 row, and one that finds nothing to delete.
    assert batches == 7, batches
    assert await count(sessionmaker, "old") == 0
    assert await count(sessionmaker, "recent") == 300
    assert await count(sessionmaker, "bundle.issued") == 40, "a bundle's audit row went"


async def test_prune_stops_when_the_lease_is_lost(app):
    await stop_jobs(app)
    sessionmaker = app.state.services.sessionmaker
    await seed(sessionmaker, count=300, age_days=100, event="old")

    async def lost() -> bool:
        return False

    target = retention.Retained("audit_events", "at", 90)
    assert await retention.prune(sessionmaker, target, batch_size=100, still_ours=lost) == 0
    assert await count(sessionmaker, "old") == 300


def test_zero_days_keeps_everything_and_every_target_names_real_columns(settings_factory):
    kept = retention.targets(settings_factory(audit_retention_days=0, event_retention_days=0))
    assert [t.table for t in kept] == ["idempotency_keys"]  # always: its TTL is at least 1 s
    registered = retention.targets(settings_factory())
    assert [(t.table, t.time_column, t.key, t.days) for t in registered] == [
        ("audit_events", "at", "id", 90),
        ("events", "occurred_at", "seq", 90),
        ("neto_notifications", "received_at", "id", 90),
        ("idempotency_keys", "created_at", "id", 1),
    ]
    for target in registered:
        table = metadata.tables[target.table]
        assert target.time_column in table.c and target.key in table.c, target


async def test_the_running_app_prunes_with_one_replica(app_factory, settings_factory, neto):
    first = await app_factory(settings_factory(audit_retention_days=30))
    sessionmaker = first.state.services.sessionmaker
    await seed(sessionmaker, count=50, age_days=31, event="old")
    await seed(sessionmaker, count=5, age_days=29, event="recent")
    second = await app_factory(settings_factory(audit_retention_days=30))
    jobs = [job for app in (first, second) for job in app.state.services.jobs
            if isinstance(job, retention.Retention)]  # fmt: skip
    assert len(jobs) == 2
    holders = [await job.lease.hold() for job in jobs]
    assert holders.count(True) == 1, "both replicas held the retention lease"
    winner = jobs[holders.index(True)]
    await winner.tick()
    assert await count(sessionmaker, "old") == 0
    assert await count(sessionmaker, "recent") == 5


async def test_broker_audit_prune_removes_old_rows(app, database_url):
    sessionmaker = app.state.services.sessionmaker
    await seed(sessionmaker, count=120, age_days=40, event="old")
    await seed(sessionmaker, count=7, age_days=10, event="recent")
    await stop_jobs(app)  # and hands its lease back
    result = await run_cli(database_url, "audit", "prune", "--days", "30", "--batch-size", "50")
    assert result.exit_code == 0, result.output
    assert "pruned 120 audit rows older than 30 days" in result.output
    assert await count(sessionmaker, "old") == 0
    assert await count(sessionmaker, "recent") == 7


async def test_a_held_lease_turns_the_command_away(app, database_url):
    await stop_jobs(app)
    sessionmaker = app.state.services.sessionmaker
    holder = LeaseKeeper(sessionmaker, retention.LEASE, ttl_seconds=60, holder="replica-x")
    assert await holder.hold()
    result = await run_cli(database_url, "audit", "prune", "--days", "30")
    assert result.exit_code == 1
    assert "retention lease held" in result.output
