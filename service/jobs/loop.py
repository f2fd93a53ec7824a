"""The loop every background job runs: each tick, hold the job's lease, then do one
tick of work; stop cleanly and hand the lease back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from service.jobs.leases import LeaseKeeper

log = logging.getLogger("broker.jobs")


class LeasedJob(ABC):
    """A job run every `tick_seconds` by whichever replica holds its lease. The lease
    lives for three ticks, so a holder that dies is replaced within about three ticks."""

    def __init__(self, lease: LeaseKeeper, tick_seconds: float) -> None:
        self.lease = lease
        self.tick_seconds = tick_seconds
        self._task: asyncio.Task[None] | None = None

    @abstractmethod
    async def tick(self) -> None:
        """One round of work; called only while this replica holds the lease."""

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"job:{self.lease.name}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        with contextlib.suppress(Exception):  # the database may be gone at shutdown
            await self.lease.release()

    async def _run(self) -> None:
        while True:
            try:
                if await self.lease.hold():
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database outage must not end the job; try next tick
                log.exception("background job failed", extra={"fields": {"job": self.lease.name}})
            await asyncio.sleep(self.tick_seconds)
