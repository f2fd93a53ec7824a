"""Group execution (service/batching.py) and the SQLite writers' queue (service/db.py):
what concurrent requests submit together is done in a few batches, each submitter gets
its own result in order, a failed batch fails all of its submitters and nothing else,
and on SQLite one process's write transactions never overlap (they queue in order
instead of polling SQLite's lock)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from service.batching import Batcher
from service.db import create_sessionmaker, run_transaction


async def test_concurrent_submits_share_batches_and_get_their_own_results() -> None:
    batches: list[list[int]] = []

    async def double(items: list[int]) -> list[int]:
        batches.append(items)
        await asyncio.sleep(0.01)  # a round trip: what arrives meanwhile waits for the next
        return [2 * item for item in items]

    batcher: Batcher[int, int] = Batcher("double", double, max_batch=16)
    batcher.start()
    try:
        results = await asyncio.gather(*(batcher.submit(n) for n in range(50)))
    finally:
        await batcher.stop()
    assert results == [2 * n for n in range(50)]
    assert sorted(n for batch in batches for n in batch) == list(range(50))
    assert max(len(batch) for batch in batches) == 16  # bounded
    assert len(batches) <= 5, [len(b) for b in batches]  # 50 items, a handful of batches


async def test_a_failed_batch_fails_its_submitters_and_the_next_batch_runs() -> None:
    async def work(items: list[str]) -> list[str]:
        await asyncio.sleep(0.01)
        if "bad" in items:
            raise RuntimeError("the database went away")
        return [item.upper() for item in items]

    batcher: Batcher[str, str] = Batcher("upper", work)
    batcher.start()
    try:
        failed = await asyncio.gather(
            batcher.submit("a"), batcher.submit("bad"), return_exceptions=True
        )
        after = await asyncio.gather(batcher.submit("b"), batcher.submit("c"))
    finally:
        await batcher.stop()
    # Submitted together, in one batch: "a" fails with "bad", never half of the batch.
    assert [type(r) for r in failed] == [RuntimeError, RuntimeError], failed
    assert after == ["B", "C"]


async def test_stop_cancels_what_is_queued_and_a_stopped_batcher_refuses() -> None:
    started = asyncio.Event()

    async def slow(items: list[int]) -> list[int]:
        started.set()
        await asyncio.sleep(10)
        return items

    batcher: Batcher[int, int] = Batcher("slow", slow)
    batcher.start()
    first = asyncio.ensure_future(batcher.submit(1))
    await started.wait()
    queued = asyncio.ensure_future(batcher.submit(2))
    await asyncio.sleep(0)
    await batcher.stop()
    for future in (first, queued):
        with pytest.raises(asyncio.CancelledError):
            await future
    with pytest.raises(RuntimeError, match="not running"):
        await batcher.submit(3)


async def test_sqlite_write_transactions_of_one_process_do_not_overlap(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'w.db'}")
    sessionmaker = create_sessionmaker(engine)
    inside, most, order = 0, 0, []

    async def write(n: int) -> None:
        async def work(session: AsyncSession) -> None:
            nonlocal inside, most
            inside += 1
            most = max(most, inside)
            await session.execute(text("INSERT INTO t VALUES (:n)"), {"n": n})
            await asyncio.sleep(0.005)  # other coroutines run: none may start a write
            inside -= 1

        await run_transaction(sessionmaker, work)
        order.append(n)

    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE t (n INTEGER)"))
        await asyncio.gather(*(write(n) for n in range(20)))
        async with engine.connect() as conn:
            stored = (await conn.execute(text("SELECT n FROM t ORDER BY rowid"))).scalars().all()
    finally:
        await engine.dispose()
    assert most == 1
    assert list(stored) == order == list(range(20))  # one after the other, in arrival order
