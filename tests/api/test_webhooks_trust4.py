"""Webhooks, trust round 4: what a database writer cannot get signed and delivered."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from service.config import allowed_host
from service.db import utcnow
from service.events.models import Event, Webhook, WebhookDelivery
from service.events.outbox import new_event_id
from service.events.subscriptions import _ctx, allow_listed
from tests.fakes.receiver import verify_signature
from tests.support import register_api_key_store

FAST = {
    "events_poll_seconds": 0.1,
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_seconds": 0.4,
    "webhook_timeout_seconds": 1,
}
DATA_KEYS = {"store_id", "store_domain", "auth_method", "status", "actor"}


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(**FAST))


async def subscribe(client, auth, url: str) -> dict[str, Any]:
    r = await client.post("/webhooks", json={"url": url}, headers=auth("installs:admin"))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def write_event_row(app: Any, webhook_id: str, data: Any, store_id: str = "W1") -> str:
    """What someone with write access to the database can do: an event row of their own,
    owed to the subscription, as `outbox.emit` would write it."""
    async with app.state.services.sessionmaker() as session:
        event = Event(event_id=new_event_id(), type="install.created", store_id=store_id,
                      occurred_at=utcnow(), data=data)  # fmt: skip
        session.add(event)
        await session.flush()
        assert event.seq is not None
        session.add(WebhookDelivery(webhook_id=webhook_id, seq=event.seq, store_id=store_id,
                                    state="pending", next_attempt_at=utcnow()))  # fmt: skip
        await session.commit()
        return event.event_id


async def test_only_the_known_event_fields_are_signed_and_delivered(app, client, auth, receiver):
    hook = await subscribe(client, auth, receiver.url)
    planted = {
        "store_id": "OTHER",  # the row says W1: the row's store is what is sent
        "store_domain": "w1.example.com",
        "auth_method": "oauth",
        "status": {"nested": "https://evil.example/status"},  # not text: dropped
        "actor": "neto",
        "next": "https://evil.example/steal",
        "access_token": "planted-secret-value",
    }
    event_id = await write_event_row(app, hook["id"], planted)

    [got] = await receiver.wait_for(1)
    assert verify_signature(hook["secret"], got.headers, got.body)
    assert got.event["id"] == event_id
    assert got.event["data"] == {
        "store_id": "W1",
        "store_domain": "w1.example.com",
        "auth_method": "oauth",
        "status": None,
        "actor": "neto",
    }
    assert set(got.event) == {"id", "type", "timestamp", "data"}
    for planted_text in (b"evil.example", b"planted-secret-value", b"OTHER", b"access_token"):
        assert planted_text not in got.body, got.body
    # The feed shows the same event the receiver got, byte for byte in its fields.
    feed = await client.get("/events", headers=auth("events:read"))
    assert feed.json()["events"] == [got.event]


async def test_a_row_whose_data_is_not_an_object_still_delivers_the_known_shape(
    app, client, auth, receiver
):
    hook = await subscribe(client, auth, receiver.url)
    await write_event_row(app, hook["id"], ["https://evil.example/steal"], store_id="W2")

    [got] = await receiver.wait_for(1)
    assert got.event["data"] == dict.fromkeys(DATA_KEYS) | {"store_id": "W2"}
    assert b"evil.example" not in got.body
    assert json.loads(got.body) == got.event


async def test_reads_show_receiver_urls_without_query_or_user_info(app, client, auth, receiver):
    secret_url = receiver.url + "?token=s3cret-receiver-token&x=1"
    created = await subscribe(client, auth, secret_url)
    assert created["url"] == receiver.url + "?…"
    read, admin = auth("installs:read"), auth("installs:admin")
    answers = [
        await client.get("/webhooks", headers=read),
        await client.get(f"/webhooks/{created['id']}", headers=read),
        await client.post(f"/webhooks/{created['id']}/enable", headers=admin),
        await client.get("/audit", headers=read),
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert "s3cret" not in answer.text, answer.text
    assert answers[1].json()["url"] == receiver.url + "?…"
    audited = [e for e in answers[3].json()["items"] if e["event"] == "webhook.created"]
    assert audited[0]["details"]["url"] == receiver.url + "?…"

    # Deliveries still go to the stored URL: only what is shown is redacted.
    await register_api_key_store(client, admin, "R1")
    [got] = await receiver.wait_for(1)
    assert got.event["data"]["store_id"] == "R1"


async def test_user_info_in_a_stored_url_is_never_shown(app, client, auth):
    """A row not written through the API (an older CLI, or the database itself)."""
    keyring = app.state.services.keyring
    async with app.state.services.sessionmaker() as session:
        session.add(Webhook(id="wh_stored", url="https://ops:pa55word@hooks.example:8443/in?k=v",
                            event_types=[], secret_sealed=keyring.seal(b"x", _ctx("wh_stored")),
                            key_id=keyring.primary, status="active", created_by="db"))  # fmt: skip
        await session.commit()
    r = await client.get("/webhooks/wh_stored", headers=auth("installs:read"))
    assert r.status_code == 200, r.text
    assert r.json()["url"] == "https://hooks.example:8443/in?…"
    assert "pa55word" not in r.text and "ops" not in r.text


@pytest.mark.parametrize(
    ("listed", "admitted"),
    [("127.0.0.1", False), ("127.0.0.1:{port}", True), ("127.0.0.1:1", False),
     ("localhost:{port}", False)],
    ids=["bare-host-default-port-only", "host-and-its-port", "another-port", "another-host"],
)  # fmt: skip
async def test_an_allow_listed_host_admits_only_its_listed_or_default_port(
    app_factory, settings_factory, neto, auth, receiver, listed, admitted
):
    port = urlsplit(receiver.url).port
    app = await app_factory(settings_factory(
        **FAST, egress_allow_private=False, webhook_allowed_hosts=listed.format(port=port),
    ))  # fmt: skip
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        hook = await subscribe(client, auth, receiver.url)
        await register_api_key_store(client, auth("installs:admin"), "P1")
        if admitted:
            [got] = await receiver.wait_for(1)
            assert got.event["data"]["store_id"] == "P1"
            return
        for _ in range(100):
            r = await client.get(
                f"/webhooks/{hook['id']}/deliveries", headers=auth("installs:read")
            )
            if r.json()["items"]:
                break
            await asyncio.sleep(0.05)
        assert r.json()["items"][0]["error"] == "egress refused", r.text
        assert receiver.received == []


@pytest.mark.parametrize(
    ("url", "hosts", "admitted"),
    [
        ("https://hooks.internal/in", {("hooks.internal", None)}, True),
        ("https://hooks.internal:443/in", {("hooks.internal", None)}, True),
        ("https://hooks.internal:8443/in", {("hooks.internal", None)}, False),
        ("http://hooks.internal/in", {("hooks.internal", None)}, True),
        ("http://hooks.internal:443/in", {("hooks.internal", None)}, False),
        ("https://hooks.internal:8443/in", {("hooks.internal", 8443)}, True),
        ("https://hooks.internal/in", {("hooks.internal", 8443)}, False),
        ("http://[::1]:8080/in", {("::1", 8080)}, True),
        ("http://[::1]:8081/in", {("::1", 8080)}, False),
        ("http://HOOKS.internal/in", {("hooks.internal", None)}, True),
        ("http://hooks.internal:99999/in", {("hooks.internal", None)}, False),
    ],
)
def test_allow_listed_matches_host_and_port(url, hosts, admitted):
    assert allow_listed(url, frozenset(hosts)) is admitted


@pytest.mark.parametrize(
    ("entry", "parsed"),
    [("Hooks.Internal", ("hooks.internal", None)),
     ("hooks.internal:8443", ("hooks.internal", 8443)), ("::1", ("::1", None)),
     ("[::1]:8080", ("::1", 8080)), ("[fd00::5]", ("fd00::5", None)),
     (" 10.0.0.5:80 ", ("10.0.0.5", 80))],
)  # fmt: skip
def test_allowed_host_entries(entry, parsed):
    assert allowed_host(entry) == parsed


@pytest.mark.parametrize(
    "entry", ["hooks.internal:0", "hooks.internal:x", "h:1/path", "u@h", ":80"]
)
def test_a_bad_allowed_host_entry_is_a_configuration_error(settings_factory, entry):
    with pytest.raises(ValueError, match="host"):
        settings_factory(webhook_allowed_hosts=entry)
