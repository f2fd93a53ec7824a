"""The loop every background job runs: each tick, hold the job's lease, then do one
tick of work; stop cleanly and hand the lease back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod

from service.background import cancel_and_wait
from service.jobs.leases import LeaseKeeper

log = logging.getLogger("broker.jobs")

# How long a stopping job may take to finish its current step (one batch, one verify).
STOP_GRACE_SECONDS = 10.0


class LeasedJob(ABC):
    """A job run every `tick_seconds` by whichever replica holds its lease. The lease
    lives for three ticks, so a holder that dies is replaced within about three ticks."""

    def __init__(self, lease: LeaseKeeper, tick_seconds: float) -> None:
        self.lease = lease
        self.tick_seconds = tick_seconds
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @abstractmethod
    async def tick(self) -> None:
        """One round of work; called only while this replica holds the lease."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def still_ours(self) -> bool:
        """Before each step of a long tick: not stopping, and the lease renewed."""
        return not self.stopping and await self.lease.hold()

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name=f"job:{self.lease.name}")

    async def stop(self) -> None:
        """Let the current step finish (a cancelled database call could leave a SQLite
        write lock behind), cancel only past STOP_GRACE_SECONDS, hand the lease back."""
        if self._task is None:
            return
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_SECONDS)
        except TimeoutError:
            await cancel_and_wait(self._task)
        self._task = None
        with contextlib.suppress(Exception):  # the database may be gone at shutdown
            await self.lease.release()

    async def _run(self) -> None:
        while not self.stopping:
            try:
                if await self.lease.hold():
                    await self.tick()
            except Exception:  # a database outage must not end the job; try next tick
                log.exception("background job failed", extra={"fields": {"job": self.lease.name}})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.tick_seconds)
