"""Group execution: what concurrent requests submit while a batch runs is done together in
the next one, and each submitter waits for its own item's result.

A database round trip (a commit above all) costs far more than one more row in it: one
statement or transaction per request makes a burst queue on the pool, on the outbox's
lock (PostgreSQL's advisory lock, SQLite's one writer) and, on SQLite, on the busy
handler's sleeps. A batcher runs one batch at a time, so a burst of N requests costs a
few batches, not N. A batch that fails fails every item in it (each submitter gets the
exception), never one half of it. Used by Neto's notifications (token checks and the
group commit, service/inbound/writer.py) and the webhook worker's attempt records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from service.background import cancel_and_wait

log = logging.getLogger("broker.batching")

I = TypeVar("I")  # noqa: E741  (an item)
R = TypeVar("R")  # its result


class Batcher(Generic[I, R]):
    """Runs `work(items) -> results` (in the items' order) on up to `max_batch` items at a
    time, in a task of its own (`start`, `stop`)."""

    def __init__(
        self, name: str, work: Callable[[list[I]], Awaitable[Sequence[R]]], max_batch: int = 100
    ) -> None:
        self.name = name
        self._work = work
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[I, asyncio.Future[R]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Stop after the batch in flight is cut short; nothing queued is done (its
        submitters are cancelled: for a notification, Neto sends it again)."""
        await cancel_and_wait(self._task)
        self._task = None
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()

    async def submit(self, item: I) -> R:
        if self._task is None:
            raise RuntimeError(f"{self.name} is not running")
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((item, future))
        return await future

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._do(batch)

    async def _do(self, batch: list[tuple[I, asyncio.Future[R]]]) -> None:
        try:
            results = await self._work([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:  # every submitter of the batch gets it (503 or 500)
            log.warning(
                "a batch failed",
                extra={"fields": {"batcher": self.name, "items": len(batch),
                                  "error": type(exc).__name__}},
            )  # fmt: skip
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # the submitter went away meanwhile: its work stands
                future.set_result(result)
