"""The pool checks a PostgreSQL connection before use only after it sat idle
(service/db.py, PING_AFTER_IDLE_SECONDS): a connection whose server process died while it
was idle is replaced, not handed out; one returned a moment ago is not pinged."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service import db


@pytest.fixture
async def pool(database_url, settings_factory):
    if not database_url.startswith("postgresql"):
        pytest.skip("the ping is PostgreSQL's (SQLite's connections are files)")
    engine = db.create_engine(settings_factory(db_pool_size=1, db_max_overflow=0))
    pings = []
    dialect = engine.sync_engine.dialect
    real_ping = dialect.do_ping

    def counted(dbapi_connection):
        pings.append(1)
        return real_ping(dbapi_connection)

    dialect.do_ping = counted  # type: ignore[method-assign]
    yield engine, pings
    await engine.dispose()


async def backend_pid(engine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_that_died_while_idle_is_replaced(pool, database_url, monkeypatch):
    engine, pings = pool
    first = await backend_pid(engine)
    killer = create_async_engine(database_url, poolclass=NullPool)
    async with killer.connect() as conn:
        await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first})
    await killer.dispose()
    monkeypatch.setattr(db, "PING_AFTER_IDLE_SECONDS", 0.0)  # every connection counts as idle
    second = await backend_pid(engine)
    assert second != first
    assert pings, "the idle connection was handed out unchecked"


async def test_a_connection_back_a_moment_ago_is_not_pinged(pool):
    engine, pings = pool
    pids = {await backend_pid(engine) for _ in range(20)}
    assert len(pids) == 1  # the same connection each time, from the pool
    assert pings == []
