"""Retention: rows older than their table's retention are deleted, in small batches.

Generic over (table, time column, retention days): the audit log is one entry, the
events outbox another (`targets`). Rows are appended, so their keys follow time: each
batch takes the `batch_size` oldest rows by key (the primary key's order, no index on the
time column for every insert to write) and deletes those past the cutoff
(`DELETE … WHERE id IN (SELECT id … ORDER BY id LIMIT n) AND at < cutoff`); the run
stops at a batch that deletes nothing. A row written out of order (by a replica whose
clock is off) goes once it is past the cutoff and among the oldest. Each batch is its own
short transaction, with a pause between batches, so bundles' audit inserts never queue
behind one long delete and the database never holds a huge transaction. One replica at a
time prunes (the `retention` lease, renewed before every batch); `broker audit prune`
takes the same lease.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import column, delete, select, table
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.config import Settings
from service.db import UTCDateTime, run_transaction, utcnow
from service.jobs.leases import LeaseKeeper
from service.jobs.loop import LeasedJob
from service.web import metrics

log = logging.getLogger("broker.jobs.retention")

LEASE = "retention"
TICK_SECONDS = 60.0
LEASE_SECONDS = 180.0
BATCH_SIZE = 1000
# Between batches: lets the bundles' group-committed audit inserts through.
PAUSE_SECONDS = 0.05
# broker_retention_pruned_total's label for revoked installs' destroyed profiles.
PROFILES = "install_profiles"


@dataclass(frozen=True, slots=True)
class Retained:
    """A table pruned by age: rows whose `time_column` is older than `days` go."""

    table: str
    time_column: str
    days: float
    key: str = "id"  # an indexed, unique column to delete by

    def cutoff(self, now: datetime) -> datetime:
        return now - timedelta(days=self.days)


def targets(settings: Settings) -> list[Retained]:
    """Every table with a retention; a retention of 0 days keeps everything. The
    registration point for more tables: one entry each (an `id` key and a time column)."""
    registered = [
        Retained("audit_events", "at", settings.audit_retention_days),
        # A delivery still pending for a pruned event is marked expired by the worker.
        Retained("events", "occurred_at", settings.event_retention_days, key="seq"),
        # Neto's notifications already seen: forgotten with the events they became (Neto
        # redelivers for days, not months).
        Retained("neto_notifications", "received_at", settings.event_retention_days),
        # Ids begin with their creation time, so the oldest by id are the oldest.
        Retained("idempotency_keys", "created_at", settings.idempotency_ttl_hours / 24),
    ]
    return [target for target in registered if target.days > 0]


async def prune_batch(
    sessionmaker: async_sessionmaker[AsyncSession],
    target: Retained,
    cutoff: datetime,
    batch_size: int,
) -> int:
    """Delete up to `batch_size` rows older than `cutoff` in one transaction; how many."""
    rows = table(target.table, column(target.key), column(target.time_column, UTCDateTime()))
    key = rows.c[target.key]
    oldest = select(key).order_by(key).limit(batch_size)
    expired = rows.c[target.time_column] < cutoff
    stmt = delete(rows).where(key.in_(oldest.scalar_subquery()), expired)

    async def work(session: AsyncSession) -> int:
        return int(getattr(await session.execute(stmt), "rowcount", 0) or 0)

    return await run_transaction(sessionmaker, work)


async def prune(
    sessionmaker: async_sessionmaker[AsyncSession],
    target: Retained,
    *,
    now: datetime | None = None,
    batch_size: int = BATCH_SIZE,
    pause_seconds: float = PAUSE_SECONDS,
    still_ours: Callable[[], Awaitable[bool]] | None = None,
) -> int:
    """Delete every row older than the target's retention, batch by batch; how many.
    Stops early when `still_ours` says the lease was lost."""
    cutoff = target.cutoff(now or utcnow())
    total = 0
    while still_ours is None or await still_ours():
        removed = await prune_batch(sessionmaker, target, cutoff, batch_size)
        total += removed
        metrics.PRUNED.labels(target.table).inc(removed)
        if removed == 0:  # the oldest rows are all still within retention
            break
        await asyncio.sleep(pause_seconds)
    if total:
        fields = {"table": target.table, "rows": total, "cutoff": cutoff.isoformat()}
        log.info("retention pruned rows", extra={"fields": fields})
    return total


class Retention(LeasedJob):
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        retained: list[Retained],
        *,
        tick_seconds: float = TICK_SECONDS,
        batch_size: int = BATCH_SIZE,
        pause_seconds: float = PAUSE_SECONDS,
        holder: str | None = None,
        profiles: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        lease = LeaseKeeper(sessionmaker, LEASE, ttl_seconds=LEASE_SECONDS, holder=holder)
        super().__init__(lease, tick_seconds)
        self._sessionmaker = sessionmaker
        self._retained = retained
        # Revoked installs' profiles past their retention (InstallService), destroyed
        # after the tables are pruned: an UPDATE of a few rows, not a DELETE by age.
        self._profiles = profiles
        self._batch_size = batch_size
        self._pause_seconds = pause_seconds

    async def tick(self) -> None:
        for target in self._retained:
            await prune(
                self._sessionmaker,
                target,
                batch_size=self._batch_size,
                pause_seconds=self._pause_seconds,
                still_ours=self.still_ours,
            )
        if self._profiles is not None and await self.still_ours():
            metrics.PRUNED.labels(PROFILES).inc(await self._profiles())
