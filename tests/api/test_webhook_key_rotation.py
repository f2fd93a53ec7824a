"""A webhook's signing secret follows key rotation: created under k1, re-sealed under k2
by the rotation, it still signs deliveries once k1 is gone from the key ring."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from service.db import create_engine, create_sessionmaker
from service.events import subscriptions
from service.events.models import Webhook
from service.keys import rotation
from service.security.crypto import KeyRing, generate_key, key_id_of
from tests.fakes.receiver import verify_signature
from tests.support import ENC_KEY, register_api_key_store

OLD, NEW = f"k1:{ENC_KEY}", f"k2:{generate_key()}"
FAST = {"events_poll_seconds": 0.1, "webhook_retry_base_seconds": 0.05}


async def test_a_rotated_webhook_secret_still_signs_with_only_the_new_key(
    app_factory, settings_factory, receiver, auth
):
    settings = settings_factory(encryption_keys=f"{NEW},{OLD}", **FAST)
    engine = create_engine(settings)
    sessionmaker = create_sessionmaker(engine)
    try:
        async with sessionmaker() as session, session.begin():  # as a k1-only broker did
            webhook, secret = await subscriptions.create(
                session, KeyRing.parse(OLD), url=receiver.url, event_types=[],
                description=None, actor="test",
            )  # fmt: skip
        report = await rotation.rotate(
            sessionmaker, KeyRing.parse(f"{NEW},{OLD}"), subscriptions.ROTATION
        )
        assert report.ok and (report.total, report.rotated) == (1, 1), report
        async with sessionmaker() as session:
            row = (await session.execute(select(Webhook))).scalar_one()
        assert row.key_id == "k2" and key_id_of(row.secret_sealed) == "k2"
    finally:
        await engine.dispose()

    # k1 is removed: only k2 can open anything now.
    app = await app_factory(settings_factory(encryption_keys=NEW, **FAST))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        await register_api_key_store(client, auth("installs:admin"), "S1")
        [got] = await receiver.wait_for(1)
        log = await client.get(f"/webhooks/{webhook.id}/deliveries", headers=auth("installs:read"))
    assert verify_signature(secret, got.headers, got.body), "signed with the original secret"
    assert got.event["type"] == "install.created" and got.event["data"]["store_id"] == "S1"
    assert "unreadable" not in log.text, log.text
