"""The audit rows of issued bundles: group-committed, fenced on the install's status, and
the installs' last-used times stamped in the background.

Bundles are the hot path, so their events go through the `AuditWriter`: concurrent
requests' events are inserted together in one transaction (group commit), and each
request waits for its event to be committed before it answers, so no bundle leaves the
broker unaudited.

The batch is one statement on the driver's own SQL (no ORM, no statement compilation)
that both fences and inserts: a row is inserted only if its store is not revoked at that
moment, and the statement returns the stores that got their rows. Its commit is the
bundle's moment of issue. On PostgreSQL the statement takes a share lock on each install
row it reads (`FOR SHARE`), so a revoke's update of that row waits for the batch to commit
or, committing first, makes the batch see `revoked`; on SQLite the one writer at a time
orders them. A bundle that read the store just before a revoke, and would have left just
after it, is refused instead (410).

`last_used_at` is not written per bundle: the stores used since the last stamp are
stamped together every `STAMP_SECONDS`, so a row write per bundle does not contend with
the batch for the install row. The stamp runs beside the batches, never between them:
with 100,000 installs it covers tens of thousands of stores, and while the writer stamped
them, every bundle waited for it (wrk's p99 260 ms against 14 ms).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from datetime import datetime
from functools import lru_cache
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import tracing
from service.access.audit_sqlite import SqliteBatchConnection
from service.background import cancel_and_wait
from service.db import retrying, run_transaction, utcnow
from service.errors import StoreRevoked
from service.installs import repository
from service.installs.models import InstallStatus

log = logging.getLogger("broker.audit")
MAX_BATCH = 500
LINGER_SECONDS = 0.002
STAMP_SECONDS = 5.0  # how stale an install's `last_used_at` may be
# Stores per stamp transaction. On SQLite a chunk runs on the batches' one connection, so
# a batch may wait for one chunk: 500 stores took 6-8 ms (bundles' p99 +8 ms with 100,000
# installs), 100 stores 1.5 ms.
STAMP_BATCH = 100

_COLUMNS = "at, event, actor, store_id, request_id, details"
_REVOKED = InstallStatus.revoked.value
# PostgreSQL: the whole batch as arrays, one prepared statement whatever its size.
_POSTGRES = f"""INSERT INTO audit_events ({_COLUMNS})
SELECT v.at, v.event, v.actor, v.store_id, v.request_id, v.details::json
FROM installs
JOIN unnest($1::timestamptz[], $2::varchar[], $3::varchar[], $4::varchar[], $5::varchar[],
            $6::text[]) AS v(at, event, actor, store_id, request_id, details)
  ON v.store_id = installs.store_id
WHERE installs.status <> '{_REVOKED}'
FOR SHARE OF installs
RETURNING audit_events.store_id
"""  # noqa: S608 (a constant)


def _sqlite_time(at: datetime) -> str:
    """A timestamp as SQLAlchemy stores it in SQLite (naive UTC text, which sorts)."""
    return at.replace(tzinfo=None).isoformat(" ", "microseconds")


@lru_cache(maxsize=64)
def _sqlite(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    return f"""INSERT INTO audit_events ({_COLUMNS})
SELECT v.column1, v.column2, v.column3, v.column4, v.column5, v.column6
FROM (VALUES {values}) AS v
WHERE EXISTS (SELECT 1 FROM installs
              WHERE installs.store_id = v.column4 AND installs.status <> '{_REVOKED}')
RETURNING store_id
"""  # noqa: S608 (placeholders only)


class AuditWriter:
    """Group commit for bundles' audit rows; also keeps installs' last-used times."""

    def __init__(
        self, sessionmaker: async_sessionmaker[AsyncSession], sqlite_path: str | None = None
    ) -> None:
        self._sessionmaker = sessionmaker
        # On SQLite the batch has a connection of its own (audit_sqlite.py).
        self.sqlite = SqliteBatchConnection(sqlite_path) if sqlite_path is not None else None
        self._queue: asyncio.Queue[tuple[dict[str, Any], asyncio.Future[None]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._expected = 2  # rows the next batch waits for (up to LINGER_SECONDS)
        self._enough = asyncio.Event()
        self._used: dict[str, datetime] = {}  # stores used since the last stamp

    async def start(self) -> None:
        if self.sqlite is not None:
            await self.sqlite.start()
        self._tasks = [
            asyncio.create_task(self._run(), name="audit-writer"),
            asyncio.create_task(self._stamp_loop(), name="last-used-stamp"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks = []
        await self.stamp_last_used()  # what was used since the last stamp is not lost at shutdown
        if self.sqlite is not None:
            await self.sqlite.close()

    async def write(self, event: str, *, actor: str, store_id: str, request_id: str,
                    **details: Any) -> None:  # fmt: skip
        """Returns once the event is committed; raises StoreRevoked if the store was
        revoked (or is gone) before the commit, and the database's error if it failed."""
        row = {
            "at": utcnow(),
            "event": event,
            "actor": actor,
            "store_id": store_id,
            "request_id": request_id,
            "details": details,
        }
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if tracing.ENABLED:
            # Taken here, in the request's task: the batch commits in the writer's.
            trace_id = tracing.current_trace_id()
            if trace_id is not None:
                details["trace_id"] = trace_id
            with tracing.span("audit.write", {"broker.audit_event": event}):
                self._enqueue(row, future)
                await future
            return
        self._enqueue(row, future)
        await future

    def _enqueue(self, row: dict[str, Any], future: asyncio.Future[None]) -> None:
        self._queue.put_nowait((row, future))
        if self._queue.qsize() + 1 >= self._expected:
            self._enough.set()

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Linger (up to LINGER_SECONDS) until as many rows are queued as the last
            # batch held, so concurrent requests share the transaction: a commit costs
            # far more than a row. Requests answered by one commit come back together,
            # a few at a time; taking only the first arrivals split them in two (half the
            # rows per commit, a fifth less throughput). When fewer come, one linger
            # lowers the expectation; under a backlog the queue is already full.
            if self._queue.qsize() + 1 < self._expected:
                self._enough.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(LINGER_SECONDS):
                        await self._enough.wait()
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            self._expected = max(2, len(batch))
            await self._commit(batch)

    async def _commit(self, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]) -> None:
        rows = [row for row, _ in batch]
        try:
            live = await self._flush(rows)
        except Exception as exc:  # the waiting requests answer 503
            log.warning("audit batch failed", extra={"fields": {"size": len(batch)}})
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for row, future in batch:
            if row["store_id"] in live:
                self._used[row["store_id"]] = row["at"]
            if not future.done():
                if row["store_id"] in live:
                    future.set_result(None)
                else:
                    future.set_exception(StoreRevoked())

    async def _flush(self, rows: list[dict[str, Any]]) -> set[str]:
        """Insert the rows whose stores are not revoked; returns those stores."""
        if self.sqlite is not None:
            params: list[Any] = []
            for row in rows:
                params += (_sqlite_time(row["at"]), row["event"], row["actor"], row["store_id"],
                           row["request_id"], orjson.dumps(row["details"]).decode())  # fmt: skip
            sqlite, statement = self.sqlite, _sqlite(len(rows))
            returned = await retrying(lambda: sqlite.run(statement, params))
            return {store_id for (store_id,) in returned}

        names = ("at", "event", "actor", "store_id", "request_id")
        columns = [[row[name] for row in rows] for name in names]
        columns.append([orjson.dumps(row["details"]).decode() for row in rows])

        async def work(session: AsyncSession) -> set[str]:
            conn = await session.connection()
            result = await conn.exec_driver_sql(_POSTGRES, tuple(columns))
            return {store_id for (store_id,) in result}

        return await run_transaction(self._sessionmaker, work)

    async def _stamp_loop(self) -> None:
        while True:
            await asyncio.sleep(STAMP_SECONDS)
            await self.stamp_last_used()

    async def stamp_last_used(self) -> None:
        """Stamp `last_used_at` on the stores used since the last stamp (never backwards,
        never on a revoked install): every STAMP_SECONDS in a task of its own, beside the
        batches, and at stop.

        In transactions of STAMP_BATCH stores, yielding between them: with 100,000
        installs tens of thousands of stores are used between two stamps, and one
        statement for all of them held the event loop (its parameters) and SQLite's write
        lock (its rows) long enough to show in the bundles' p99."""
        used, self._used = self._used, {}
        stamps = sorted(used.items())
        for first in range(0, len(stamps), STAMP_BATCH):
            chunk = dict(stamps[first : first + STAMP_BATCH])
            try:
                if first:
                    await asyncio.sleep(0)  # let requests run between transactions
                await self._stamp(chunk)
            except asyncio.CancelledError:  # stopping: `stop` stamps what is left
                self.remember_use(stamps[first:])
                raise
            except Exception:  # kept for the next stamp: not worth a failed request
                log.warning("last-used stamp failed", extra={"fields": {"stores": len(chunk)}})
                self.remember_use(chunk.items())

    async def _stamp(self, chunk: dict[str, datetime]) -> None:
        """One chunk of the stamp (already in store order), in its own transaction."""
        if self.sqlite is not None:
            sqlite = self.sqlite
            params = [{"sid": sid, "at": _sqlite_time(at)} for sid, at in chunk.items()]
            await retrying(lambda: sqlite.run_many(repository.STAMP_SQLITE, params))
            return

        async def work(session: AsyncSession) -> None:
            await repository.stamp_last_used(await session.connection(), chunk)

        await run_transaction(self._sessionmaker, work)

    def remember_use(self, stamps: Iterable[tuple[str, datetime]]) -> None:
        """Stores to stamp at the next stamp, kept at their latest use."""
        for sid, at in stamps:
            self._used[sid] = max(at, self._used.get(sid, at))
