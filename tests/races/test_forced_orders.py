"""Deterministic twins of the race tests: the orders those races hit only sometimes,
forced with the fake's and the request body's own gates instead of timing.

An invoke reads the store's credentials, then waits (for its body, a slot, a retry's
backoff) before each attempt. Whatever changed the store on this replica meanwhile must
be seen before the attempt: a revoked store is not called (410), a reinstalled one is
called with its new token. Neto's record of what arrived is the witness."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response

from tests.fakes import neto as fake
from tests.support import install_store, start_install

STORE, DOMAIN = "N1001", "shop.example.com"


def busy_until(gate: threading.Event) -> fake.Handler:
    """A first attempt held by the fake until the test opens `gate`, then answered 503
    (busy), which a read retries."""

    async def handler(request: Request) -> Response:
        await fake.released(gate)
        return await fake.answer(503, b"busy", "text/plain")(request)

    return handler


async def test_an_invoke_that_read_the_store_before_a_revoke_is_not_sent_after_it(
    client, neto, auth
):
    """The invoke reads the store, then waits for its own body; the revoke answers
    meanwhile; the body arrives: the invoke is refused, and Neto never sees it."""
    await install_store(client, neto, DOMAIN, store_id=STORE)
    body_wanted, body_sent = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        body_wanted.set()  # the broker reads the body after the store's credentials
        await body_sent.wait()
        yield b"{}"

    invoke = asyncio.create_task(client.post(
        f"/invoke/{STORE}/GetItem", content=body(),
        headers={**auth("invoke", stores=[STORE]), "content-type": "application/json"},
    ))  # fmt: skip
    try:
        await asyncio.wait_for(body_wanted.wait(), 10)
        r = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
        assert r.status_code == 200, r.text
    finally:
        body_sent.set()
    r = await invoke
    assert r.status_code == 410 and r.json()["error"] == "store_revoked", r.text
    assert neto.api_requests == [], "sent upstream after the revoke answered"


async def test_a_retry_due_after_a_revoke_answered_is_not_sent(client, neto, auth):
    await install_store(client, neto, DOMAIN, store_id=STORE)
    revoked = threading.Event()
    neto.api_responses.append(busy_until(revoked))
    invoke = asyncio.create_task(
        client.post(f"/invoke/{STORE}/GetItem", json={}, headers=auth("invoke", stores=[STORE]))
    )
    try:
        await neto.api_arrived(1)  # the first attempt, held
        r = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
        assert r.status_code == 200, r.text
    finally:
        revoked.set()  # the first attempt is answered "busy": a retry falls due
    r = await invoke
    assert r.status_code == 410 and r.json()["error"] == "store_revoked", r.text
    assert len(neto.api_requests) == 1, "the retry was sent with the revoked token"


async def test_a_retry_due_after_a_reinstall_carries_the_new_token(client, neto, auth):
    old = (await install_store(client, neto, DOMAIN, store_id=STORE))["access_token"]
    pending = await start_install(client, DOMAIN)
    reinstalled = threading.Event()
    neto.api_responses.append(busy_until(reinstalled))
    invoke = asyncio.create_task(
        client.post(f"/invoke/{STORE}/GetItem", json={}, headers=auth("invoke", stores=[STORE]))
    )
    try:
        await neto.api_arrived(1)
        code = neto.authorize(DOMAIN, store_id=STORE)  # from now on Neto refuses `old`
        new = neto.codes[code]["access_token"]
        r = await client.get("/oauth/callback", params={"state": pending["state"], "code": code})
        assert r.status_code == 200, r.text
    finally:
        reinstalled.set()
    r = await invoke
    assert r.status_code == 200, r.text
    sent = [seen.headers["x_secret_key"] for seen in neto.api_requests]
    assert sent == [old, new], "the retry did not carry the reinstalled token"
