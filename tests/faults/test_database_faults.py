"""The database failing under the broker: mid-callback, mid-bundle, down and back.
Nothing half-written, no state burned, no code exchanged twice, no secret in an error,
and recovery without a restart."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from sqlalchemy import select

from service.audit.models import AuditEvent
from service.installs.models import Install
from service.oauth.models import PendingInstall
from tests.support import CLIENT_SECRET, install_store, migrate, start_install

DOMAIN = "shop.example.com"


async def rows(app, model):
    async with app.state.services.sessionmaker() as session:
        return list((await session.execute(select(model))).scalars())


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in (CLIENT_SECRET, *secrets):
        assert secret not in text, "a secret reached an error response"


@pytest.mark.parametrize(
    "pattern",
    [r"^INSERT INTO installs", r"^UPDATE pending_installs SET consumed_at", r"^INSERT INTO audit"],
    ids=["upsert", "consume", "audit"],
)
async def test_a_failure_while_storing_the_install_keeps_the_state_and_writes_nothing(
    client, app, neto, db_faults, pattern
):
    q = await start_install(client, DOMAIN)
    first = neto.authorize(DOMAIN, store_id="N1001")
    token = neto.codes[first]["access_token"]
    db_faults.fail(pattern)
    r = await client.get("/oauth/callback", params={"state": q["state"], "code": first})
    db_faults.heal()

    assert db_faults.refused, "the fault fired"
    assert r.status_code == 503 and r.headers["x-broker-error"] == "service_unavailable"
    assert r.headers["content-type"].startswith("text/html")
    assert_no_secret(r.text, token, first, q["state"])
    assert await rows(app, Install) == [], "no half-written install"
    pending = (await rows(app, PendingInstall))[0]
    assert pending.consumed_at is None and pending.claimed_at is None, "the state is not burned"

    # The same code is never exchanged twice...
    again = await client.get("/oauth/callback", params={"state": q["state"], "code": first})
    assert again.status_code == 400 and again.headers["x-broker-error"] == "invalid_state"
    assert [t.form["code"] for t in neto.token_requests] == [first]
    # ...but the merchant can approve again on the same state, and the install completes.
    second = neto.authorize(DOMAIN, store_id="N1001")
    done = await client.get("/oauth/callback", params={"state": q["state"], "code": second})
    assert done.status_code == 200, done.text
    [install] = await rows(app, Install)
    assert install.status == "active"
    assert [t.form["code"] for t in neto.token_requests] == [first, second]


async def test_a_database_down_before_the_claim_exchanges_nothing(client, app, neto, db_faults):
    q = await start_install(client, DOMAIN)
    code = neto.authorize(DOMAIN, store_id="N1001")
    db_faults.fail()
    r = await client.get("/oauth/callback", params={"state": q["state"], "code": code})
    db_faults.heal()
    assert r.status_code == 503 and r.headers["x-broker-error"] == "service_unavailable"
    assert r.headers["retry-after"] == "1"
    assert neto.token_requests == [], "no claim, no exchange"
    # The code was never used, so it still completes the install.
    r = await client.get("/oauth/callback", params={"state": q["state"], "code": code})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("pattern", [r"^INSERT INTO audit_events", r"FROM installs"])
async def test_a_failure_mid_bundle_is_a_503_without_a_bundle(
    client, app, neto, auth, db_faults, pattern
):
    installed = await install_store(client, neto, DOMAIN, store_id="N1001")
    headers = auth("credentials:read", stores=["N1001"])
    audited = len(await rows(app, AuditEvent))
    db_faults.fail(pattern)
    r = await client.get("/credentials/N1001", headers=headers)
    db_faults.heal()

    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == r.headers["x-broker-error"] == "service_unavailable"
    assert r.headers["retry-after"] == "1", "a 503 says when to try again"
    assert set(body) == {"error", "detail", "request_id"}, "no bundle, only the envelope"
    assert_no_secret(r.text, installed["access_token"])
    assert len(await rows(app, AuditEvent)) == audited, "no bundle.issued row"

    ok = await client.get("/credentials/N1001", headers=headers)
    assert ok.status_code == 200, "the audit writer and the pool survived the fault"
    assert ok.json()["headers"]["X_SECRET_KEY"] == installed["access_token"]


async def test_down_then_back_recovers_without_a_restart_and_readyz_follows(
    client, app, neto, auth, db_faults
):
    await install_store(client, neto, DOMAIN, store_id="N1001")
    app.state.services.store_cache.clear()
    bundle = auth("credentials:read", stores=["N1001"])
    admin = auth("installs:admin")
    assert (await client.get("/readyz")).status_code == 200

    db_faults.fail()
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
    assert ready.headers["x-broker-error"] == "service_unavailable"
    for method, path, headers, kwargs in (
        ("GET", "/credentials/N1001", bundle, {}),
        ("GET", "/installs", admin, {}),
        ("GET", "/installs/N1001", admin, {}),
        ("DELETE", "/installs/N1001", admin, {}),
        ("POST", "/installs/start", admin, {"json": {"store_domain": "other.example.com"}}),
    ):
        r = await client.request(method, path, headers=headers, **kwargs)
        assert r.status_code == 503, (method, path, r.text)
        assert r.json()["error"] == r.headers["x-broker-error"] == "service_unavailable"
    page = await client.get("/oauth/install", params={"store_domain": "other.example.com"})
    assert page.status_code == 503 and page.headers["content-type"].startswith("text/html")

    db_faults.heal()
    assert (await client.get("/readyz")).status_code == 200
    assert (await client.get("/credentials/N1001", headers=bundle)).status_code == 200
    assert (await client.get("/installs/N1001", headers=admin)).json()["status"] == "active"


def unreachable_url(database_url: str, tmp_path: Path) -> str:
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{tmp_path}/not-yet/broker.db"
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql+asyncpg://postgres@127.0.0.1:{port}/broker"


async def test_a_database_that_is_not_there_is_a_503_everywhere(
    app_factory, settings_factory, database_url, neto, auth, tmp_path
):
    import httpx

    url = unreachable_url(database_url, tmp_path)
    down = await app_factory(settings_factory(database_url=url))
    transport = httpx.ASGITransport(app=down)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] is False
        r = await client.get("/credentials/N1001", headers=auth("credentials:read", stores=["*"]))
        assert r.status_code == 503 and r.json()["error"] == "service_unavailable"
        r = await client.get("/installs", headers=auth("installs:read"))
        assert r.status_code == 503 and r.json()["error"] == "service_unavailable"
        page = await client.get("/oauth/install", params={"store_domain": DOMAIN})
        assert page.status_code == 503 and page.headers["x-broker-error"] == "service_unavailable"
        assert (await client.get("/healthz")).status_code == 200, "the process itself is fine"

        if url.startswith("sqlite"):  # the file appears: the same process recovers
            (tmp_path / "not-yet").mkdir()
            await asyncio.to_thread(migrate, url)
            assert (await client.get("/readyz")).status_code == 200
            r = await client.get("/installs", headers=auth("installs:read"))
            assert r.status_code == 200 and r.json()["items"] == []


async def test_when_even_the_release_fails_the_claim_lease_frees_the_state(
    client, app, neto, db_faults
):
    from datetime import timedelta

    from sqlalchemy import update

    from service.db import utcnow
    from service.oauth.pending import CLAIM_LEASE

    q = await start_install(client, DOMAIN)
    first = neto.authorize(DOMAIN, store_id="N1001")
    db_faults.fail(r"^INSERT INTO installs")
    db_faults.fail(r"^UPDATE pending_installs SET claimed_at=[^,]* WHERE")  # the release only
    r = await client.get("/oauth/callback", params={"state": q["state"], "code": first})
    db_faults.heal()
    assert r.status_code == 503
    assert len(db_faults.refused) == 2, db_faults.refused
    assert await rows(app, Install) == []
    second = neto.authorize(DOMAIN, store_id="N1001")
    busy = await client.get("/oauth/callback", params={"state": q["state"], "code": second})
    assert busy.status_code == 400, "within the lease the claim still counts as in flight"
    assert len(neto.token_requests) == 1
    async with app.state.services.sessionmaker() as session, session.begin():
        lapsed = utcnow() - CLAIM_LEASE - timedelta(seconds=1)
        await session.execute(update(PendingInstall).values(claimed_at=lapsed))
    done = await client.get("/oauth/callback", params={"state": q["state"], "code": second})
    assert done.status_code == 200, done.text
