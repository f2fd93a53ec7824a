"""The per-replica store cache follows changes made by other replicas."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, update

from service.db import utcnow
from service.installs import cache as store_cache
from service.installs import queries
from service.installs import repository as stores
from service.installs.models import Install, next_change_seq
from service.installs.repository import INSTALLS
from tests.support import install_store, register_api_key_store, warm_store_cache


async def polls_completed(cache: store_cache.StoreCache, count: int, within: float = 15.0) -> None:
    """Returns once `count` more polls of the change feed have completed: the one running
    now, if any, counts as the first, so a poll that began after a change needs two."""
    target = cache.polls + count
    deadline = time.monotonic() + within
    while cache.polls < target:
        assert time.monotonic() < deadline, f"{count} polls did not complete in {within} s"
        await asyncio.sleep(0.01)


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
        await polls_completed(app.state.services.store_cache, 3)
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
    app_factory, settings_factory, neto, auth, monkeypatch
):
    # Every poll re-reads the changes of the last CHANGE_WINDOW seconds (10 s); widened
    # here so that a slow run cannot let the changes age out of it and pass for nothing.
    monkeypatch.setattr(store_cache, "CHANGE_WINDOW", 600.0)
    app = await app_factory(settings_factory(store_cache_seconds=0.1))
    cache = app.state.services.store_cache
    ids = [f"M{n}" for n in range(20)]
    async with app.state.services.sessionmaker() as session, session.begin():
        await stores.insert_many(
            session,
            app.state.services.keyring,
            [
                {"store_id": sid, "store_domain": f"{sid.lower()}.example.com",
                 "auth_method": "api_key", "secret": {"username": "u", "api_key": f"k{sid}"}}
                for sid in ids
            ],
        )  # fmt: skip
    await polls_completed(cache, 2)  # the second began after the import committed
    headers = auth("credentials:read", stores=["*"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:

        async def fill() -> None:
            # A read that overlaps a poll still reporting stores this replica has not
            # cached yet is served but not cached: read again until every store is in.
            for _ in range(50):
                for sid in ids:
                    r = await client.get(f"/credentials/{sid}", headers=headers)
                    assert r.status_code == 200, r.text
                if len(cache) == len(ids):
                    return
            pytest.fail(f"the cache holds {len(cache)} of {len(ids)} stores after 50 rounds")

        # The import is still inside the look-back, but copies read after it are kept.
        await fill()
        await polls_completed(cache, 3)
        assert len(cache) == len(ids), "later polls emptied the cache again after the import"

        # Another replica changes every store at once (a re-import): the next poll that
        # sees it drops every cached copy, once.
        async with app.state.services.sessionmaker() as session, session.begin():
            await session.execute(
                update(INSTALLS)
                .where(INSTALLS.c.store_id.in_(ids))
                .values(change_seq=next_change_seq(), updated_at=utcnow())
            )
        await polls_completed(cache, 2)
        assert len(cache) == 0, "the poll after a mass change kept copies it had to drop"
        await fill()
        await polls_completed(cache, 3)
        assert len(cache) == len(ids), "later polls emptied the cache again after the change"


async def test_store_versions_only_grow_when_the_change_table_is_folded(app, monkeypatch):
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


# Copies that reach their maximum age within a test.
AGING = {"store_cache_seconds": 0.2, "store_cache_max_age_seconds": 1}


@asynccontextmanager
async def bundle_served(app, neto, headers) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app` once store N1 is installed and its bundle served (and cached)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        await install_store(client, neto, "shop.example.com", store_id="N1")
        assert (await client.get("/credentials/N1", headers=headers)).status_code == 200
        yield client


async def test_copies_are_revalidated_before_they_expire_not_read_again(
    app_factory, settings_factory, neto, auth
):
    """A copy is checked against its row (change number, status) before it reaches the
    maximum age: callers keep being served from memory, the single-store read never runs
    (a fault armed on it would answer 503)."""
    from tests.faults.injector import DatabaseFaults

    # Twice AGING's scale: the feed is trusted for 1 s after each poll and a copy is checked
    # 1 s before it expires, so a loaded machine's pause of 0.25 s (which lapsed AGING's
    # trust and sent a read to the database, rightly) is not taken for an aged copy.
    app = await app_factory(
        settings_factory(store_cache_seconds=0.5, store_cache_max_age_seconds=2)
    )
    headers = auth("credentials:read", stores=["*"])
    async with bundle_served(app, neto, headers) as client:
        faults = DatabaseFaults(app.state.services.engine)
        faults.fail(r"FROM installs\s+WHERE installs\.store_id = ")  # the one-store read
        try:
            started = time.monotonic()
            while time.monotonic() - started < 4.5:  # well past the maximum age
                r = await client.get("/credentials/N1", headers=headers)
                assert r.status_code == 200, r.text
                await asyncio.sleep(0.1)
        finally:
            faults.close()
        assert faults.refused == [], "an aged copy was read again on a caller's path"


async def test_a_change_the_feed_never_reported_is_caught_within_the_maximum_age(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**AGING))
    headers = auth("credentials:read", stores=["*"])
    async with bundle_served(app, neto, headers) as client:
        # Revoked behind the install service's back: no new change number, no feed entry.
        async with app.state.services.sessionmaker() as session, session.begin():
            await session.execute(update(Install).values(status="revoked"))
        changed = time.monotonic()
        while (await client.get("/credentials/N1", headers=headers)).status_code == 200:
            assert time.monotonic() - changed < 1.5, "the copy outlived the maximum age"
            await asyncio.sleep(0.05)
        assert (await client.get("/credentials/N1", headers=headers)).status_code == 410


async def test_a_late_commit_below_the_last_polled_change_still_drops_the_copy(
    app_factory, settings_factory, neto, auth
):
    """A change number is taken when the row is written and becomes visible at commit, so
    a change can commit after a higher number was polled: the look-back window must still
    drop the copy it made stale. Push and the maximum age are kept out of it: the revoke
    is written behind the install service (no NOTIFY), and copies live an hour."""
    app = await app_factory(
        settings_factory(store_cache_seconds=0.1, store_cache_max_age_seconds=3600)
    )
    services = app.state.services
    cache = services.store_cache
    headers = auth("credentials:read", stores=["*"])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        for sid in ("L1", "L2"):
            await register_api_key_store(client, auth("installs:admin"), sid)
        # L1 cached, and kept by polls (a read overlapping a change is served, not cached).
        await warm_store_cache(app, lambda: client.get("/credentials/L1", headers=headers))
        version = cache.version("L1")

        async with services.sessionmaker() as late:
            real = late.get_bind().dialect.name == "postgresql"
            if real:  # L1's revoke takes its number now, and commits last
                await late.begin()
                await stores.revoke(late, "L1")
            async with services.sessionmaker() as other, other.begin():
                await stores.revoke(other, "L2")  # a higher number, committed first
            await polls_completed(cache, 2)  # the higher number has been polled
            if real:
                await late.commit()
            else:
                # One writer at a time: a number below the highest polled, written now, is
                # what such a commit looks like to the feed.
                numbered = await queries.last_change(late) - 1
                now = utcnow()
                await late.execute(
                    update(INSTALLS)
                    .where(INSTALLS.c.store_id == "L1", INSTALLS.c.change_seq < numbered)
                    .values(status="revoked", secret_sealed=None, token_fingerprint=None,
                            revoked_at=now, updated_at=now, change_seq=numbered)
                )  # fmt: skip
                await late.commit()
            rows = await late.execute(select(INSTALLS.c.store_id, INSTALLS.c.change_seq))
            seqs = {sid: seq for sid, seq in rows}
        assert seqs["L1"] < seqs["L2"], f"not a late commit: {seqs}"

        await polls_completed(cache, 2)
        assert cache.version("L1") > version, "the late change did not move the store's version"
        r = await client.get("/credentials/L1", headers=headers)
        assert r.status_code == 410, "a copy the late revoke made stale is still served"
