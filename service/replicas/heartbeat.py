"""Replica heartbeats: how many replicas share each store's Neto budget, and Neto pauses
shared between them.

Every BROKER_REPLICA_HEARTBEAT_SECONDS each replica, in one short transaction, bumps its
row's counter in `broker_replicas`, publishes the Neto 429 pauses it saw since the last
beat, and reads every replica's counter and every pause. No clock is compared between
machines: a replica is live while its counter keeps moving *as this replica sees it* (it
is counted from the first sighting, and dropped DEAD_AFTER_BEATS beats after its counter
last moved). A pause carries when it began by the database's own clock, read in the same
statement as the rows, so a replica knows how much of it is left and how far the budget
it taught (`neto/limits.py`) has grown back, even one that starts long after it.

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
from dataclasses import dataclass

from sqlalchemy import ColumnElement, Executable, Float, delete, literal_column, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from service.background import cancel_and_wait
from service.db import run_transaction
from service.neto.limits import StoreLimits, recovery_seconds
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
        # store -> (version, when first seen, its `at`)
        self._pauses: dict[str, tuple[int, float, float | None]] = {}
        # pauses to publish on the next beat: store -> (seconds, learned per minute)
        self._outgoing: dict[str, tuple[float, float]] = {}
        self._last_ok: float | None = None  # monotonic time of the last successful beat
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.live = 1
        limits.on_pause = self._publish

    def _publish(self, store_id: str, seconds: float, per_minute: float) -> None:
        self._outgoing[store_id] = (seconds, per_minute)
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
            for store_id, (seconds, per_minute) in outgoing.items():  # publish them next time
                self._outgoing.setdefault(store_id, (seconds, per_minute))
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
        self, session: AsyncSession, outgoing: dict[str, tuple[float, float]]
    ) -> tuple[list[tuple[str, int]], list[Pause]]:
        bumped = await session.execute(
            update(Replica).where(col(Replica.id) == self.id).values(beat=col(Replica.beat) + 1)
        )
        if bumped.rowcount == 0:  # type: ignore[attr-defined]
            session.add(Replica(id=self.id, beat=1))
        clock = database_clock(session)
        for store_id, (seconds, per_minute) in outgoing.items():
            await session.execute(_upsert_pause(session, store_id, seconds, per_minute, clock))
        await session.flush()
        replicas = (await session.execute(select(col(Replica.id), col(Replica.beat)))).all()
        rows = await session.execute(
            select(
                col(StorePause.store_id),
                col(StorePause.version),
                col(StorePause.seconds),
                col(StorePause.per_minute),
                col(StorePause.at),
                clock,
            )
        )
        pauses = [
            Pause(store_id, version, seconds, per_minute, at, None if at is None else db_now - at)
            for store_id, version, seconds, per_minute, at, db_now in rows
        ]
        await self._reap(session, pauses)
        return [(r, b) for r, b in replicas], pauses

    async def _reap(self, session: AsyncSession, pauses: list[Pause]) -> None:
        """Delete rows that stopped moving long ago, only if they still have not moved,
        and pauses once the budget they taught has grown back to the configured one."""
        now = time.monotonic()
        for replica_id, (beat, moved) in list(self._seen.items()):
            if now - moved > self._interval * REAP_AFTER_BEATS:
                await session.execute(
                    delete(Replica).where(col(Replica.id) == replica_id, col(Replica.beat) == beat)
                )
        keep_for = self._limits.pause_seconds + self._interval * REAP_AFTER_BEATS
        for pause in pauses:
            if pause.age is not None:
                # A pause that taught nothing has nothing to grow back (and no log of 0).
                budget = self._limits.budget
                learned = pause.per_minute if pause.per_minute else budget
                lasts = pause.seconds + recovery_seconds(learned, budget)
                stale = pause.age > lasts + self._interval * REAP_AFTER_BEATS
            else:  # a pause from an older release: by when this replica first saw it
                seen = self._pauses.get(pause.store_id)
                stale = seen is not None and seen[0] == pause.version and now - seen[1] > keep_for
            if stale:
                await session.execute(
                    delete(StorePause).where(
                        col(StorePause.store_id) == pause.store_id,
                        col(StorePause.version) == pause.version,
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
        self._limits.set_replicas(self.live)

    def _apply_pauses(self, pauses: list[Pause], now: float, published: set[str]) -> None:
        current: dict[str, tuple[int, float, float | None]] = {}
        for pause in pauses:
            before = self._pauses.get(pause.store_id)
            if before is not None and before[0] == pause.version:
                current[pause.store_id] = before
                continue
            current[pause.store_id] = (pause.version, now, pause.at)
            if pause.store_id in published:  # our own pause already runs here
                continue
            fresh = pause.age is not None and (before is None or before[2] != pause.at)
            if fresh:
                assert pause.age is not None
                self._limits.pause_from_elsewhere(
                    pause.store_id, pause.seconds - pause.age, pause.per_minute
                )
            else:
                # An older release bumped the version only: its pause runs from now, and
                # the budget stays what this replica knows.
                self._limits.pause_from_elsewhere(pause.store_id, pause.seconds, None)
        self._pauses = current


@dataclass(frozen=True, slots=True)
class Pause:
    store_id: str
    version: int
    seconds: float
    per_minute: float | None
    at: float | None  # the database's clock when it began (None: an older release's)
    age: float | None  # seconds since `at`, by the database's clock


def database_clock(session: AsyncSession) -> ColumnElement[float]:
    """The database's clock in epoch seconds, as a column: one clock for every replica."""
    if session.get_bind().dialect.name == "postgresql":
        return literal_column("extract(epoch from clock_timestamp())::float8", Float())
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float())


def _upsert_pause(
    session: AsyncSession,
    store_id: str,
    seconds: float,
    per_minute: float,
    clock: ColumnElement[float],
) -> Executable:
    """Insert the store's pause, or bump its version: one statement, so two replicas
    pausing the same store at once both succeed."""
    values = {
        "store_id": store_id, "version": 1, "seconds": seconds,
        "per_minute": per_minute, "at": clock,
    }  # fmt: skip
    bump = {
        "version": col(StorePause.version) + 1, "seconds": seconds,
        "per_minute": per_minute, "at": clock,
    }  # fmt: skip
    if session.get_bind().dialect.name == "postgresql":
        pg = pg_insert(StorePause).values(**values)
        return pg.on_conflict_do_update(index_elements=["store_id"], set_=bump)
    lite = sqlite_insert(StorePause).values(**values)
    return lite.on_conflict_do_update(index_elements=["store_id"], set_=bump)
