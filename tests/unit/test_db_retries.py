"""`run_transaction` retries the real contention errors of each backend to a correct
outcome: SQLite's "database is locked" and PostgreSQL's serialization failure."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest
from sqlalchemy import delete, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from service.config import Settings, normalize_database_url
from service.db import create_engine, create_sessionmaker, run_transaction
from service.errors import ServiceUnavailable
from service.installs import repository as stores
from service.installs.models import AuthMethod, Install
from service.security.crypto import KeyRing, generate_key
from tests.support import migrate


def _hold_write_lock(path: Path, locked: asyncio.Event, loop: asyncio.AbstractEventLoop) -> None:
    """Another connection takes SQLite's write lock, writes, and commits 0.3 s later."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE counter SET n = n + 1")
        loop.call_soon_threadsafe(locked.set)
        time.sleep(0.3)
        con.execute("COMMIT")
    finally:
        con.close()


async def test_sqlite_database_is_locked_is_retried_until_the_lock_is_released(
    tmp_path: Path,
) -> None:
    path = tmp_path / "locked.db"
    setup = sqlite3.connect(path)
    setup.execute("PRAGMA journal_mode=WAL")
    setup.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
    setup.execute("INSERT INTO counter VALUES (0)")
    setup.commit()
    setup.close()
    # A short busy timeout makes the wait fail with "database is locked" instead of
    # waiting it out inside SQLite, which is what happens past the service's 15 s.
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    sessionmaker = create_sessionmaker(engine)
    attempts = 0

    async def increment(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        await session.execute(text("UPDATE counter SET n = n + 1"))

    try:
        locked = asyncio.Event()
        holder = asyncio.create_task(
            asyncio.to_thread(_hold_write_lock, path, locked, asyncio.get_running_loop())
        )
        await locked.wait()
        with pytest.raises(ServiceUnavailable):  # one attempt: the error is real
            await run_transaction(sessionmaker, increment, attempts=1)
        await run_transaction(sessionmaker, increment, attempts=8)
        await holder
        async with engine.connect() as conn:
            n = (await conn.execute(text("SELECT n FROM counter"))).scalar_one()
    finally:
        await engine.dispose()
    assert attempts >= 3, f"expected the locked attempts to be retried, got {attempts}"
    assert n == 2, "both writers' increments must be stored"


@pytest.fixture
def pg_url() -> str:
    url = os.environ.get("BROKER_TEST_DATABASE_URL")
    if not url:
        pytest.skip("PostgreSQL only: set BROKER_TEST_DATABASE_URL")
    url = normalize_database_url(url)
    migrate(url)
    return url


async def test_postgresql_serialization_failure_is_retried_without_losing_an_update(
    pg_url: str,
) -> None:
    engine = create_async_engine(pg_url, isolation_level="SERIALIZABLE")
    sessionmaker = create_sessionmaker(engine)
    keyring = KeyRing.parse(f"k1:{generate_key()}")
    store = Install.store_id == "RETRY1"  # type: ignore[arg-type]
    async with sessionmaker() as session, session.begin():
        await stores.upsert(
            session, keyring, store_id="RETRY1", store_domain="retry.example.com",
            auth_method=AuthMethod.api_key, secret={"username": "u", "api_key": "k"},
            scope="x",
        )  # fmt: skip
    a_has_read, b_committed = asyncio.Event(), asyncio.Event()
    attempts = 0

    async def append(session: AsyncSession, letter: str) -> None:
        scope = (await session.execute(select(Install.scope).where(store))).scalar_one()
        await session.execute(update(Install).where(store).values(scope=scope + letter))

    async def a(session: AsyncSession) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:  # read, then let B commit a change to the same row
            await session.execute(select(Install.scope).where(store))
            a_has_read.set()
            await b_committed.wait()
        await append(session, "a")

    async def b() -> None:
        await a_has_read.wait()
        async with sessionmaker() as session, session.begin():
            await append(session, "b")
        b_committed.set()

    try:
        await asyncio.gather(run_transaction(sessionmaker, a), b())
        async with sessionmaker() as session:
            scope = (await session.execute(select(Install.scope).where(store))).scalar_one()
    finally:
        async with sessionmaker() as session, session.begin():
            await session.execute(delete(Install).where(store))
        await engine.dispose()
    assert attempts == 2, "the serialization failure must be retried once"
    assert scope == "xba", f"B's update was lost or applied twice: {scope!r}"


async def test_postgresql_statement_timeout_and_pool_exhaustion_are_503_not_500(
    pg_url: str,
) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, env="development", database_url=pg_url, db_statement_timeout_ms=100
    )
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)

    async def slow(session: AsyncSession) -> None:
        await session.execute(text("SELECT pg_sleep(1)"))

    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable) as timed_out:
            await run_transaction(sessionmaker, slow)
        assert time.monotonic() - started < 0.9, "statement_timeout must cut the query short"
        assert "57014" in repr(timed_out.value.__cause__.orig.sqlstate)  # type: ignore[union-attr]

    finally:
        await engine.dispose()

    small = create_async_engine(pg_url, pool_size=1, max_overflow=0, pool_timeout=0.1)
    try:
        async with small.connect():  # the pool's only connection is taken
            with pytest.raises(ServiceUnavailable):
                await run_transaction(
                    create_sessionmaker(small), lambda s: s.execute(text("SELECT 1"))
                )
    finally:
        await small.dispose()
