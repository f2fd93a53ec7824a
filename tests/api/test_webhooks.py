"""Webhooks end to end through the app: subscriptions, signed deliveries verified by an
independent HMAC, retries with backoff in order, failing then re-enabled with replay, the
host allow-list and the delivery log."""

from __future__ import annotations

import asyncio
import itertools
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.events.signing import new_secret, signed_headers
from tests.fakes.receiver import Receiver, verify_signature
from tests.support import assert_error, register_api_key_store

FAST = {
    "events_poll_seconds": 0.1,
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_seconds": 0.4,
    "webhook_timeout_seconds": 1,
}


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(**FAST))


async def subscribe(client, auth, url: str, **body: Any) -> dict[str, Any]:
    r = await client.post("/webhooks", json={"url": url, **body}, headers=auth("installs:admin"))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def attempts(client, auth, webhook_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/webhooks/{webhook_id}/deliveries", headers=auth("installs:read"))
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))  # oldest first


async def logged(client, auth, hook_id: str) -> list[dict[str, Any]]:
    """The subscription's delivery log once it holds an attempt (it is written after the
    receiver answers, so it may trail what the receiver saw)."""
    for _ in range(100):
        log = await attempts(client, auth, hook_id)
        if log:
            return log
        await asyncio.sleep(0.05)
    raise AssertionError(f"no delivery attempt was logged for {hook_id}")


async def test_delivery_is_signed_per_standard_webhooks(client, auth, receiver):
    hook = await subscribe(client, auth, receiver.url, description="sync")
    assert hook["secret"].startswith("whsec_") and hook["status"] == "active"
    listed = await client.get("/webhooks", headers=auth("installs:read"))
    assert hook["secret"] not in listed.text and listed.json()["items"][0]["id"] == hook["id"]
    await register_api_key_store(client, auth("installs:admin"), "S1")

    [got] = await receiver.wait_for(1)
    assert verify_signature(hook["secret"], got.headers, got.body)
    assert got.event["type"] == "install.created" and got.event["data"]["store_id"] == "S1"
    assert got.headers["webhook-id"] == got.event["id"]
    feed = await client.get("/events", headers=auth("events:read"))
    assert feed.json()["events"][0] == got.event
    tampered = got.body.replace(b'"S1"', b'"S2"')
    assert not verify_signature(hook["secret"], got.headers, tampered)
    other = await subscribe(client, auth, receiver.url)
    assert not verify_signature(other["secret"], got.headers, got.body)


def test_the_receiver_refuses_a_timestamp_outside_the_five_minute_tolerance():
    """The receiver every "signed" test verifies with holds the broker to the spec's
    replay window: a delivery signed with a stale (or future) timestamp fails them."""
    secret = new_secret()
    body = b'{"id":"evt_1"}'
    now = datetime.now(UTC).replace(microsecond=0)
    for offset, accepted in ((0, True), (-300, True), (300, True), (-301, False),
                             (301, False), (-3600, False), (3600, False)):  # fmt: skip
        headers = signed_headers(secret, "evt_1", body, now + timedelta(seconds=offset))
        assert verify_signature(secret, headers, body, now=now.timestamp()) is accepted, offset


async def test_a_retry_is_signed_with_its_own_send_time(app_factory, settings_factory, neto, auth):
    # A retry at least a second after the first attempt (the timestamp is in seconds).
    app = await app_factory(settings_factory(
        **{**FAST, "webhook_retry_base_seconds": 2.4, "webhook_retry_max_seconds": 2.4},
    ))  # fmt: skip
    receiver = await Receiver(fail_first=1).start()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
        ) as client:
            hook = await subscribe(client, auth, receiver.url)
            await register_api_key_store(client, auth("installs:admin"), "T1")
            first, retry = await receiver.wait_for(2)
    finally:
        await receiver.stop()
    assert first.headers["webhook-id"] == retry.headers["webhook-id"]
    sent = [int(got.headers["webhook-timestamp"]) for got in (first, retry)]
    assert sent[1] > sent[0], f"the retry carries the first attempt's timestamp: {sent}"
    for got, stamp in ((first, sent[0]), (retry, sent[1])):
        assert 0 <= got.wall - stamp < 3, f"signed {got.wall - stamp:.1f} s before it arrived"
        assert verify_signature(hook["secret"], got.headers, got.body)


async def test_receiver_failing_three_times_gets_everything_in_order(client, auth, receiver):
    receiver.fail_first = 3
    hook = await subscribe(client, auth, receiver.url)
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, "S1")
    await client.delete("/installs/S1", headers=admin)

    got = await receiver.wait_for(5)
    assert [r.event["type"] for r in got] == ["install.created"] * 4 + ["install.revoked"]
    for _ in range(50):
        log = await attempts(client, auth, hook["id"])
        if len(log) == 5:
            break
        await asyncio.sleep(0.05)
    assert [(a["attempt"], a["status_code"], a["ok"]) for a in log] == [
        (1, 503, False), (2, 503, False), (3, 503, False), (4, 200, True), (1, 200, True),
    ]  # fmt: skip
    assert [a["error"] for a in log[:3]] == ["HTTP 503"] * 3
    assert all(a["latency_ms"] >= 0 for a in log)
    gaps = [b.at - a.at for a, b in itertools.pairwise(got[:4])]
    assert gaps[2] > gaps[0] * 1.2, f"no backoff between retries: {gaps}"


async def test_receiver_down_is_retried_then_failing_then_replayed(
    app_factory, settings_factory, neto, client: Any, auth
) -> None:
    app = await app_factory(settings_factory(**FAST, webhook_retry_window_seconds=0.6))
    import httpx

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        down = Receiver()
        await down.start()
        url = down.url
        await down.stop()  # nothing listens there now
        hook = await subscribe(client, auth, url)
        admin = auth("installs:admin")
        await register_api_key_store(client, admin, "D1")
        for _ in range(100):
            r = await client.get(f"/webhooks/{hook['id']}", headers=auth("installs:read"))
            if r.json()["status"] == "failing":
                break
            await asyncio.sleep(0.05)
        assert r.json()["status"] == "failing" and r.json()["failing_since"]
        log = await attempts(client, auth, hook["id"])
        assert len(log) >= 3 and all(a["status_code"] is None for a in log)
        assert {a["error"] for a in log} == {"connection failed"}
        await register_api_key_store(client, admin, "D2")  # missed while failing
        await asyncio.sleep(0.3)
        assert len(await attempts(client, auth, hook["id"])) == len(log), "failing yet retried"

        # The receiver is back on the same port; the operator re-enables: replay, in order.
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        back = Receiver()
        from aiohttp import web

        back._runner = None
        app_ = web.Application()
        app_.router.add_post("/hook", back._handle)
        runner = web.AppRunner(app_, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            r = await client.post(f"/webhooks/{hook['id']}/enable", headers=admin)
            assert r.status_code == 200 and r.json()["status"] == "active", r.text
            got = await back.wait_for(2)
            assert [g.event["data"]["store_id"] for g in got] == ["D1", "D2"]
        finally:
            await runner.cleanup()


async def test_allow_list_admits_private_receivers_and_only_them(
    app_factory, settings_factory, neto, auth, receiver
) -> None:
    import httpx

    app = await app_factory(settings_factory(
        **FAST, egress_allow_private=False,
        webhook_allowed_hosts=f"127.0.0.1:{urlsplit(receiver.url).port}",
    ))  # fmt: skip
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        listed = await subscribe(client, auth, receiver.url)
        unlisted = await subscribe(client, auth, receiver.url.replace("127.0.0.1", "localhost"))
        await register_api_key_store(client, auth("installs:admin"), "A1")
        [got] = await receiver.wait_for(1)
        assert got.headers["webhook-id"]
        # The delivery log is written after the receiver answered: wait for both rows.
        log = await logged(client, auth, unlisted["id"])
        assert log[0]["error"] == "egress refused" and log[0]["status_code"] is None
        assert (await logged(client, auth, listed["id"]))[0]["ok"] is True
        await asyncio.sleep(0.2)
        assert len(receiver.received) == 1, "an unlisted private host was reached"


async def test_redirects_are_not_followed(client, auth, receiver):
    receiver.status = 307
    hook = await subscribe(client, auth, receiver.url)
    await register_api_key_store(client, auth("installs:admin"), "X1")
    await receiver.wait_for(1)
    log = await logged(client, auth, hook["id"])
    assert log[0]["status_code"] == 307 and log[0]["ok"] is False


async def test_subscriptions_validate_and_need_admin(client, auth, receiver):
    admin = auth("installs:admin")
    for body, status in (
        ({"url": "ftp://x.example/"}, 400),
        ({"url": "http://user:pw@x.example/"}, 400),
        ({"url": receiver.url, "event_types": ["install.exploded"]}, 422),
        ({"url": receiver.url, "secret": "mine"}, 422),
    ):
        r = await client.post("/webhooks", json=body, headers=admin)
        assert_error(r, status, "validation_error")
    r = await client.post("/webhooks", json={"url": receiver.url}, headers=auth("installs:read"))
    assert_error(r, 403, "forbidden")
    hook = await subscribe(client, auth, receiver.url, event_types=["install.revoked"])
    await register_api_key_store(client, admin, "F1")  # not a revoke: not delivered
    await client.delete("/installs/F1", headers=admin)
    [got] = await receiver.wait_for(1)
    assert got.event["type"] == "install.revoked"
    r = await client.delete(f"/webhooks/{hook['id']}", headers=auth("installs:read"))
    assert_error(r, 403, "forbidden")
    assert (await client.delete(f"/webhooks/{hook['id']}", headers=admin)).status_code == 204
    r = await client.get(f"/webhooks/{hook['id']}", headers=admin)
    assert_error(r, 404, "not_found")
