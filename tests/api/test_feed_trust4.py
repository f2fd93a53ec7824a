"""`GET /events` honours the caller's `stores` claim: a token limited to store A never
reads store B's events or domain, not on a page, not after a long poll; `["*"]` reads
every store's; an event of no store is only for a token without the claim."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.events.models import Event
from service.events.outbox import new_event_id
from tests.support import register_api_key_store

A, B = "SA1", "SB2"
DOMAIN_A, DOMAIN_B = "store-a.example.com", "store-b.example.com"


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(events_poll_seconds=0.2))


async def feed(client, auth, stores: list[str] | None, **params: Any) -> dict[str, Any]:
    r = await client.get("/events", params=params, headers=auth("events:read", stores=stores))
    assert r.status_code == 200, r.text
    assert DOMAIN_B not in r.text or stores is None or "*" in stores or B in stores, r.text
    body: dict[str, Any] = r.json()
    return body


def stores_of(body: dict[str, Any]) -> list[str]:
    return [e["data"]["store_id"] for e in body["events"]]


async def storeless_event(app: Any) -> None:
    """An event about no store, written as the outbox writes rows."""
    async with app.state.services.sessionmaker() as session:
        session.add(Event(event_id=new_event_id(), type="install.created", store_id="",
                          data={"store_id": "", "status": "active", "actor": "ops"}))  # fmt: skip
        await session.commit()


async def test_a_token_limited_to_store_a_reads_only_store_a(app, client, auth):
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, A, DOMAIN_A)
    await register_api_key_store(client, admin, B, DOMAIN_B)
    assert (await client.delete(f"/installs/{B}", headers=admin)).status_code == 200
    assert (await client.delete(f"/installs/{A}", headers=admin)).status_code == 200
    await storeless_event(app)

    everything = await feed(client, auth, None)
    assert stores_of(everything) == [A, B, B, A, ""]
    assert stores_of(await feed(client, auth, ["*"])) == [A, B, B, A]
    only_a = await feed(client, auth, [A])
    assert stores_of(only_a) == [A, A]
    assert {e["data"]["store_domain"] for e in only_a["events"]} == {DOMAIN_A}
    assert stores_of(await feed(client, auth, [B, "nope"])) == [B, B]
    assert stores_of(await feed(client, auth, [])) == []

    # Paging one event at a time never lands on B's: the cursor moves over A's only.
    seen, cursor = [], None
    for _ in range(5):
        page = await feed(client, auth, [A], limit=1, **({"after": cursor} if cursor else {}))
        seen += stores_of(page)
        cursor = page["next_cursor"]
    assert seen == [A, A]


async def test_a_long_poll_is_not_answered_with_another_stores_event(client, auth):
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, A, DOMAIN_A)
    cursor = (await feed(client, auth, [A]))["next_cursor"]

    waiting = asyncio.create_task(feed(client, auth, [A], after=cursor, wait=1.5))
    await asyncio.sleep(0.3)
    await register_api_key_store(client, admin, B, DOMAIN_B)  # wakes the poll: not A's
    await asyncio.sleep(0.3)
    assert not waiting.done(), "B's event answered a poll limited to A"
    assert (await waiting)["events"] == []

    waiting = asyncio.create_task(feed(client, auth, [A], after=cursor, wait=5))
    await asyncio.sleep(0.3)
    assert (await client.delete(f"/installs/{A}", headers=admin)).status_code == 200
    got = await asyncio.wait_for(waiting, 5)
    assert [(e["type"], e["data"]["store_id"]) for e in got["events"]] == [("install.revoked", A)]
