"""The per-replica store cache follows changes made by other replicas."""

import asyncio
import time
from datetime import timedelta

import httpx
from sqlalchemy import select, update

from service.db import utcnow
from service.installs import repository as stores
from service.installs.models import Install
from tests.support import install_store


async def test_a_revoke_on_another_replica_stops_bundles_within_the_poll_interval(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(store_cache_seconds=0.2))
    headers = auth("credentials:read", stores=["*"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        await install_store(client, neto, "shop.example.com", store_id="N1")
        # An install older than the change feed's margin: the cache may keep it.
        async with app.state.services.sessionmaker() as session, session.begin():
            await session.execute(update(Install).values(updated_at=utcnow() - timedelta(hours=1)))
        first = await client.get("/credentials/N1", headers=headers)
        assert first.status_code == 200
        # A change that does not go through the feed is not seen: the cache is serving.
        async with app.state.services.sessionmaker() as session, session.begin():
            await session.execute(update(Install).values(store_domain="changed.example.com"))
        await asyncio.sleep(0.5)
        cached = await client.get("/credentials/N1", headers=headers)
        assert cached.json()["store_domain"] == "shop.example.com"
        # Another replica revokes: same database, this process's cache is not told.
        async with app.state.services.sessionmaker() as session, session.begin():
            await stores.revoke(session, "N1")
        revoked_at = time.monotonic()
        while True:
            status = (await client.get("/credentials/N1", headers=headers)).status_code
            if status == 410:
                break
            assert status == 200
            assert time.monotonic() - revoked_at < 1.0, "revocation did not propagate in time"
            await asyncio.sleep(0.02)


async def test_with_the_cache_disabled_every_bundle_reads_the_database(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(store_cache_seconds=0))
    headers = auth("credentials:read", stores=["*"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        await install_store(client, neto, "shop.example.com", store_id="N1")
        assert (await client.get("/credentials/N1", headers=headers)).status_code == 200
        async with app.state.services.sessionmaker() as session, session.begin():
            await stores.revoke(session, "N1")
        assert (await client.get("/credentials/N1", headers=headers)).status_code == 410
        assert len(app.state.services.store_cache) == 0


async def test_preload_warms_the_cache_with_active_installs(app_factory, settings_factory, neto):
    first = await app_factory(settings_factory())
    async with first.state.services.sessionmaker() as session, session.begin():
        await stores.insert_many(
            session,
            first.state.services.keyring,
            [
                {"store_id": f"P{n}", "store_domain": f"p{n}.example.com",
                 "auth_method": "api_key", "secret": {"username": "u", "api_key": f"k{n}"}}
                for n in range(25)
            ],
        )  # fmt: skip
    second = await app_factory(settings_factory())
    for _ in range(100):
        if len(second.state.services.store_cache) == 25:
            break
        await asyncio.sleep(0.02)
    assert len(second.state.services.store_cache) == 25


async def test_a_mass_change_empties_the_cache_once_not_on_every_poll(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(store_cache_seconds=0.1))
    async with app.state.services.sessionmaker() as session, session.begin():
        await stores.insert_many(
            session,
            app.state.services.keyring,
            [
                {"store_id": f"M{n}", "store_domain": f"m{n}.example.com",
                 "auth_method": "api_key", "secret": {"username": "u", "api_key": f"k{n}"}}
                for n in range(20)
            ],
        )  # fmt: skip
    await asyncio.sleep(0.3)  # the feed has reported the import
    headers = auth("credentials:read", stores=["*"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        for n in range(20):
            assert (await client.get(f"/credentials/M{n}", headers=headers)).status_code == 200
    cached = len(app.state.services.store_cache)
    assert cached >= 18, cached  # a poll may have overlapped a read or two
    # The rows stay inside the feed's 30 s look-back, but were already acted on.
    await asyncio.sleep(0.6)
    assert len(app.state.services.store_cache) >= cached


async def test_store_versions_only_grow_when_the_change_table_is_folded(app, monkeypatch):
    from service.installs import cache as store_cache

    monkeypatch.setattr(store_cache, "MAX_TRACKED_CHANGES", 3)
    cache = app.state.services.store_cache
    cache.invalidate("A")
    cache.invalidate("A")
    seen = {sid: cache.version(sid) for sid in ("A", "B")}
    for sid in ("B", "C", "D"):  # the fourth store folds the table
        cache.invalidate(sid)
    assert cache.version("A") > seen["A"] and cache.version("B") > seen["B"]
    after = cache.version("A")
    cache.invalidate("A")
    assert cache.version("A") > after


async def test_preload_skips_an_unreadable_install_and_warms_the_rest(
    app_factory, settings_factory, neto
):
    first = await app_factory(settings_factory())
    async with first.state.services.sessionmaker() as session, session.begin():
        await stores.insert_many(
            session,
            first.state.services.keyring,
            [
                {"store_id": f"U{n}", "store_domain": f"u{n}.example.com",
                 "auth_method": "api_key", "secret": {"username": "u", "api_key": f"k{n}"}}
                for n in range(5)
            ],
        )  # fmt: skip
        # A secret copied from another store's row: it must not open for U0.
        copied = (
            await session.execute(select(Install.secret_sealed).where(Install.store_id == "U1"))
        ).scalar_one()
        await session.execute(
            update(Install).where(Install.store_id == "U0").values(secret_sealed=copied)
        )
    second = await app_factory(settings_factory())
    for _ in range(100):
        if len(second.state.services.store_cache) == 4:
            break
        await asyncio.sleep(0.02)
    assert len(second.state.services.store_cache) == 4, "preload stopped at the unreadable row"
