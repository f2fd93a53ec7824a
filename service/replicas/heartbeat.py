"""Replica heartbeats: how many replicas share each store's Neto budget, and Neto pauses
shared between them.

Every BROKER_REPLICA_HEARTBEAT_SECONDS each replica, in one short transaction, bumps its
row's counter in `broker_replicas`, publishes the Neto 429 pauses it saw since the last
beat, and reads every replica's counter and every pause. No clock is compared between
machines: a replica is live while its counter keeps moving *as this replica sees it* (it
is counted from the first sighting, and dropped DEAD_AFTER_BEATS beats after its counter
last moved), and a pause runs for its length from when this replica first sees it.

Safety of the budget (see `neto/limits.py`) needs the replicas' rates never to sum above
it, so every change is made in the safe order:
* a newcomer is counted by the others within one beat of its first, so it spends nothing
  for two beats (`StoreLimits.hold`);
* a replica that has not managed to beat for DEAD_AFTER_BEATS - 1 beats may already look
  dead to the others, whose shares then grow: it holds its own spending until it beats
  again, and then waits two beats like a newcomer;
* a graceful stop deletes the replica's row after its last call; a crashed replica's row
  is deleted once it has not moved for REAP_AFTER_BEATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

from sqlalchemy import Executable, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from service.background import cancel_and_wait
from service.db import run_transaction
from service.neto.limits import Share, StoreLimits
from service.replicas.models import Replica, StorePause

log = logging.getLogger("broker.replicas")

DEAD_AFTER_BEATS = 3
REAP_AFTER_BEATS = 30
NEWCOMER_HOLD_BEATS = 2


class Heartbeat:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        limits: StoreLimits,
        interval: float,
    ) -> None:
        self.id = uuid.uuid4().hex
        self._sessionmaker = sessionmaker
        self._limits = limits
        self._interval = interval
        self._seen: dict[str, tuple[int, float]] = {}  # replica -> (beat, when it moved)
        self._pauses: dict[str, tuple[int, float]] = {}  # store -> (version, first seen)
        self._outgoing: dict[str, float] = {}  # pauses to publish on the next beat
        self._last_ok: float | None = None  # monotonic time of the last successful beat
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.live = 1
        limits.on_pause = self._publish

    def _publish(self, store_id: str, seconds: float) -> None:
        self._outgoing[store_id] = max(seconds, self._outgoing.get(store_id, 0.0))
        self._wake.set()  # tell the others now rather than at the next beat

    async def start(self) -> None:
        """Beat once before serving (so the share is right from the first call), then
        keep beating in the background."""
        with contextlib.suppress(Exception):
            await self.beat()
        if self._last_ok is None:
            log.warning("replica heartbeat failed at start; retrying in the background")
        self._task = asyncio.create_task(self._run(), name="replica-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
        try:  # the others take over our share at their next beat
            await run_transaction(
                self._sessionmaker,
                lambda s: s.execute(delete(Replica).where(col(Replica.id) == self.id)),
                attempts=2,
            )
        except Exception:
            log.warning("could not remove this replica's heartbeat; it is reaped later")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                async with asyncio.timeout(self._interval * (DEAD_AFTER_BEATS - 1)):
                    await self.beat()
            except Exception:
                log.warning("replica heartbeat failed", exc_info=True)
            self._hold_if_stale()

    def _hold_if_stale(self) -> None:
        last = self._last_ok
        if last is None or time.monotonic() - last > self._interval * (DEAD_AFTER_BEATS - 1):
            self._limits.hold(self._interval * 2)

    async def beat(self) -> None:
        outgoing, self._outgoing = self._outgoing, {}
        try:
            replicas, pauses = await run_transaction(
                self._sessionmaker, lambda s: self._exchange(s, outgoing), attempts=2
            )
        except BaseException:
            for store_id, seconds in outgoing.items():  # publish them next time
                self._publish(store_id, seconds)
            raise
        now = time.monotonic()
        was_counted = self._last_ok is not None and (
            now - self._last_ok <= self._interval * (DEAD_AFTER_BEATS - 1)
        )
        self._last_ok = now
        self._count(replicas, now)
        if not was_counted and self.live > 1:
            # The others may not count this replica yet: spend nothing until they do.
            self._limits.hold(self._interval * NEWCOMER_HOLD_BEATS)
        self._apply_pauses(pauses, now, published=set(outgoing))

    async def _exchange(
        self, session: AsyncSession, outgoing: dict[str, float]
    ) -> tuple[list[tuple[str, int]], list[tuple[str, int, float]]]:
        bumped = await session.execute(
            update(Replica).where(col(Replica.id) == self.id).values(beat=col(Replica.beat) + 1)
        )
        if bumped.rowcount == 0:  # type: ignore[attr-defined]
            session.add(Replica(id=self.id, beat=1))
        for store_id, seconds in outgoing.items():
            await session.execute(_upsert_pause(session, store_id, seconds))
        await session.flush()
        await self._reap(session)
        replicas = (await session.execute(select(col(Replica.id), col(Replica.beat)))).all()
        pauses = (
            await session.execute(
                select(col(StorePause.store_id), col(StorePause.version), col(StorePause.seconds))
            )
        ).all()
        return [(r, b) for r, b in replicas], [(s, v, sec) for s, v, sec in pauses]

    async def _reap(self, session: AsyncSession) -> None:
        """Delete rows that stopped moving long ago, only if they still have not moved."""
        now = time.monotonic()
        for replica_id, (beat, moved) in list(self._seen.items()):
            if now - moved > self._interval * REAP_AFTER_BEATS:
                await session.execute(
                    delete(Replica).where(col(Replica.id) == replica_id, col(Replica.beat) == beat)
                )
        for store_id, (version, seen) in list(self._pauses.items()):
            if now - seen > self._limits.pause_seconds + self._interval * REAP_AFTER_BEATS:
                await session.execute(
                    delete(StorePause).where(
                        col(StorePause.store_id) == store_id, col(StorePause.version) == version
                    )
                )

    def _count(self, replicas: list[tuple[str, int]], now: float) -> None:
        seen: dict[str, tuple[int, float]] = {}
        for replica_id, beat in replicas:
            before = self._seen.get(replica_id)
            seen[replica_id] = before if before is not None and before[0] == beat else (beat, now)
        self._seen = seen
        dead_after = self._interval * DEAD_AFTER_BEATS
        live = sum(
            1 for rid, (_, moved) in seen.items() if rid != self.id and now - moved <= dead_after
        )
        self.live = live + 1
        self._limits.set_share(Share.of(self._limits.budget, self.live))

    def _apply_pauses(
        self, pauses: list[tuple[str, int, float]], now: float, published: set[str]
    ) -> None:
        current: dict[str, tuple[int, float]] = {}
        for store_id, version, seconds in pauses:
            before = self._pauses.get(store_id)
            if before is not None and before[0] == version:
                current[store_id] = before
                continue
            current[store_id] = (version, now)
            if store_id not in published:  # our own pause already runs here
                self._limits.pause_from_elsewhere(store_id, seconds)
        self._pauses = current


def _upsert_pause(session: AsyncSession, store_id: str, seconds: float) -> Executable:
    """Insert the store's pause, or bump its version: one statement, so two replicas
    pausing the same store at once both succeed."""
    values = {"store_id": store_id, "version": 1, "seconds": seconds}
    bump = {"version": col(StorePause.version) + 1, "seconds": seconds}
    if session.get_bind().dialect.name == "postgresql":
        pg = pg_insert(StorePause).values(**values)
        return pg.on_conflict_do_update(index_elements=["store_id"], set_=bump)
    lite = sqlite_insert(StorePause).values(**values)
    return lite.on_conflict_do_update(index_elements=["store_id"], set_=bump)
