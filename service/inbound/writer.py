"""Group commit of accepted notifications: those that arrive while a batch is being
committed are written together in the next transaction, each with its dedupe row and its
event (`receiver.accept`), and each request answers once its batch has committed.

One transaction per notification made the appends queue on the outbox's one lock (the
advisory lock on PostgreSQL, the database's one writer on SQLite, where 32 writers
polling for the lock took seconds at the tail); a batch takes the lock once for all of
them. A batch that fails fails every request in it (503, nothing written: Neto sends
again), never one half of it."""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.background import cancel_and_wait
from service.db import run_transaction
from service.inbound.normalise import Notification
from service.inbound.receiver import Accepted, accept

log = logging.getLogger("broker.inbound")
MAX_BATCH = 100

Item = tuple[str, Notification, bytes, "asyncio.Future[Accepted]"]


class NotifyWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="notify-writer")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        while not self._queue.empty():  # nothing written for them: Neto sends again
            *_, future = self._queue.get_nowait()
            if not future.done():
                future.cancel()

    async def write(self, store_id: str, note: Notification, body: bytes) -> Accepted:
        future: asyncio.Future[Accepted] = asyncio.get_running_loop().create_future()
        await self._queue.put((store_id, note, body, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._commit(batch)

    async def _commit(self, batch: list[Item]) -> None:
        async def work(session: AsyncSession) -> list[Accepted]:
            return await accept(session, [(store, note, body) for store, note, body, _ in batch])

        try:
            results = await run_transaction(self._sessionmaker, work)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every request of the batch gets it (503 or 500)
            log.warning("a batch of notifications was not written",
                        extra={"fields": {"notifications": len(batch),
                                          "error": type(exc).__name__}})  # fmt: skip
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if not future.done():  # the request went away meanwhile: its row stays
                future.set_result(result)
