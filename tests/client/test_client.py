"""The client package against a running broker, in both flavours: typed bundles and
answers, refusals as their exception classes, the feed's long poll, and retries only
where repeating a request is safe."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
import pytest
from neto_broker_client import AsyncBrokerClient, Bundle, Retries
from neto_broker_client.errors import (
    ActionNotAllowed,
    Forbidden,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    StoreNotAllowed,
    StoreRevoked,
    UnexpectedResponse,
    ValidationFailed,
)

from tests.fakes import neto as fake
from tests.support import CLIENT_ID, free_port, install_store, register_api_key_store

STORE, DOMAIN = "N1001", "shop.example.com"
KEY_STORE, KEY_DOMAIN, API_KEY = "K77", "keyshop.example.com", "k" * 40


async def api_key_store(live, neto, auth) -> None:
    neto.add_api_key_store(KEY_DOMAIN, "api-user", API_KEY)
    async with httpx.AsyncClient(base_url=live.url) as admin:
        await register_api_key_store(
            admin, auth("installs:admin"), KEY_STORE, KEY_DOMAIN, api_key=API_KEY
        )


async def test_credentials_are_a_typed_bundle_of_the_stores_token(flavour, live, neto, token):
    async with httpx.AsyncClient(base_url=live.url) as browser:
        got = await install_store(browser, neto, DOMAIN, store_id=STORE)
    client = flavour.client(token("credentials:read", stores=[STORE]))

    bundle = await flavour.call(client, "credentials", STORE)

    assert isinstance(bundle, Bundle)
    assert (bundle.store_id, bundle.store_domain, bundle.auth_method) == (STORE, DOMAIN, "oauth")
    assert bundle.bundle_id.startswith("bnd_")
    assert bundle.headers == {"X_ACCESS_KEY": CLIENT_ID, "X_SECRET_KEY": got["access_token"]}
    assert bundle.api_url.endswith(f"/{DOMAIN}/do/WS/NetoAPI")
    assert bundle.expires_at - bundle.issued_at == timedelta(seconds=300)
    assert bundle.issued_at.tzinfo is not None
    assert got["access_token"] not in repr(bundle), "the bundle's repr shows the secret"


async def test_invoke_returns_netos_answer_with_the_rate_limit_parsed(flavour, live, neto, auth):
    await api_key_store(live, neto, auth)
    client = flavour.client(auth("invoke", stores=[KEY_STORE])["Authorization"][7:])

    answer = await flavour.call(client, "invoke", KEY_STORE, "GetItem", {"Filter": {"SKU": ["A"]}})

    assert answer.status == 200 and answer.ok
    assert answer.body["Ack"] == "Success"
    assert answer.replayed is False
    assert answer.request_id
    limit = answer.rate_limit
    assert limit is not None and limit.policy == "interactive"
    assert limit.window == 60 and limit.quota is not None and limit.quota > 0
    assert limit.remaining is not None and 0 <= limit.remaining < limit.quota
    [seen] = neto.api_requests
    assert seen.action == "GetItem" and seen.json() == {"Filter": {"SKU": ["A"]}}
    assert seen.headers["netoapi_key"] == API_KEY


async def test_a_repeated_idempotency_key_is_answered_from_the_first_write(
    flavour, live, neto, auth, token
):
    await api_key_store(live, neto, auth)
    client = flavour.client(token("invoke", stores=[KEY_STORE], actions=["AddItem"]))
    body = {"Item": [{"SKU": "NEW-1"}]}

    first = await flavour.call(client, "invoke", KEY_STORE, "AddItem", body, "add-new-1")
    again = await flavour.call(client, "invoke", KEY_STORE, "AddItem", body, "add-new-1")

    assert first.status == again.status == 200
    assert (first.replayed, again.replayed) == (False, True)
    assert again.body == first.body
    assert len(neto.api_requests) == 1, "the repeat reached Neto"


async def test_refusals_raise_the_class_of_their_code(flavour, live, neto, auth, token):
    await api_key_store(live, neto, auth)

    other_store = flavour.client(token("credentials:read", stores=["N9"]))
    with pytest.raises(StoreNotAllowed) as refused:
        await flavour.call(other_store, "credentials", KEY_STORE)
    error = refused.value
    assert (error.code, error.status) == ("store_not_allowed", 403)
    assert error.message and error.request_id and error.retry_after is None

    no_scope = flavour.client(token("invoke", stores=[KEY_STORE]))
    with pytest.raises(Forbidden) as refused_scope:
        await flavour.call(no_scope, "credentials", KEY_STORE)
    assert refused_scope.value.status == 403
    with pytest.raises(ActionNotAllowed):  # a write, and the token has no `actions` claim
        await flavour.call(no_scope, "invoke", KEY_STORE, "AddItem", {})
    with pytest.raises(ValidationFailed):
        await flavour.call(flavour.client(token("events:read")), "events_page", "bm90LWEtY3Vyc29y")

    async with httpx.AsyncClient(base_url=live.url) as admin:
        r = await admin.delete(f"/installs/{KEY_STORE}", headers=auth("installs:admin"))
        assert r.status_code == 200, r.text
    reader = flavour.client(token("credentials:read", stores=[KEY_STORE]))
    with pytest.raises(StoreRevoked) as revoked:
        await flavour.call(reader, "credentials", KEY_STORE)
    assert revoked.value.status == 410
    assert neto.api_requests == [], "a refused call reached Neto"


async def test_events_long_poll_waits_for_the_next_event(flavour, live, auth, token):
    admin = auth("installs:admin")
    async with httpx.AsyncClient(base_url=live.url) as http:
        await register_api_key_store(http, admin, "E1")
        client = flavour.client(token("events:read"))
        caught_up = flavour.client(token("events:read")).events(wait=0)
        assert [e.data.store_id for e in await flavour.take(caught_up, 10)] == ["E1"]
        assert caught_up.cursor is not None

        stream = client.events(after=caught_up.cursor, wait=10)
        waiting = asyncio.create_task(flavour.take(stream, 1))
        await asyncio.sleep(0.5)
        assert not waiting.done(), "the long poll answered before an event committed"
        await register_api_key_store(http, admin, "E2")
        committed = time.monotonic()
        [event] = await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - committed < 2, "the waiting stream was not woken promptly"
    assert event.type == "install.created" and event.id.startswith("evt_")
    assert (event.data.store_id, event.data.auth_method) == ("E2", "api_key")
    assert event.timestamp.tzinfo is not None


async def test_a_read_is_retried_after_a_503_and_a_write_without_a_key_is_not(
    flavour, live, neto, auth, counting, db_faults
):
    await api_key_store(live, neto, auth)

    # The broker's own 503: its database fails once under the bundle's request.
    tok = counting("credentials:read", stores=[KEY_STORE])
    db_faults.fail(r"^INSERT INTO audit_events", times=1)
    bundle = await flavour.call(flavour.client(tok), "credentials", KEY_STORE)
    assert db_faults.refused, "the fault did not fire"
    assert bundle.store_id == KEY_STORE and tok.calls == 2
    once = counting("credentials:read", stores=[KEY_STORE])
    db_faults.fail(r"^INSERT INTO audit_events", times=1)
    with pytest.raises(ServiceUnavailable):
        await flavour.call(
            flavour.client(once, retries=Retries(attempts=1)), "credentials", KEY_STORE
        )
    assert once.calls == 1

    # Neto's 503 passed through: a read is sent again, a write without a key is not.
    tok = counting("invoke", stores=[KEY_STORE], actions=["GetItem", "AddItem"])
    client = flavour.client(tok)
    neto.api_responses.append(fake.answer(503, b'{"Ack":"Error"}'))
    read = await flavour.call(client, "invoke", KEY_STORE, "GetItem", {})
    assert read.status == 200 and len(neto.api_requests) == 2 and tok.calls == 2
    neto.api_responses.append(fake.answer(503, b'{"Ack":"Error"}'))
    write = await flavour.call(client, "invoke", KEY_STORE, "AddItem", {"Item": []})
    assert write.status == 503 and len(neto.api_requests) == 3 and tok.calls == 3
    # With a key the broker sends it at most once, so the client may ask again.
    neto.api_responses.append(fake.answer(503, b'{"Ack":"Error"}'))
    keyed = await flavour.call(client, "invoke", KEY_STORE, "AddItem", {"Item": []}, "k-1")
    assert keyed.status == 503 and tok.calls == 5, "a keyed write was not asked again"
    assert keyed.replayed is True and len(neto.api_requests) == 4


async def test_a_4xx_is_never_retried_and_retry_after_is_reported(
    flavour, live, neto, auth, counting
):
    await api_key_store(live, neto, auth)
    tok = counting("invoke", stores=[KEY_STORE])
    neto.api_responses.append(fake.answer(429, b"slow down"))
    with pytest.raises(RateLimited) as limited:
        await flavour.call(flavour.client(tok), "invoke", KEY_STORE, "GetItem", {})
    assert limited.value.status == 429 and limited.value.retry_after == 60
    assert tok.calls == 1 and len(neto.api_requests) == 1


async def test_connection_failures_retry_reads_only(flavour, counting):
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    read = counting("credentials:read", stores=[STORE])
    with pytest.raises(httpx.ConnectError):
        await flavour.call(flavour.client(read, base_url=nowhere), "credentials", STORE)
    assert read.calls == 3
    write = counting("invoke", stores=[STORE], actions=["AddItem"])
    with pytest.raises(httpx.ConnectError):
        await flavour.call(flavour.client(write, base_url=nowhere), "invoke", STORE, "AddItem")
    assert write.calls == 1


async def test_an_answer_without_the_envelope_is_an_unexpected_response(
    flavour, live, neto_server, token
):
    reader = token("credentials:read", stores=[STORE])
    # Not a broker at all (the fake Neto's catch-all 404): no X-Broker-Error.
    with pytest.raises(UnexpectedResponse) as unexpected:
        await flavour.call(flavour.client(reader, base_url=neto_server.url), "credentials", STORE)
    assert (unexpected.value.code, unexpected.value.status) == ("unexpected_response", 404)
    # The broker's own 404 for a route it does not have is its envelope.
    with pytest.raises(NotFound):
        await flavour.call(flavour.client(reader, base_url=live.url + "/v9"), "credentials", STORE)


def test_retry_after_is_honoured_within_its_bound():
    policy = Retries(attempts=3, backoff=0.1, max_delay=5)
    assert policy.delay(1, 2.0) == 2.0, "the broker's Retry-After is waited"
    assert policy.delay(1, 6.0) is None, "a Retry-After over max_delay gives up at once"
    assert policy.delay(3, None) is None and policy.delay(3, 1.0) is None, "no try is left"
    first, second = policy.delay(1, None), policy.delay(2, None)
    assert first is not None and 0.05 <= first <= 0.1
    assert second is not None and 0.1 <= second <= 0.2


async def test_an_async_token_source_is_awaited_before_every_request(live, token):
    issued: list[str] = []

    async def fresh_token() -> str:  # e.g. read from a vault with an async client
        issued.append(token("events:read", sub=f"svc-{len(issued)}"))
        return issued[-1]

    async with AsyncBrokerClient(live.url, fresh_token) as client:
        first = await client.events_page()
        await client.events_page(first.next_cursor)
    assert len(issued) == 2, "the token was not asked for before each request"
