"""Webhooks, trust round 4: what a database writer cannot get signed and delivered."""

from __future__ import annotations

import json
from typing import Any

import pytest

from service.db import utcnow
from service.events.models import Event, WebhookDelivery
from service.events.outbox import new_event_id
from tests.fakes.receiver import verify_signature

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
