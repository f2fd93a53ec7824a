"""What the anonymous internet can make the merchant routes write: a per-address limit
(the address taken from behind the trusted proxies), a cap on live pending installs, prompt
pruning of expired ones, and no audit row for an install that never completed."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
from sqlalchemy import func, select
from starlette.requests import HTTPConnection

from service.audit.models import AuditEvent
from service.db import utcnow
from service.oauth.models import PendingInstall
from service.oauth.throttle import AddressLimiter, client_address
from tests.api.test_invoke import client_for


def sessions(app: Any) -> Any:
    return app.state.services.sessionmaker


async def count(app: Any, stmt: Any) -> int:
    async with sessions(app)() as session:
        return int((await session.execute(stmt)).scalar_one())


async def start(client: httpx.AsyncClient, forwarded: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    return await client.get(
        "/oauth/install", params={"store_domain": "shop.example.com"}, headers=headers
    )


def assert_page(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert int(response.headers["retry-after"]) >= 1


async def test_each_client_address_gets_its_own_minute(app_factory, settings_factory):
    app = await app_factory(settings_factory(install_rate_per_minute=3, trusted_proxies=1))
    async with await client_for(app) as client:
        for n in range(3):  # the client's own entries (left of the proxy's) are ignored
            assert (await start(client, f"10.0.0.{n}, 203.0.113.7")).status_code == 302
        refused = await start(client, "10.9.9.9, 203.0.113.7")
        assert_page(refused, 429)
        assert "Too many install requests" in refused.text
        callback = await client.get("/oauth/callback", params={"state": "s", "code": "c"},
                                    headers={"X-Forwarded-For": "203.0.113.7"})  # fmt: skip
        assert_page(callback, 429)
        assert (await start(client, "203.0.113.8")).status_code == 302  # another address
    assert await count(app, select(func.count()).select_from(PendingInstall)) == 4


def test_the_address_is_the_nth_from_the_right():
    def conn(*forwarded: str) -> HTTPConnection:
        headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
        return HTTPConnection({"type": "http", "headers": headers, "client": ("10.1.1.1", 5)})

    assert client_address(conn("1.1.1.1"), 0) == "10.1.1.1"  # no proxy: the peer
    assert client_address(conn("6.6.6.6, 2.2.2.2"), 1) == "2.2.2.2"
    assert client_address(conn("6.6.6.6, 3.3.3.3", "2.2.2.2"), 2) == "3.3.3.3"
    assert client_address(conn("2.2.2.2"), 2) == "10.1.1.1"  # it bypassed a proxy
    limiter = AddressLimiter(1)
    limiter.admit("a")
    limiter.admit("b")
    assert len(limiter) == 2


async def test_live_pending_installs_are_capped_for_the_anonymous_route(
    app_factory, settings_factory, auth
):
    app = await app_factory(settings_factory(max_pending_installs=2))
    async with await client_for(app) as client:
        assert (await start(client)).status_code == 302
        assert (await start(client)).status_code == 302
        full = await start(client)
        assert_page(full, 503)
        assert "Too many installs are in progress" in full.text
        # A caller with a token still starts installs.
        r = await client.post(
            "/installs/start",
            json={"store_domain": "shop.example.com"},
            headers=auth("installs:start"),
        )
        assert r.status_code == 201, r.text
    assert await count(app, select(func.count()).select_from(PendingInstall)) == 3


async def test_anonymous_starts_write_no_audit_and_expired_rows_are_pruned(app):
    now = utcnow()
    async with sessions(app)() as session, session.begin():
        session.add(PendingInstall(
            state_hash="0" * 64, store_domain="old.example.com", initiated_by="neto",
            created_at=now - timedelta(hours=1), expires_at=now - timedelta(minutes=11),
        ))  # fmt: skip
    async with await client_for(app) as client:
        for _ in range(5):
            assert (await start(client)).status_code == 302
    assert await count(app, select(func.count()).select_from(AuditEvent)) == 0
    stale = select(func.count()).where(PendingInstall.state_hash == "0" * 64)
    assert await count(app, stale) == 0, "an expired pending install was kept"


async def test_only_live_anonymous_installs_count_toward_the_cap(app_factory, settings_factory):
    """Expired, used and token-started pending installs take no place under the cap."""
    app = await app_factory(settings_factory(max_pending_installs=2))
    now = utcnow()
    rows = [
        # expired a minute ago (kept for a while, not yet pruned)
        {"initiated_by": "neto", "expires_at": now - timedelta(minutes=1)},
        {"initiated_by": "neto", "expires_at": now - timedelta(minutes=1)},
        # used
        {"initiated_by": "neto", "expires_at": now + timedelta(minutes=5), "consumed_at": now},
        {"initiated_by": "neto", "expires_at": now + timedelta(minutes=5), "consumed_at": now},
        # started by a caller with a token
        {"initiated_by": "svc", "expires_at": now + timedelta(minutes=5)},
        {"initiated_by": "svc", "expires_at": now + timedelta(minutes=5)},
    ]
    async with sessions(app)() as session, session.begin():
        for n, row in enumerate(rows):
            session.add(PendingInstall(
                state_hash=f"{n:064d}", store_domain="old.example.com", created_at=now, **row
            ))  # fmt: skip
    async with await client_for(app) as client:
        assert (await start(client)).status_code == 302
        assert (await start(client)).status_code == 302
        assert_page(await start(client), 503)
