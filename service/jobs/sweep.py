"""The health sweep: find merchants who uninstalled before a caller's request does.

Every active install is verified at most once per BROKER_HEALTH_SWEEP_HOURS with the
verify endpoint's own path (`InstallService.verify`: the cheap read, a 401/403 flags
`reauth_required`, success reactivates; its events are emitted there). What the sweep adds:

* **Spread evenly.** Each tick takes `ceil(active * tick / period)` installs, never swept
  first, then those swept longest ago; one swept within the period is not due. So the
  upstream load is flat over the period instead of a daily burst.
* **Behind callers.** An install is verified only while its store has at least
  HEADROOM of its budget left in the window and of its in-flight slots free (checked
  right before the call); otherwise it is deferred to a later tick. The call itself goes
  through the store's limits like any other, so the budget is never exceeded.
* **One replica at a time** (the `health-sweep` lease).
* **Audit.** Verifies are audited with actor `health-sweep`, except a healthy store whose
  status did not change: at a million stores that would be a million rows a day saying
  nothing. A refusal, a reactivation and a failed verify are audited.
* `last_swept_at` is stamped for every install the sweep verified, whatever the outcome,
  so a store that keeps failing is not retried before its next period.
"""

from __future__ import annotations

import asyncio
import logging
import math
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import run_transaction, utcnow
from service.errors import BrokerError
from service.installs import queries, repository
from service.installs.service import InstallService
from service.jobs.leases import LeaseKeeper
from service.jobs.loop import LeasedJob
from service.neto.limits import StoreLimits
from service.web import metrics

log = logging.getLogger("broker.jobs.sweep")

LEASE = "health-sweep"
ACTOR = "health-sweep"
TICK_SECONDS = 10.0
# The share of a store's budget and slots that must be unused for the sweep to spend one.
HEADROOM = 0.5
# Verifies in flight at once (each to a different store).
CONCURRENCY = 8
# A tick may take as long as its slowest verify (the upstream deadline); the lease
# outlives that, and a dead holder's lease lapses within minutes: nothing for a daily job.
LEASE_SECONDS = 180.0


class HealthSweep(LeasedJob):
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        installs: InstallService,
        limits: StoreLimits,
        *,
        period_hours: float,
        tick_seconds: float = TICK_SECONDS,
        holder: str | None = None,
    ) -> None:
        lease = LeaseKeeper(sessionmaker, LEASE, ttl_seconds=LEASE_SECONDS, holder=holder)
        super().__init__(lease, tick_seconds)
        self._sessionmaker = sessionmaker
        self._installs = installs
        self._limits = limits
        self._period = timedelta(hours=period_hours)

    async def tick(self) -> None:
        now = utcnow()
        async with self._sessionmaker() as session:
            active = await queries.count_active(session)
            quota = math.ceil(active * self.tick_seconds / self._period.total_seconds())
            # Twice the quota: stores deferred for their callers don't use up the tick.
            due = await queries.due_for_sweep(
                session, swept_before=now - self._period, limit=2 * quota
            )
        metrics.SWEEP_LAG.set(self._lag(now, due))
        verified: list[str] = []
        gate = asyncio.Semaphore(CONCURRENCY)

        async def check(store_id: str) -> None:
            async with gate:
                if len(verified) >= quota or self.stopping:
                    return
                if not self._limits.has_headroom(store_id, HEADROOM):
                    metrics.SWEEP_DEFERRED.inc()
                    return
                verified.append(store_id)
                await self._verify(store_id)

        try:
            await asyncio.gather(*(check(store_id) for store_id, _, _ in due))
        finally:
            if verified:
                await run_transaction(
                    self._sessionmaker,
                    lambda session: repository.stamp_swept(session, verified, now),
                )

    def _lag(self, now: datetime, due: list[tuple[str, datetime | None, datetime]]) -> float:
        """How long the most overdue install has waited past its period (0: on time)."""
        if not due:
            return 0.0
        overdue = [now - ((swept or installed) + self._period) for _, swept, installed in due]
        return max(0.0, max(overdue).total_seconds())

    async def _verify(self, store_id: str) -> None:
        try:
            outcome = await self._installs.verify(
                store_id, actor=ACTOR, request_id=None, audit_unchanged_ok=False
            )
        except BrokerError as exc:  # revoked or removed meanwhile, database unavailable
            metrics.SWEEP_FAILED.labels("error").inc()
            log.info("sweep verify skipped", extra={"fields": {"store_id": store_id,
                                                               "error": exc.code}})  # fmt: skip
            return
        metrics.SWEEP_SWEPT.inc()
        if outcome.refused:  # Neto's own refusal; a firewall's 403 page is an error
            metrics.SWEEP_FAILED.labels("refused").inc()
        elif not outcome.ok:
            metrics.SWEEP_FAILED.labels("error").inc()
