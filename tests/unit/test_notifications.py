"""LISTEN/NOTIFY between replicas: delivered on commit, never for a rollback, and the
listener comes back after its connection is killed (PostgreSQL only: SQLite has none)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.db import create_sessionmaker
from service.notifications import Listener, notify


@pytest.fixture
def pg_url(database_url: str) -> str:
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; SQLite replicas rely on the poll")
    return database_url


async def test_sqlite_listener_is_disabled_and_notify_is_a_no_op(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/n.db"
    listener = Listener(url)
    listener.subscribe("broker_test", lambda payload: None)
    await listener.start()
    assert not listener.enabled and not listener.connected
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        await notify(session, "broker_test", "x")  # must not fail on SQLite
    await engine.dispose()


async def test_delivered_on_commit_not_on_rollback_and_after_a_reconnect(pg_url):
    received: list[str] = []
    reconnects: list[int] = []
    got = asyncio.Event()
    listener = Listener(pg_url)

    def handle(payload: str) -> None:
        received.append(payload)
        got.set()

    listener.subscribe("broker_test", handle)
    listener.on_reconnect(lambda: reconnects.append(1))
    await listener.start()
    engine = create_async_engine(pg_url)
    sessionmaker = create_sessionmaker(engine)
    try:
        assert await listener.wait_connected(5), "the listener never connected"
        async with sessionmaker() as session, session.begin():
            await notify(session, "broker_test", "rolled-back")
            await session.rollback()
        async with sessionmaker() as session, session.begin():
            await notify(session, "broker_test", "committed")
        await asyncio.wait_for(got.wait(), 2)
        assert received == ["committed"]

        # Kill the listener's connection from outside: it must come back and say so.
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE query LIKE 'LISTEN%' AND datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            )
        for _ in range(100):
            if len(reconnects) >= 2 and listener.connected:
                break
            await asyncio.sleep(0.1)
        assert len(reconnects) >= 2, "the listener did not reconnect"
        got.clear()
        async with sessionmaker() as session, session.begin():
            await notify(session, "broker_test", "after-reconnect")
        await asyncio.wait_for(got.wait(), 2)
        assert received[-1] == "after-reconnect"
    finally:
        await listener.stop()
        await engine.dispose()
