"""Control characters in what a caller sends: refused up front with a clear code, on
both databases alike. PostgreSQL cannot store NUL at all: before these rules a NUL in an
audit or installs filter, a webhook's URL or description, or a token's `sub` reached the
database and came back as a 500 there (found by the fuzz test), while SQLite stored it."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from service.events.models import Webhook
from tests.hostile.support import footprint
from tests.support import assert_error, install_store

STORE = "N1"


@pytest.mark.parametrize("sub", ["orders\x00service", "orders\nservice", "orders\x9bservice",
                                 "orders\ud800service"])  # fmt: skip
async def test_a_token_whose_sub_is_not_text_gets_no_bundle(app, client, neto, token, sub):
    await install_store(client, neto, "shop.example.com", store_id=STORE)
    before = await footprint(app, neto)
    bad = token("credentials:read", stores=[STORE], sub=sub)
    r = await client.get(f"/credentials/{STORE}", headers={"Authorization": f"Bearer {bad}"})
    body = assert_error(r, 401, "unauthorized")
    assert body["request_id"] == r.headers["x-request-id"]
    assert "control characters" in body["detail"]
    assert await footprint(app, neto) == before  # no audit row: nothing was issued
    # A caller with a plain `sub` is served as ever.
    good = token("credentials:read", stores=[STORE], sub="orders-service")
    r = await client.get(f"/credentials/{STORE}", headers={"Authorization": f"Bearer {good}"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("path", "scope"),
    [
        ("/audit?actor=orders%00service", "installs:read"),
        ("/audit?store_id=N1%00", "installs:read"),
        ("/audit?event=bundle.issued%0A", "installs:read"),
        ("/installs?q=shop%00", "installs:read"),
    ],
)
async def test_a_filter_with_a_control_character_is_a_422(client, auth, path, scope):
    r = await client.get(path, headers=auth(scope))
    body = assert_error(r, 422, "validation_error")
    assert body["request_id"] == r.headers["x-request-id"]
    assert "pattern" in body["detail"]
    # The same filter without it is an ordinary (empty) page.
    r = await client.get(path.replace("%00", "").replace("%0A", ""), headers=auth(scope))
    assert r.status_code == 200 and r.json()["items"] == []


@pytest.mark.parametrize(
    "webhook",
    [
        {"url": "https://hooks.example.com/in\x00x"},
        {"url": "https://hooks.example.com/in", "description": "sync\x00"},
        {"url": "https://hooks.example.com/in", "description": "line\r\nbreak"},
    ],
)
async def test_a_webhook_with_a_control_character_is_refused_and_not_stored(
    app_factory, settings_factory, auth, webhook
):
    app = await app_factory(settings_factory(webhook_hosts="hooks.example.com"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        r = await client.post("/webhooks", json=webhook, headers=auth("installs:admin"))
        body = assert_error(r, 422, "validation_error")
        assert body["request_id"] == r.headers["x-request-id"]
        async with app.state.services.sessionmaker() as session:
            count = await session.execute(select(func.count()).select_from(Webhook))
            assert count.scalar_one() == 0
        plain = {"url": "https://hooks.example.com/in", "description": "sync"}
        r = await client.post("/webhooks", json=plain, headers=auth("installs:admin"))
        assert r.status_code == 201, r.text
