"""Last-used times on the bundle path: cheap, and never a reason to wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from service import stores
from service.db import create_sessionmaker, utcnow
from service.models import AuthMethod, Install
from service.security.crypto import KeyRing, generate_key
from tests.conftest import truncate


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = create_async_engine(database_url)
    yield create_sessionmaker(engine)
    await engine.dispose()
    await truncate(database_url)


async def last_used(db: async_sessionmaker[AsyncSession]) -> dict[str, object]:
    async with db() as session:
        rows = await session.execute(select(Install.store_id, Install.last_used_at))
        return dict(rows.all())


async def touch(db: async_sessionmaker[AsyncSession], ids: list[str], at: object) -> None:
    async with db() as session, session.begin():
        await stores.touch_last_used(session, ids, at)  # type: ignore[arg-type]


async def test_last_used_is_rewritten_at_most_once_per_granularity_and_skips_held_rows(
    db: async_sessionmaker[AsyncSession],
) -> None:
    keyring = KeyRing.parse(f"k1:{generate_key()}")
    async with db() as session, session.begin():
        for sid in ("L1", "L2"):
            await stores.upsert(
                session, keyring, store_id=sid, store_domain=f"{sid.lower()}.example.com",
                auth_method=AuthMethod.api_key, secret={"username": "u", "api_key": "k"},
                token=SecretStr("k"),
            )  # fmt: skip
    t0 = utcnow().replace(microsecond=0)
    step = stores.LAST_USED_GRANULARITY

    await touch(db, ["L1", "L2"], t0)
    assert await last_used(db) == {"L1": t0, "L2": t0}
    await touch(db, ["L1"], t0 + step / 2)
    assert (await last_used(db))["L1"] == t0, "rewritten within the granularity"
    await touch(db, ["L1"], t0 + step + timedelta(seconds=1))
    assert (await last_used(db))["L1"] == t0 + step + timedelta(seconds=1)

    if db.kw["bind"].dialect.name != "postgresql":
        return  # SQLite has one writer at a time anyway
    later = t0 + 10 * step
    async with db() as holder, holder.begin():
        # Another transaction (a revoke, a rotation, another replica) holds L2's row.
        await holder.execute(select(Install).where(Install.store_id == "L2").with_for_update())
        async with asyncio.timeout(2):  # without SKIP LOCKED this would wait forever
            await touch(db, ["L1", "L2"], later)
    assert await last_used(db) == {"L1": later, "L2": t0}
