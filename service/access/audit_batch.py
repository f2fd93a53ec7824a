"""The audit rows of issued bundles, group-committed, with the revoke fence.

Bundles are the hot path, so their events go through the `AuditWriter`: concurrent
requests' events are inserted together in one transaction (group commit), and each
request waits for its event to be committed before it answers, so no bundle leaves the
broker unaudited.

A bundle's event is written with `unless_revoked=True`: its commit is the bundle's moment
of issue, and it commits only if the store is not revoked at that moment (the revoke and
the batch both write the install's row, so the database orders them). A bundle that read
the store just before a revoke, and would have left just after it, is refused instead.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit.models import AuditEvent
from service.background import cancel_and_wait
from service.db import run_transaction, utcnow
from service.errors import StoreRevoked
from service.installs import repository

log = logging.getLogger("broker.audit")
MAX_BATCH = 500
LINGER_SECONDS = 0.002


class AuditWriter:
    """Group commit for high-rate events; also keeps installs' last-used times."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[tuple[dict[str, Any], bool, asyncio.Future[None]]] = (
            asyncio.Queue()
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def write(
        self,
        event: str,
        *,
        actor: str,
        store_id: str | None,
        request_id: str | None,
        unless_revoked: bool = False,
        **details: Any,
    ) -> None:
        """Returns once the event is committed; raises if it could not be, and
        StoreRevoked if `unless_revoked` and the store was revoked before the commit."""
        row = {
            "at": utcnow(),
            "event": event,
            "actor": actor,
            "store_id": store_id,
            "request_id": request_id,
            "details": details,
        }
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((row, unless_revoked, future))
        await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Linger a moment so concurrent requests share the transaction: a commit costs
            # far more than a row, and small batches would make every bundle pay for one.
            await asyncio.sleep(LINGER_SECONDS)
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                live = await self._flush([(row, guarded) for row, guarded, _ in batch])
            except Exception as exc:  # the waiting requests answer 503
                log.warning("audit batch failed", extra={"fields": {"size": len(batch)}})
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
            else:
                for row, guarded, future in batch:
                    if future.done():
                        continue
                    if guarded and row["store_id"] not in live:
                        future.set_exception(StoreRevoked())
                    else:
                        future.set_result(None)

    async def _flush(self, batch: list[tuple[dict[str, Any], bool]]) -> set[str]:
        """Insert the batch; returns the store ids that were not revoked at commit."""
        used: dict[str, datetime] = {r["store_id"]: r["at"] for r, _ in batch if r["store_id"]}

        async def work(session: AsyncSession) -> set[str]:
            # Core statements on the session's connection: the ORM execution path costs
            # more than the writes themselves on this, the busiest transaction.
            conn = await session.connection()
            live: set[str] = set()
            if used:
                live = await repository.touch_last_used(conn, sorted(used), max(used.values()))
            rows = [row for row, guarded in batch if not guarded or row["store_id"] in live]
            if rows:
                await conn.execute(insert(AuditEvent.__table__), rows)  # type: ignore[attr-defined]
            return live

        return await run_transaction(self._sessionmaker, work)
