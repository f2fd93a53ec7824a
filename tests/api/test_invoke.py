"""`POST /invoke/{store_id}/{action}` against the fake Neto on loopback. What the
pipeline owns (retries, limits, refused credentials, sizes, deadlines) is checked through
both doors: `/invoke` and the Neto-compatible endpoint must behave exactly alike."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.audit.models import AuditEvent
from service.neto.actions import WRITE_ACTIONS
from service.web import metrics
from tests.fakes import neto as fake
from tests.support import (
    CLIENT_ID,
    DOORS,
    assert_refused,
    call_door,
    install_store,
    register_api_key_store,
)

STORE = "N1001"
DOMAIN = "shop.example.com"
MiB = 1024 * 1024


def invoker(auth: Any, stores: list[str] | None = None, **kwargs: Any) -> dict[str, str]:
    return auth("invoke", stores=stores or [STORE], **kwargs)


async def installed(client: httpx.AsyncClient, neto: Any, **grant: Any) -> dict[str, Any]:
    return await install_store(client, neto, DOMAIN, **grant)


async def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://broker.test")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert_refused(response, status, code)


Door = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture(params=DOORS)
def door(request: pytest.FixtureRequest) -> Door:
    """`await door(client, store_id, action, headers, json=...)` through one of the doors."""
    name = request.param

    async def post(client: httpx.AsyncClient, store_id: str, action: str,
                   headers: dict[str, str], **kwargs: Any) -> httpx.Response:  # fmt: skip
        return await call_door(name, client, store_id, action, headers, **kwargs)

    return post


def upstream_count(action: str, status: str) -> float:
    value = metrics.UPSTREAM.labels(action, status)._value.get()
    return float(value)


async def audit_events(app: Any, event: str) -> list[AuditEvent]:
    async with app.state.services.sessionmaker() as session:
        rows = await session.execute(select(AuditEvent).where(AuditEvent.event == event))  # type: ignore[arg-type]
        return list(rows.scalars())


# -- forwarding --------------------------------------------------------------------------


async def test_forwards_action_auth_headers_and_body_byte_for_byte(client, neto, auth):
    got = await installed(client, neto)
    body = b'{"Filter": {"SKU": ["A-1", "\xc3\xa9"],   "Page": 0}}\n'
    headers = {
        **invoker(auth),
        "Content-Type": "application/json",
        "Cookie": "session=caller-cookie",
        "X-Forwarded-For": "203.0.113.7",
        "X-Custom": "do-not-forward",
        "X-Request-ID": "caller-req-42",
    }
    r = await client.post(f"/invoke/{STORE}/GetItem", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["Ack"] == "Success"
    assert "x-broker-error" not in r.headers
    assert r.headers["x-request-id"] == "caller-req-42"
    [seen] = neto.api_requests
    assert seen.path == f"/{DOMAIN}/do/WS/NetoAPI"
    assert seen.action == "GetItem"
    assert seen.body == body
    assert seen.headers["content-type"] == "application/json"
    assert seen.headers["accept"] == "application/json"
    assert seen.headers["x_access_key"] == CLIENT_ID
    assert seen.headers["x_secret_key"] == got["access_token"]
    assert seen.headers["x-request-id"] == "caller-req-42"
    for leaked in ("authorization", "cookie", "x-forwarded-for", "x-custom"):
        assert leaked not in seen.headers, f"caller header {leaked} reached Neto"
    assert not neto.stray_requests


async def test_api_key_store_is_called_with_its_key(client, neto, auth):
    neto.add_api_key_store("keyshop.example.com", "api-user", "k" * 40)
    await register_api_key_store(
        client, auth("installs:admin"), "K77", "keyshop.example.com", api_key="k" * 40
    )
    r = await client.post("/invoke/K77/GetWarehouse", json={}, headers=invoker(auth, ["K77"]))
    assert r.status_code == 200, r.text
    [seen] = neto.api_requests
    assert seen.path == "/keyshop.example.com/do/WS/NetoAPI"
    assert seen.headers["netoapi_username"] == "api-user"
    assert seen.headers["netoapi_key"] == "k" * 40
    assert "x_secret_key" not in seen.headers


async def test_neto_status_body_and_content_type_come_back_unchanged(client, neto, auth, door):
    await installed(client, neto)
    raw = b'<?xml version="1.0"?><Error>odd</Error>'
    neto.api_responses.append(fake.answer(400, raw, "text/xml; charset=utf-8"))
    r = await door(client, STORE, "GetOrder", json={}, headers=invoker(auth))
    assert r.status_code == 400
    assert r.content == raw
    assert r.headers["content-type"] == "text/xml; charset=utf-8"
    assert "x-broker-error" not in r.headers


async def test_non_json_request_body_is_refused(client, neto, auth):
    await installed(client, neto)
    headers = {**invoker(auth), "Content-Type": "application/x-www-form-urlencoded"}
    r = await client.post(f"/invoke/{STORE}/GetItem", content=b"a=1", headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert not neto.api_requests


# -- which calls are allowed -------------------------------------------------------------

HOSTILE = [
    "getitem",
    "GETITEM",
    "GetItem%0D%0AX-Injected:%201",
    "GetItem%0A",
    "GetItem%00",
    "Get%20Item",
    "GetItem%20",
    "%20GetItem",
    "GetItem/extra",
    "GetItem%2F..%2FAddItem",
    "..%2F..%2Fadmin",
    "GetProduct",
    "DeleteItem",
    "A" * 5000,
    "%C3%A9%E2%80%AE",
    "GetItem;x=1",
]


async def test_unknown_and_hostile_action_names_get_404_without_going_upstream(client, neto, auth):
    await installed(client, neto)
    headers = invoker(auth, actions=["*"])
    for name in HOSTILE:
        r = await client.post(f"/invoke/{STORE}/{name}", json={}, headers=headers)
        assert r.status_code == 404, f"{name[:40]!r}: {r.status_code} {r.text[:200]}"
        assert r.json()["error"] == "unknown_action", name[:40]
        assert r.headers["x-broker-error"] == "unknown_action"
        assert "X-Injected" not in r.headers
    assert not neto.api_requests


async def test_unknown_action_is_decided_before_the_store(client, neto, auth):
    r = await client.post("/invoke/NOPE/getItem", json={}, headers=invoker(auth, ["NOPE"]))
    assert_error(r, 404, "unknown_action")


async def test_write_needs_a_grant(client, neto, auth, door):
    await installed(client, neto)
    body = {"Item": [{"SKU": "A-1", "Name": "New"}]}
    r = await door(client, STORE, "UpdateItem", json=body, headers=invoker(auth))
    assert_error(r, 403, "action_not_allowed")
    r = await door(client, STORE, "AddItem", json=body, headers=invoker(auth, actions=["Update*"]))
    assert_error(r, 403, "action_not_allowed")
    assert not neto.api_requests
    r = await door(
        client, STORE, "UpdateItem", json=body, headers=invoker(auth, actions=["Update*"])
    )
    assert r.status_code == 200, r.text
    assert [s.action for s in neto.api_requests] == ["UpdateItem"]


async def test_a_present_actions_list_is_the_complete_allow_list_reads_included(client, neto, auth):
    # CONTRACT.md: `actions` present = the complete allow-list. A token minted for
    # GetItem alone must not read customers.
    await installed(client, neto)
    only_get_item = invoker(auth, actions=["GetItem"])
    for read in ("GetCustomer", "GetOrder", "GetCurrencySettings"):
        r = await client.post(f"/invoke/{STORE}/{read}", json={}, headers=only_get_item)
        assert_error(r, 403, "action_not_allowed")
    assert not neto.api_requests, "a refused read must not reach Neto"
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=only_get_item)
    assert r.status_code == 200, r.text
    # A prefix grant covers reads the same way; an empty list grants nothing at all.
    r = await client.post(
        f"/invoke/{STORE}/GetOrder", json={}, headers=invoker(auth, actions=["GetOrd*"])
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth, actions=[]))
    assert_error(r, 403, "action_not_allowed")
    assert [s.action for s in neto.api_requests] == ["GetItem", "GetOrder"]


async def test_scope_and_tenant_isolation(client, neto, auth):
    await installed(client, neto)
    await install_store(client, neto, "other.example.com", store_id="N2002")
    r = await client.post("/invoke/N2002/GetItem", json={}, headers=invoker(auth, [STORE]))
    assert_error(r, 403, "store_not_allowed")
    r = await client.post(
        f"/invoke/{STORE}/GetItem", json={}, headers=auth("credentials:read", stores=["*"])
    )
    assert_error(r, 403, "forbidden")
    r = await client.post(f"/invoke/{STORE}/GetItem", json={})
    assert_error(r, 401, "unauthorized")
    assert not neto.api_requests


async def test_unknown_and_revoked_stores(client, neto, auth, door):
    r = await door(client, "N9999", "GetItem", json={}, headers=invoker(auth, ["N9999"]))
    assert_error(r, 404, "store_not_found")
    await installed(client, neto)
    r = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
    assert r.status_code == 200, r.text
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert_error(r, 410, "store_revoked")
    assert not neto.api_requests


# -- retries -----------------------------------------------------------------------------


def assert_not_renderable(response: httpx.Response) -> None:
    where = f"{response.status_code} {response.headers.get('x-broker-error', 'passthrough')}"
    assert response.headers.get("x-content-type-options") == "nosniff", where
    assert response.headers.get("content-security-policy") == "default-src 'none'", where


async def test_every_invoke_answer_forbids_sniffing_and_active_content(client, neto, auth):
    await installed(client, neto)
    # Neto's answers passed through: JSON, and HTML a store could make Neto echo.
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
    assert r.status_code == 200, r.text
    assert_not_renderable(r)
    neto.api_responses.append(fake.answer(200, b"<script>alert(1)</script>", "text/html"))
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
    assert r.content == b"<script>alert(1)</script>"
    assert_not_renderable(r)
    # The broker's own refusals on the same routes.
    refusals = [
        await client.post(f"/invoke/{STORE}/GetItem", json={}),  # 401
        await client.post(f"/invoke/{STORE}/AddItem", json={}, headers=invoker(auth)),  # 403
        await client.post(f"/invoke/{STORE}/NoSuchAction", json={}, headers=invoker(auth)),
        await client.post("/invoke/N404/GetItem", json={}, headers=invoker(auth, ["N404"])),
        await client.get(f"/invoke/{STORE}/GetItem", headers=invoker(auth)),  # 405
        await client.post(
            f"/invoke/{STORE}/GetItem",
            content=b"<x/>",
            headers={**invoker(auth), "Content-Type": "text/html"},
        ),  # 415
    ]
    assert [r.status_code for r in refusals] == [401, 403, 404, 404, 405, 415]
    for r in refusals:
        assert_not_renderable(r)
    neto.api_responses.append(fake.answer(401, b"denied"))
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
    assert_error(r, 502, "upstream_unauthorized")
    assert_not_renderable(r)


async def test_read_is_retried_after_a_500(client, neto, auth, door):
    await installed(client, neto)
    neto.api_responses.append(fake.answer(500, b"oops"))
    r = await door(client, STORE, "GetCustomer", json={}, headers=invoker(auth))
    assert r.status_code == 200, r.text
    assert [s.action for s in neto.api_requests] == ["GetCustomer", "GetCustomer"]


async def test_read_gives_netos_last_answer_when_retries_run_out(client, neto, auth, door):
    await installed(client, neto)
    for _ in range(3):
        neto.api_responses.append(fake.answer(503, b"busy", "text/plain"))
    r = await door(client, STORE, "GetCustomer", json={}, headers=invoker(auth))
    assert r.status_code == 503
    assert r.content == b"busy"
    assert len(neto.api_requests) == 3  # the first try and BROKER_UPSTREAM_MAX_RETRIES=2


async def test_write_is_not_retried_after_a_500(client, neto, auth, door):
    await installed(client, neto)
    neto.api_responses.append(fake.answer(500, b"oops", "text/plain"))
    r = await door(
        client, STORE, "AddOrder", json={"Order": [{}]}, headers=invoker(auth, actions=["Add*"])
    )
    assert r.status_code == 500
    assert r.content == b"oops"
    assert "x-broker-error" not in r.headers
    assert len(neto.api_requests) == 1


async def test_dropped_connection_retries_a_read_but_not_a_write(client, neto, auth, door):
    await installed(client, neto)
    neto.api_responses.append(fake.drop_connection())
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert r.status_code == 200, r.text
    assert len(neto.api_requests) == 2
    neto.api_requests.clear()
    neto.api_responses.append(fake.drop_connection())
    r = await door(
        client, STORE, "AddItem", json={"Item": [{}]}, headers=invoker(auth, actions=["Add*"])
    )
    assert_error(r, 502, "upstream_unreachable")
    assert len(neto.api_requests) == 1, "a write that reached Neto was sent again"


async def test_write_is_retried_when_the_connection_never_opened(
    app_factory, settings_factory, neto, auth, client
):
    """Nothing was sent when the connect fails: retrying a write is safe then."""
    await installed(client, neto)
    with socket_closed_port() as port:
        app = await app_factory(
            settings_factory(neto_api_url_template=f"http://127.0.0.1:{port}/{{store_domain}}/x")
        )
        before = upstream_count("AddItem", "connect_error")
        async with await client_for(app) as c:
            r = await c.post(
                f"/invoke/{STORE}/AddItem", json={}, headers=invoker(auth, actions=["AddItem"])
            )
    assert_error(r, 502, "upstream_unreachable")
    assert upstream_count("AddItem", "connect_error") - before == 3


class socket_closed_port:
    """A loopback port nobody listens on (bound, never listening: connects are refused)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# -- rate limits -------------------------------------------------------------------------


async def test_upstream_429_answers_rate_limited_and_pauses_the_store(client, neto, auth, door):
    await installed(client, neto)
    before = metrics.RATE_LIMIT_PAUSES.labels("upstream_429")._value.get()
    neto.api_responses.append(fake.answer(429, b"slow down"))
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert_error(r, 429, "rate_limited")
    assert r.headers["retry-after"] == "60"
    r = await door(client, STORE, "GetOrder", json={}, headers=invoker(auth))
    assert_error(r, 429, "rate_limited")
    assert 59 <= int(r.headers["retry-after"]) <= 60
    assert len(neto.api_requests) == 1, "a call during the pause went upstream"
    assert metrics.RATE_LIMIT_PAUSES.labels("upstream_429")._value.get() == before + 1


async def test_own_budget_per_store(app_factory, settings_factory, neto, auth, door):
    # A burst of 2 (a tenth of 20), then one call every 3.3 s.
    app = await app_factory(settings_factory(store_rate_per_minute=20))
    async with await client_for(app) as client:
        await installed(client, neto)
        await install_store(client, neto, "other.example.com", store_id="N2002")
        for _ in range(2):
            r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
            assert r.status_code == 200, r.text
        r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
        assert_error(r, 429, "rate_limited")
        assert 1 <= int(r.headers["retry-after"]) <= 4
        # Another store has its own budget.
        r = await door(client, "N2002", "GetItem", json={}, headers=invoker(auth, ["N2002"]))
        assert r.status_code == 200, r.text
    assert len(neto.api_requests) == 3


async def test_in_flight_cap_per_store(app_factory, settings_factory, neto, auth, door):
    app = await app_factory(settings_factory(store_max_in_flight=1))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.hold_api()  # the first call holds the store's only slot until released
        held = asyncio.create_task(door(client, STORE, "GetItem", json={}, headers=invoker(auth)))
        await neto.api_arrived(1)
        try:
            # Waits its 1 s for the slot, which the held call never frees, then gives up.
            second = await door(client, STORE, "GetOrder", json={}, headers=invoker(auth))
            assert_refused(second, 429, "rate_limited")
            assert [seen.action for seen in neto.api_requests] == ["GetItem"]
        finally:
            neto.release_api()
            first = await held
    assert first.status_code == 200, first.text
    assert len(neto.api_requests) == 1


# -- Neto refusing the credentials -------------------------------------------------------


async def test_upstream_401_marks_the_store_reauth_required(app, client, neto, auth, door):
    await installed(client, neto)
    # The call is refused, and so is the confirming read with the same credentials.
    neto.api_responses.extend([fake.answer(401, b'{"Ack":"Error"}')] * 2)
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert_error(r, 502, "upstream_unauthorized")
    assert [seen.action for seen in neto.api_requests] == ["GetItem", "GetCurrencySettings"], (
        "a 401 is not retried; it is confirmed once with the verify read"
    )
    confirming = neto.api_requests[1]
    assert confirming.headers["x_secret_key"] == neto.api_requests[0].headers["x_secret_key"]
    r = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    assert r.json()["status"] == "reauth_required"
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=["*"]))
    assert_error(r, 409, "store_reauth_required")
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert_error(r, 409, "store_reauth_required")
    [event] = await audit_events(app, "install.reauth_required")
    assert event.store_id == STORE
    assert event.details == {"action": "GetItem", "upstream_status": 401}
    assert len(neto.api_requests) == 2


async def test_upstream_403_also_needs_reauth(client, neto, auth, door):
    await installed(client, neto)
    denied = b'{"Ack":"Error","Messages":{"Error":[{"Message":"Access denied"}]}}'
    neto.api_responses.extend([fake.answer(403, denied)] * 2)  # Neto's own envelope
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert_error(r, 502, "upstream_unauthorized")
    r = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    assert r.json()["status"] == "reauth_required"


async def test_one_callers_refused_body_does_not_lock_the_store_for_others(app, client, neto, auth):
    """A web firewall in front of the store answers 403 to one caller's body: that caller
    gets 502, the confirming read with the same credentials is accepted, and every other
    caller goes on being served. Repeated refusals confirm at most once per interval."""
    await installed(client, neto)
    hostile = b'{"Filter":{"SKU":["<script>"]}}'
    neto.refused_bodies.add(hostile)
    json_headers = {**invoker(auth), "Content-Type": "application/json"}
    for _ in range(3):
        r = await client.post(f"/invoke/{STORE}/GetItem", content=hostile, headers=json_headers)
        assert_error(r, 502, "upstream_unauthorized")
    verifies = [seen for seen in neto.api_requests if seen.action == "GetCurrencySettings"]
    assert len(verifies) == 1, "confirmations are rate-limited per store"

    r = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    assert r.json()["status"] == "active"
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
    assert r.status_code == 200, r.text
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=["*"]))
    assert r.status_code == 200, r.text
    assert await audit_events(app, "install.reauth_required") == []


# -- sizes, time, redirects, egress ------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_40_mib_answer_is_refused(client, neto, auth, chunked, door):
    await installed(client, neto)
    neto.api_responses.append(fake.huge(40 * MiB, chunked=chunked))
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert_error(r, 502, "upstream_response_too_large")
    assert len(neto.api_requests) == 1


async def test_slow_drip_answer_hits_the_deadline(app_factory, settings_factory, neto, auth, door):
    app = await app_factory(settings_factory(upstream_deadline_seconds=1.0))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(fake.slow_drip(every=0.1, count=200))
        started = time.monotonic()
        r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
        elapsed = time.monotonic() - started
    assert_error(r, 504, "upstream_timeout")
    assert elapsed < 1.5, f"the 1 s deadline took {elapsed:.2f} s"


async def test_redirect_is_not_followed(client, neto, auth, door):
    await installed(client, neto)
    neto.api_responses.append(fake.redirect("/elsewhere/do/WS/NetoAPI", 307))
    r = await door(client, STORE, "GetItem", json={}, headers=invoker(auth))
    assert "redirect" in assert_refused(r, 502, "upstream_unreachable")
    assert "location" not in r.headers
    assert len(neto.api_requests) == 1
    assert not neto.stray_requests


async def test_oversized_chunked_request_body_is_refused_before_it_is_all_read(
    client, neto, auth, door
):
    await installed(client, neto)
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(64):  # 64 MiB offered
            sent += 1
            yield b" " * MiB

    r = await door(client, STORE, "GetItem", content=body(), headers=invoker(auth))
    assert_error(r, 413, "payload_too_large")
    assert sent <= 10, f"the broker read {sent} MiB of an 8 MiB-capped body"
    assert not neto.api_requests


async def test_declared_oversized_body_is_refused_up_front(client, neto, auth, door):
    await installed(client, neto)
    r = await door(client, STORE, "GetItem", content=b" " * (8 * MiB + 1), headers=invoker(auth))
    assert_error(r, 413, "payload_too_large")
    assert not neto.api_requests


async def test_loopback_store_is_refused_at_connect_time(app_factory, settings_factory, neto, auth):
    app = await app_factory(settings_factory(egress_allow_private=False))
    async with await client_for(app) as client:
        neto.add_api_key_store("keyshop.example.com", "api-user", "k" * 40)
        await register_api_key_store(
            client, auth("installs:admin"), "K77", "keyshop.example.com", api_key="k" * 40
        )
        r = await client.post("/invoke/K77/GetItem", json={}, headers=invoker(auth, ["K77"]))
    assert_error(r, 502, "upstream_unreachable")
    assert "not one the broker may connect to" in r.json()["detail"]
    assert not neto.api_requests


@pytest.mark.parametrize("action", sorted(WRITE_ACTIONS))
async def test_every_write_action_needs_a_grant_and_is_never_retried(client, neto, auth, action):
    """All 25 writes, not a sample: a write let through without a grant, or retried after
    Neto answered (it may have applied it), is the bug this guards."""
    await installed(client, neto)
    r = await client.post(f"/invoke/{STORE}/{action}", json={}, headers=invoker(auth))
    assert_error(r, 403, "action_not_allowed")
    assert not neto.api_requests, f"{action} reached Neto without a grant"
    neto.api_responses.append(fake.answer(503, b"busy", "text/plain"))
    r = await client.post(
        f"/invoke/{STORE}/{action}", json={}, headers=invoker(auth, actions=[action])
    )
    assert r.status_code == 503 and r.content == b"busy", r.text
    assert [s.action for s in neto.api_requests] == [action], f"{action} was sent again"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("over", [-1, 0, 1], ids=["under", "at", "over"])
async def test_the_response_cap_is_exact(client, app, neto, auth, chunked, over):
    """32 MiB (the documented default) passes whole, to the byte; one byte more does not."""
    cap = app.state.services.settings.max_response_bytes
    assert cap == 32 * MiB
    await installed(client, neto)
    neto.api_responses.append(fake.huge(cap + over, chunked=chunked))
    r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
    if over > 0:
        assert_error(r, 502, "upstream_response_too_large")
    else:
        assert r.status_code == 200, r.text[:200]
        assert len(r.content) == cap + over
    assert len(neto.api_requests) == 1


@pytest.mark.parametrize("use_path", ["invoke", "bundle"])
async def test_a_revoke_stops_a_store_this_replica_has_cached(
    app_factory, settings_factory, neto, auth, use_path
):
    """The cache is not polled in this test (30 s): only the revoke's own invalidation can
    stop the cached credentials."""
    app = await app_factory(settings_factory(store_cache_seconds=30))
    async with await client_for(app) as client:
        await installed(client, neto)

        async def use() -> httpx.Response:
            if use_path == "bundle":
                headers = auth("credentials:read", stores=[STORE])
                return await client.get(f"/credentials/{STORE}", headers=headers)
            return await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))

        # Used until this replica holds a copy: the install's own change, polled late on a
        # loaded machine, may drop the first copy (as it must: the cache cannot tell).
        uses = 0
        while uses < 2 or len(app.state.services.store_cache) != 1:
            assert uses < 20, "the store is never cached"
            assert (await use()).status_code == 200
            uses += 1
        r = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
        assert r.status_code == 200, r.text
        assert_error(await use(), 410, "store_revoked")
    assert len(neto.api_requests) == (uses if use_path == "invoke" else 0)
