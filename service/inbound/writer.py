"""The receiver's database work, batched (service/batching.py): the token checks of the
requests that arrive together are one query, and the accepted notifications are written
together in one transaction, each with its dedupe row and its event
(`receiver.accept`); each request answers once its batch has committed.

One session per check and one transaction per notification made a burst queue on the
pool and on the outbox's one lock (the advisory lock on PostgreSQL, the database's one
writer on SQLite, where 32 writers polling for the lock took seconds at the tail). A
write batch that fails fails every request in it (503, nothing written: Neto sends
again), never one half of it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.batching import Batcher
from service.db import run_transaction
from service.inbound import tokens
from service.inbound.normalise import Notification
from service.inbound.receiver import Accepted, accept


class NotifyWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self._sessionmaker = sessionmaker
        self._checks: Batcher[tuple[str, str | None], tokens.Verdict] = Batcher(
            "notify-tokens", self._check_many
        )
        self._writes: Batcher[tuple[str, Notification, bytes], Accepted] = Batcher(
            "notify-writer", self._write_many
        )
        self._working = 0

    @contextmanager
    def handling(self) -> Iterator[None]:
        """Around one notification from its body read in full to its answer (a slow
        sender's body does not count): the webhook worker waits for none to be left
        before a round (service/events/worker.py)."""
        self._working += 1
        try:
            yield
        finally:
            self._working -= 1

    @property
    def working(self) -> int:
        return self._working

    def busy(self) -> bool:
        return self._working > 0

    def start(self) -> None:
        self._checks.start()
        self._writes.start()

    async def stop(self) -> None:
        await self._checks.stop()
        await self._writes.stop()

    async def check(self, store_id: str, token: str | None) -> tokens.Verdict:
        return await self._checks.submit((store_id, token))

    async def write(self, store_id: str, note: Notification, body: bytes) -> Accepted:
        return await self._writes.submit((store_id, note, body))

    async def _check_many(self, items: list[tuple[str, str | None]]) -> list[tokens.Verdict]:
        async with self._sessionmaker() as session:
            return await tokens.check_many(session, items)

    async def _write_many(self, items: list[tuple[str, Notification, bytes]]) -> list[Accepted]:
        return await run_transaction(self._sessionmaker, lambda session: accept(session, items))
