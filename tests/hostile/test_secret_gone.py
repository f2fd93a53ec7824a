"""A live install without its sealed secret: revoke destroys the secret, and a database
writer then sets the row back to `active` (or `reauth_required`). A bundle or a call
without credentials is not a success: every door answers `store_secret_unreadable`
(500), logs it at ERROR, audits no bundle and sends nothing to Neto. On a replica that
had not cached the store (it reads the row) and on one that had cached it revoked (it
re-reads the row once its copy no longer matches)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from service.audit.models import AuditEvent
from service.installs.models import Install
from tests.support import assert_refused, call_door, install_store

STORE = "N1001"
DOMAIN = "shop.example.com"
DOORS = ("credentials", "invoke", "neto")
LIVE = ("active", "reauth_required")


async def ask(door: str, client: httpx.AsyncClient, auth: Any) -> httpx.Response:
    if door == "credentials":
        return await client.get(
            f"/credentials/{STORE}", headers=auth("credentials:read", stores=[STORE])
        )
    return await call_door(door, client, STORE, "GetItem", auth("invoke", stores=[STORE]), json={})


async def set_status_around_the_broker(app: Any, status: str) -> None:
    """What a database writer does: the status only (no change number, no secret)."""
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(Install).where(Install.store_id == STORE).values(status=status)
        )


async def bundles_audited(app: Any) -> int:
    async with app.state.services.sessionmaker() as session:
        rows = await session.execute(
            select(AuditEvent).where(AuditEvent.event == "bundle.issued")  # type: ignore[arg-type]
        )
        return len(list(rows.scalars()))


async def revoked_store(client: httpx.AsyncClient, neto: Any, auth: Any) -> None:
    await install_store(client, neto, DOMAIN, store_id=STORE)
    r = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
    assert r.status_code == 200, r.text


def assert_unreadable(response: httpx.Response, caplog: pytest.LogCaptureFixture) -> None:
    assert_refused(response, 500, "store_secret_unreadable")
    logged = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and getattr(r, "fields", {}).get("store_id") == STORE
    ]
    assert logged, "operators see it in the log at ERROR, with the store id"
    assert "no sealed secret" in logged[-1].getMessage()


@pytest.mark.parametrize("status", LIVE)
@pytest.mark.parametrize("door", DOORS)
async def test_a_replica_that_had_not_cached_the_store_refuses_it(
    app, client, neto, auth, app_factory, settings, caplog, door, status
):
    await revoked_store(client, neto, auth)
    await set_status_around_the_broker(app, status)
    other = await app_factory(settings)  # a replica that never saw the store
    neto.api_requests.clear()
    before = await bundles_audited(app)
    transport = httpx.ASGITransport(app=other)
    async with httpx.AsyncClient(transport=transport, base_url="http://b2.test") as c2:
        with caplog.at_level(logging.ERROR, logger="broker"):
            r = await ask(door, c2, auth)
    assert_unreadable(r, caplog)
    assert "headers" not in r.text
    assert neto.api_requests == [] and neto.stray_requests == [], "sent without credentials"
    assert await bundles_audited(app) == before, "no bundle for a store without a secret"


@pytest.mark.parametrize("status", LIVE)
@pytest.mark.parametrize("door", DOORS)
async def test_a_replica_that_had_cached_it_revoked_refuses_it_once_it_reads_again(
    app_factory, settings_factory, neto, auth, caplog, door, status
):
    # Copies are checked against their rows every max_age / 4: 0.25 s here.
    app = await app_factory(settings_factory(store_cache_max_age_seconds=1))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        await revoked_store(client, neto, auth)
        revoked = await ask(door, client, auth)
        assert_refused(revoked, 410, "store_revoked")  # and now cached as revoked
        assert len(app.state.services.store_cache) == 1
        await set_status_around_the_broker(app, status)
        neto.api_requests.clear()
        before = await bundles_audited(app)
        deadline = time.monotonic() + 10
        with caplog.at_level(logging.ERROR, logger="broker"):
            while True:
                r = await ask(door, client, auth)
                if r.status_code != 410 or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
    assert_unreadable(r, caplog)
    assert neto.api_requests == [] and neto.stray_requests == [], "sent without credentials"
    assert await bundles_audited(app) == before


@pytest.mark.parametrize("status", LIVE)
async def test_verify_refuses_it_and_changes_nothing(app, client, neto, auth, caplog, status):
    await revoked_store(client, neto, auth)
    await set_status_around_the_broker(app, status)
    neto.api_requests.clear()
    with caplog.at_level(logging.ERROR, logger="broker"):
        r = await client.post(f"/installs/{STORE}/verify", headers=auth("installs:admin"))
    assert_unreadable(r, caplog)
    assert neto.api_requests == [], "verify sent a call without credentials"
    async with app.state.services.sessionmaker() as session:
        row = (await session.execute(select(Install).where(Install.store_id == STORE))).scalar_one()
    assert row.status == status, "no verdict from a call that was never made"
    # Operators see it on the install, as for a secret that does not open.
    shown = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    assert shown.status_code == 200 and shown.json()["secret_readable"] is False


async def test_a_revoked_store_is_still_just_revoked(app, client, neto, auth, caplog):
    await revoked_store(client, neto, auth)
    with caplog.at_level(logging.ERROR, logger="broker"):
        for door in DOORS:
            assert_refused(await ask(door, client, auth), 410, "store_revoked")
        shown = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    assert shown.json()["secret_readable"] is True  # nothing is missing that should be there
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
