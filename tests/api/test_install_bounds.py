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
from service.oauth.throttle import AddressLimiter, address_prefix, client_address
from tests.api.test_invoke import client_for
from tests.support import query_of


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


async def test_the_minute_counts_ipv6_by_its_64(app_factory, settings_factory):
    app = await app_factory(settings_factory(install_rate_per_minute=3))
    for n in range(3):
        assert (
            await start_from(app, f"2001:db8:7:8::{n + 1}", f"s{n}.example.com")
        ).status_code == 302
    assert_page(await start_from(app, "2001:db8:7:8:ffff:ffff:ffff:fffe"), 429)
    assert (await start_from(app, "2001:db8:7:9::1")).status_code == 302  # another /64
    # IPv4 by the exact address; an IPv4-mapped IPv6 peer is its IPv4 address.
    for n in range(3):
        assert (await start_from(app, "127.0.0.7", f"t{n}.example.com")).status_code == 302
    assert_page(await start_from(app, "::ffff:127.0.0.7"), 429)
    assert (await start_from(app, "127.0.0.8")).status_code == 302


def test_address_prefixes():
    assert address_prefix("203.0.113.7") == "203.0.113.7"
    assert address_prefix("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert address_prefix("2001:DB8:1:2::1") == "2001:db8:1:2::/64"
    assert address_prefix("::ffff:203.0.113.7") == "203.0.113.7"
    assert address_prefix("unknown") == "unknown"


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


def from_address(app: Any, address: str) -> httpx.AsyncClient:
    """A client whose requests reach the app from `address` (the ASGI peer)."""
    transport = httpx.ASGITransport(app=app, client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://broker.test")


async def start_from(app: Any, address: str, domain: str = "shop.example.com") -> httpx.Response:
    async with from_address(app, address) as client:
        return await client.get("/oauth/install", params={"store_domain": domain})


def anonymous_live() -> Any:
    """Unused rows not started by the test's caller token (whatever marks the rest)."""
    return select(func.count()).where(
        PendingInstall.initiated_by != "test-service",
        PendingInstall.consumed_at.is_(None),  # type: ignore[union-attr]
    )


async def test_live_pending_installs_are_capped_for_the_anonymous_route(
    app_factory, settings_factory, auth
):
    # A cap of 16: each address prefix may hold 2 (an eighth).
    app = await app_factory(settings_factory(max_pending_installs=16))
    for n in range(16):  # sixteen prefixes, one row each: the table is full and fair
        r = await start_from(app, f"127.0.0.{10 + n}", f"s{n}.example.com")
        assert r.status_code == 302, r.text
    full = await start_from(app, "127.0.0.99")  # no prefix holds two more than this one
    assert_page(full, 503)
    assert "Too many installs are in progress" in full.text
    async with await client_for(app) as client:
        # A caller with a token still starts installs.
        r = await client.post(
            "/installs/start",
            json={"store_domain": "shop.example.com"},
            headers=auth("installs:start"),
        )
        assert r.status_code == 201, r.text
    assert await count(app, anonymous_live()) == 16


async def test_a_full_table_makes_room_from_the_prefix_holding_the_most(
    app_factory, settings_factory
):
    app = await app_factory(settings_factory(max_pending_installs=16))
    for n in range(8):  # eight prefixes at their share (2) fill the table
        for m in range(2):
            r = await start_from(app, f"127.0.0.{10 + n}", f"s{n}-{m}.example.com")
            assert r.status_code == 302, r.text
    for n in range(8):  # each fresh prefix takes the oldest row of one holding two
        assert (await start_from(app, f"127.0.1.{n}", f"f{n}.example.com")).status_code == 302
    assert await count(app, anonymous_live()) == 16
    # Now every prefix holds one: a fresh one takes no one's place.
    assert_page(await start_from(app, "127.0.2.1"), 503)
    first = select(func.count()).where(PendingInstall.store_domain.like("s%-0.example.com"))  # type: ignore[attr-defined]
    assert await count(app, first) == 0, "the oldest row of each full prefix gave way"


async def test_one_address_prefix_holds_at_most_its_share(app_factory, settings_factory):
    """IPv4 by exact address; IPv6 by /64, so rotating the low 64 bits gains nothing."""
    app = await app_factory(settings_factory(max_pending_installs=40))  # share: 5
    for n in range(5):
        assert (await start_from(app, "127.0.0.5", f"s{n}.example.com")).status_code == 302
        assert (
            await start_from(app, f"2001:db8:1:2::{n + 1:x}", f"s{n}.example.com")
        ).status_code == 302
    for address in ("127.0.0.5", "2001:db8:1:2::ffff", "2001:db8:1:2:aaaa:bbbb:cccc:dddd"):
        refused = await start_from(app, address)
        assert_page(refused, 429)
        assert "from your network" in refused.text
    # Another IPv4 address and another /64 have their own share.
    assert (await start_from(app, "127.0.0.6")).status_code == 302
    assert (await start_from(app, "2001:db8:1:3::1")).status_code == 302
    assert await count(app, anonymous_live()) == 12


async def test_one_store_domain_holds_at_most_its_share_and_its_newest_start_wins(
    app_factory, settings_factory, neto
):
    """Refusing past the domain's share would let anyone block one store's installs: the
    oldest gives way instead, so the merchant who starts last gets through."""
    app = await app_factory(settings_factory(max_pending_installs=40))  # share: 5
    states = []
    for n in range(8):
        r = await start_from(app, f"127.0.1.{n}", "victim.example.com")
        assert r.status_code == 302, r.text
        states.append(query_of(r.headers["location"])["state"])
    rows = select(func.count()).where(PendingInstall.store_domain == "victim.example.com")
    assert await count(app, rows) == 5
    async with from_address(app, "127.0.2.1") as client:
        code = neto.authorize("victim.example.com", store_id="N77")
        done = await client.get("/oauth/callback", params={"code": code, "state": states[-1]})
        assert done.status_code == 200, done.text
        code = neto.authorize("victim.example.com", store_id="N77")
        gone = await client.get("/oauth/callback", params={"code": code, "state": states[0]})
        assert gone.status_code == 400 and "unknown" in gone.text


async def test_the_issues_two_address_attack_no_longer_fills_the_table(
    app_factory, settings_factory
):
    """Issue 31: 25 starts from each of two loopback addresses filled a cap of 40 and the
    next merchant got 503 for ten minutes."""
    app = await app_factory(settings_factory(max_pending_installs=40))
    for address in ("127.0.0.2", "127.0.0.3"):
        for n in range(25):
            await start_from(app, address, f"a{n}-{address[-1]}.example.com")
    assert await count(app, anonymous_live()) == 10, "each address holds an eighth: 5"
    assert (await start_from(app, "127.0.0.4", "merchant.example.com")).status_code == 302


async def test_a_merchant_from_a_fresh_address_gets_through_a_many_address_flood(
    app_factory, settings_factory, neto
):
    """The issue's attack, wider: 24 loopback addresses (three times the eighth that
    would fill the table), each starting installs until refused, keep the table full;
    a merchant from another address still starts, and completes, the install; the
    flood going on afterwards never takes the merchant's row."""
    app = await app_factory(settings_factory(max_pending_installs=40))
    attackers = [f"127.0.0.{n}" for n in range(2, 26)]

    async def flood() -> list[int]:
        statuses = []
        for address in attackers:
            for n in range(7):
                domain = f"a{n}-{address.replace('.', '-')}.example.com"
                statuses.append((await start_from(app, address, domain)).status_code)
        return statuses

    first = await flood()
    assert 503 in first or 429 in first, "the flood must meet the cap"
    assert await count(app, anonymous_live()) == 40, "the flood filled the table"
    r = await start_from(app, "127.0.0.200", "merchant.example.com")
    assert r.status_code == 302, r.text
    state = query_of(r.headers["location"])["state"]
    later = await flood()
    assert set(later) <= {302, 429, 503}
    assert await count(app, anonymous_live()) <= 40
    async with from_address(app, "127.0.0.200") as client:
        code = neto.authorize("merchant.example.com", store_id="N200")
        done = await client.get("/oauth/callback", params={"code": code, "state": state})
    assert done.status_code == 200, done.text
    assert "merchant.example.com is now connected" in done.text


async def test_anonymous_starts_write_no_audit_and_expired_rows_are_pruned(app):
    now = utcnow()
    async with sessions(app)() as session, session.begin():
        session.add(PendingInstall(
            state_hash="0" * 64, store_domain="old.example.com", initiated_by="neto:0",
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
    app = await app_factory(settings_factory(max_pending_installs=2))  # share: 1
    now = utcnow()
    rows = [
        # expired a minute ago (kept for a while, not yet pruned)
        {"initiated_by": "neto:1", "expires_at": now - timedelta(minutes=1)},
        {"initiated_by": "neto:2", "expires_at": now - timedelta(minutes=1)},
        # used
        {"initiated_by": "neto:3", "expires_at": now + timedelta(minutes=5), "consumed_at": now},
        {"initiated_by": "neto:4", "expires_at": now + timedelta(minutes=5), "consumed_at": now},
        # started by a caller with a token
        {"initiated_by": "svc", "expires_at": now + timedelta(minutes=5)},
        {"initiated_by": "svc", "expires_at": now + timedelta(minutes=5)},
    ]
    async with sessions(app)() as session, session.begin():
        for n, row in enumerate(rows):
            session.add(PendingInstall(
                state_hash=f"{n:064d}", store_domain="old.example.com", created_at=now, **row
            ))  # fmt: skip
    assert (await start_from(app, "127.0.0.2", "a.example.com")).status_code == 302
    assert (await start_from(app, "127.0.0.3", "b.example.com")).status_code == 302
    assert_page(await start_from(app, "127.0.0.4", "c.example.com"), 503)
