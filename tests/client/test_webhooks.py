"""`verify_webhook` on real deliveries: the broker's worker posts a signed event to a
receiver on loopback; the client accepts it and refuses every forgery of it."""

from __future__ import annotations

import time

import httpx
import pytest
from neto_broker_client import Event, WebhookVerificationError, verify_webhook

from tests.support import register_api_key_store


async def delivery(live, auth, receiver):
    """Subscribes the receiver, installs a store, and returns (secret, the delivery)."""
    async with httpx.AsyncClient(base_url=live.url) as admin:
        r = await admin.post(
            "/webhooks", json={"url": receiver.url}, headers=auth("installs:admin")
        )
        assert r.status_code == 201, r.text
        await register_api_key_store(admin, auth("installs:admin"), "W1")
    [got] = await receiver.wait_for(1)
    return r.json()["secret"], got


async def test_a_real_delivery_verifies_and_forgeries_are_refused(live, auth, receiver):
    secret, got = await delivery(live, auth, receiver)

    event = verify_webhook(secret, got.headers, got.body)
    assert isinstance(event, Event)
    assert (event.type, event.data.store_id) == ("install.created", "W1")
    assert event.id == got.headers["webhook-id"]
    # Headers as a framework hands them over (any case), the body as text: still verified.
    upper = {k.upper(): v for k, v in got.headers.items()}
    assert verify_webhook(secret, upper, got.body.decode()).id == event.id

    forgeries = {
        "another body": (secret, got.headers, got.body.replace(b'"W1"', b'"W2"')),
        "another secret": ("whsec_" + "A" * 43 + "=", got.headers, got.body),
        "another id": (secret, {**got.headers, "webhook-id": "evt_other"}, got.body),
        "another timestamp": (
            secret,
            {**got.headers, "webhook-timestamp": str(int(got.headers["webhook-timestamp"]) + 1)},
            got.body,
        ),
        "no signature": (secret, {**got.headers, "webhook-signature": "v1,"}, got.body),
        "another scheme": (
            secret,
            {
                **got.headers,
                "webhook-signature": got.headers["webhook-signature"].replace("v1,", "v2,"),
            },
            got.body,
        ),
    }
    for name, (key, headers, body) in forgeries.items():
        with pytest.raises(WebhookVerificationError):
            verify_webhook(key, headers, body)
            pytest.fail(f"a forgery ({name}) was accepted")


async def test_a_stale_or_future_delivery_is_refused(live, auth, receiver):
    secret, got = await delivery(live, auth, receiver)
    stamp = int(got.headers["webhook-timestamp"])
    assert abs(time.time() - stamp) < 60
    verify_webhook(secret, got.headers, got.body, now=stamp + 299)
    for now in (stamp + 301, stamp - 301):  # a captured delivery played later, or early
        with pytest.raises(WebhookVerificationError, match="tolerance"):
            verify_webhook(secret, got.headers, got.body, now=now)
    missing = {k: v for k, v in got.headers.items() if k != "webhook-timestamp"}
    with pytest.raises(WebhookVerificationError, match="webhook-timestamp"):
        verify_webhook(secret, missing, got.body)
