"""`POST /webhooks/{id}/rotate-secret`: a new signing secret, and for the overlap window
every delivery carries a second signature with the replaced one, so a receiver switches
without rejecting a delivery; after the window (or with no overlap) only the new secret
signs. The replaced secret is sealed and follows key rotation like the current one."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.db import create_engine, create_sessionmaker
from service.events import subscriptions
from service.events.models import Webhook
from service.keys import rotation
from service.security.crypto import KeyRing, generate_key, key_id_of
from tests.fakes.receiver import verify_signature
from tests.support import ENC_KEY, assert_error, audit_rows, register_api_key_store

FAST = {"events_poll_seconds": 0.1, "webhook_retry_base_seconds": 0.05}
OLD, NEW = f"k1:{ENC_KEY}", f"k2:{generate_key()}"


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(**FAST))


async def subscribe(client, auth, url: str) -> dict[str, Any]:
    r = await client.post("/webhooks", json={"url": url}, headers=auth("installs:admin"))
    assert r.status_code == 201, r.text
    created: dict[str, Any] = r.json()
    return created


async def rotate(client, auth, hook_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/webhooks/{hook_id}/rotate-secret", json=body,
                          headers=auth("installs:admin", sub="ops-alice"))  # fmt: skip
    assert r.status_code == 200, r.text
    rotated: dict[str, Any] = r.json()
    return rotated


async def delivered(client, auth, receiver, store_id: str, n: int):
    await register_api_key_store(client, auth("installs:admin"), store_id)
    got = await receiver.wait_for(n)
    assert got[-1].event["data"]["store_id"] == store_id
    return got[-1]


async def test_during_the_overlap_both_secrets_verify_then_only_the_new(
    app, client, auth, receiver
):
    hook = await subscribe(client, auth, receiver.url)
    first = hook["secret"]
    rotated = await rotate(client, auth, hook["id"], overlap_seconds=3600)
    second = rotated["secret"]
    assert second.startswith("whsec_") and second != first
    until = datetime.fromisoformat(rotated["previous_secret_until"])
    assert abs(until - (datetime.now(UTC) + timedelta(hours=1))) < timedelta(minutes=1)
    listed = await client.get(f"/webhooks/{hook['id']}", headers=auth("installs:read"))
    assert second not in listed.text and first not in listed.text
    assert listed.json()["previous_secret_until"] == rotated["previous_secret_until"]

    got = await delivered(client, auth, receiver, "R1", 1)
    assert len(got.headers["webhook-signature"].split(" ")) == 2
    assert verify_signature(second, got.headers, got.body), "the new secret signs"
    assert verify_signature(first, got.headers, got.body), "the replaced one, in the overlap"

    third = (await rotate(client, auth, hook["id"], overlap_seconds=0))["secret"]
    got = await delivered(client, auth, receiver, "R2", 2)
    assert verify_signature(third, got.headers, got.body)
    assert not verify_signature(second, got.headers, got.body), "no overlap asked"
    assert not verify_signature(first, got.headers, got.body)
    assert got.headers["webhook-signature"].count("v1,") == 1

    rows = [r for r in await audit_rows(app) if r["event"] == "webhook.secret_rotated"]
    assert [(r["actor"], r["details"]) for r in rows] == [
        ("ops-alice", {"webhook_id": hook["id"], "overlap_seconds": 3600}),
        ("ops-alice", {"webhook_id": hook["id"], "overlap_seconds": 0}),
    ]
    everything = str(await audit_rows(app))
    assert not any(s in everything for s in (first, second, third))


async def test_the_replaced_secret_stops_signing_when_the_overlap_ends(app, client, auth, receiver):
    hook = await subscribe(client, auth, receiver.url)
    new = (await rotate(client, auth, hook["id"], overlap_seconds=1))["secret"]
    await asyncio.sleep(1.2)
    got = await delivered(client, auth, receiver, "R3", 1)
    assert verify_signature(new, got.headers, got.body)
    assert not verify_signature(hook["secret"], got.headers, got.body), "past its overlap"


async def test_rotation_needs_admin_a_known_webhook_and_a_bounded_overlap(client, auth, receiver):
    hook = await subscribe(client, auth, receiver.url)
    path = f"/webhooks/{hook['id']}/rotate-secret"
    r = await client.post(path, json={}, headers=auth("installs:read"))
    assert_error(r, 403, "forbidden")
    r = await client.post(
        "/webhooks/wh_nope/rotate-secret", json={}, headers=auth("installs:admin")
    )
    assert_error(r, 404, "not_found")
    for overlap in (-1, 7 * 86400 + 1, "soon"):
        r = await client.post(path, json={"overlap_seconds": overlap},
                              headers=auth("installs:admin"))  # fmt: skip
        assert_error(r, 422, "validation_error")
    r = await client.post(path, json={}, headers=auth("installs:admin"))  # the default: a day
    assert r.status_code == 200, r.text
    until = datetime.fromisoformat(r.json()["previous_secret_until"])
    assert abs(until - (datetime.now(UTC) + timedelta(days=1))) < timedelta(minutes=1)


async def test_key_rotation_reseals_the_replaced_secret_too(
    app_factory, settings_factory, receiver, auth
):
    settings = settings_factory(encryption_keys=f"{NEW},{OLD}", **FAST)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    try:
        async with sessionmaker() as session, session.begin():  # as a k1-only broker did
            webhook, first = await subscriptions.create(
                session, KeyRing.parse(OLD), url=receiver.url, event_types=[],
                description=None, actor="test",
            )  # fmt: skip
            _, second = await subscriptions.rotate_secret(
                session, KeyRing.parse(OLD), webhook.id, overlap_seconds=3600, actor="test"
            )
        report = await rotation.rotate(
            sessionmaker, KeyRing.parse(f"{NEW},{OLD}"), subscriptions.ROTATION
        )
        assert report.ok and (report.total, report.rotated) == (1, 1), report
        async with sessionmaker() as session:
            row = (await session.execute(select(Webhook))).scalar_one()
        assert row.previous_secret_sealed is not None
        assert row.key_id == "k2" and key_id_of(row.previous_secret_sealed) == "k2"
    finally:
        await engine.dispose()

    # k1 is gone: both secrets still open, and both sign.
    app = await app_factory(settings_factory(encryption_keys=NEW, **FAST))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        await register_api_key_store(client, auth("installs:admin"), "S1")
        [got] = await receiver.wait_for(1)
    assert verify_signature(second, got.headers, got.body)
    assert verify_signature(first, got.headers, got.body)
