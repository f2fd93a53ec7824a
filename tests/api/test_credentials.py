"""GET /credentials/{store_id} through the app: the bundle, its audit trail, the status
rules, the store and scope checks, and how every caller-token refusal looks over HTTP."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from service.access import audit_batch
from service.installs import queries
from service.installs import repository as stores
from service.installs.models import InstallStatus
from service.main import create_app
from tests.support import (
    AUDIENCE,
    CLIENT_ID,
    HS_KID,
    HS_SECRET,
    assert_error,
    audit_rows,
    hs256,
    install_store,
    warm_store_cache,
)

READ = "credentials:read"


def parse_z(value: str) -> datetime:
    assert value.endswith("Z"), value
    return datetime.fromisoformat(value)


async def test_oauth_bundle_has_the_contract_shape(client, neto, neto_server, auth):
    got = await install_store(client, neto, "shop.example.com", store_id="N1001")
    before = datetime.now(UTC).replace(microsecond=0)
    r = await client.get("/credentials/N1001", headers=auth(READ, stores=["N1001"]))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    body = r.json()
    assert set(body) == {
        "bundle_id", "store_id", "store_domain", "auth_method", "api_url", "headers",
        "issued_at", "expires_at",
    }  # fmt: skip
    assert body["bundle_id"].startswith("bnd_") and len(body["bundle_id"]) > 20
    assert body["store_id"] == "N1001"
    assert body["store_domain"] == "shop.example.com"
    assert body["auth_method"] == "oauth"
    assert body["api_url"] == f"{neto_server.url}/shop.example.com/do/WS/NetoAPI"
    assert body["headers"] == {"X_ACCESS_KEY": CLIENT_ID, "X_SECRET_KEY": got["access_token"]}
    issued, expires = parse_z(body["issued_at"]), parse_z(body["expires_at"])
    assert before <= issued <= datetime.now(UTC)
    assert expires - issued == timedelta(seconds=300)


async def test_bundle_lifetime_follows_the_setting(app_factory, settings_factory, neto, auth):
    import httpx

    app = await app_factory(settings_factory(bundle_ttl_seconds=45))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        await install_store(client, neto, "ttl.example.com", store_id="N2002")
        r = await client.get("/credentials/N2002", headers=auth(READ, stores=["*"]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert parse_z(body["expires_at"]) - parse_z(body["issued_at"]) == timedelta(seconds=45)


async def test_every_bundle_is_new_and_audited_without_its_secret(app, client, neto, auth):
    got = await install_store(client, neto, "shop.example.com", store_id="N1001")
    headers = auth(READ, sub="orders-service", stores=["N1001"])
    first = (await client.get("/credentials/N1001", headers=headers)).json()
    second = (await client.get("/credentials/N1001", headers=headers)).json()
    assert first["bundle_id"] != second["bundle_id"]

    rows = [row for row in await audit_rows(app) if row["event"] == "bundle.issued"]
    assert [row["details"]["bundle_id"] for row in rows] == [
        first["bundle_id"],
        second["bundle_id"],
    ]
    for row in rows:
        assert row["actor"] == "orders-service"
        assert row["store_id"] == "N1001"
        assert row["request_id"]
        assert got["access_token"] not in json.dumps(row, default=str)


async def test_unknown_store_is_404(client, auth):
    r = await client.get("/credentials/N404", headers=auth(READ, stores=["*"]))
    assert_error(r, 404, "store_not_found")


@pytest.mark.parametrize("warm", [False, True], ids=["cold-cache", "warm-cache"])
async def test_revoked_store_is_410(app, client, neto, auth, warm):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    headers = auth(READ, stores=["N1001"])
    assert (await client.get("/credentials/N1001", headers=headers)).status_code == 200
    if warm:  # the bundle is served from the cache's copy, which polls have kept
        await warm_store_cache(app, lambda: client.get("/credentials/N1001", headers=headers))
    r = await client.delete("/installs/N1001", headers=auth("installs:admin"))
    assert r.status_code == 200, r.text
    assert len(app.state.services.store_cache) == 0, "the revoking replica kept its copy"
    assert_error(await client.get("/credentials/N1001", headers=headers), 410, "store_revoked")
    # A kept copy would also send the revoked token upstream (an invoke is not fenced).
    sent = len(neto.api_requests)
    invoke = auth("invoke", stores=["N1001"])
    r = await client.post("/invoke/N1001/GetItem", json={}, headers=invoke)
    assert_error(r, 410, "store_revoked")
    assert len(neto.api_requests) == sent


async def test_store_needing_reauthorisation_is_409(app, client, neto, auth):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    async with app.state.services.sessionmaker() as session:
        await stores.set_status(session, "N1001", InstallStatus.reauth_required)
        await session.commit()
    r = await client.get("/credentials/N1001", headers=auth(READ, stores=["N1001"]))
    assert_error(r, 409, "store_reauth_required")


async def test_store_outside_the_tokens_stores_is_403(client, neto, auth):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    r = await client.get("/credentials/N1001", headers=auth(READ, stores=["N2002"]))
    assert_error(r, 403, "store_not_allowed")


async def test_token_without_stores_claim_is_403(client, neto, auth):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    r = await client.get("/credentials/N1001", headers=auth(READ))
    assert_error(r, 403, "store_not_allowed")


async def test_star_stores_allows_any_store(client, neto, auth):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    r = await client.get("/credentials/N1001", headers=auth(READ, stores=["*"]))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("scope", ["", "invoke", "installs:admin installs:read"])
async def test_token_without_credentials_read_is_403(client, neto, auth, scope):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    r = await client.get("/credentials/N1001", headers=auth(scope, stores=["*"]))
    assert_error(r, 403, "forbidden")


@pytest.mark.parametrize(
    "scope",
    [
        "invoke\u00a0credentials:read",  # a no-break space: one unknown word, not two scopes
        "invoke\tcredentials:read",
        "invoke\u2028credentials:read",
        "invoke\u3000credentials:read",
    ],
)
async def test_scope_splits_on_ascii_spaces_only(client, neto, auth, scope):
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    r = await client.get("/credentials/N1001", headers=auth(scope, stores=["*"]))
    assert_error(r, 403, "forbidden")
    # The same two scopes separated by ASCII spaces (doubled, too) do grant it.
    r = await client.get(
        "/credentials/N1001", headers=auth("invoke  credentials:read ", stores=["*"])
    )
    assert r.status_code == 200, r.text


async def test_tenant_isolation_caller_for_store_a_cannot_read_store_b(app, client, neto, auth):
    await install_store(client, neto, "a.example.com", store_id="NA")
    b = await install_store(client, neto, "b.example.com", store_id="NB")
    headers = auth(READ, sub="service-a", stores=["NA"])
    assert (await client.get("/credentials/NA", headers=headers)).status_code == 200
    r = await client.get("/credentials/NB", headers=headers)
    assert_error(r, 403, "store_not_allowed")
    assert b["access_token"] not in r.text
    # A store that does not exist answers the same: no oracle for which stores exist.
    assert_error(await client.get("/credentials/NC", headers=headers), 403, "store_not_allowed")
    issued = [row for row in await audit_rows(app) if row["event"] == "bundle.issued"]
    assert [row["store_id"] for row in issued] == ["NA"]


@pytest.mark.parametrize(("alg", "kid"), [("RS256", "rsa1"), ("ES256", "ec1")])
async def test_public_key_tokens_from_another_jose_library_are_accepted(
    client, neto, rsa_key, ec_key, alg, kid
):
    import jwt as pyjwt

    await install_store(client, neto, "shop.example.com", store_id="N1001")
    now = int(datetime.now(UTC).timestamp())
    claims = {"sub": "pyjwt-service", "aud": AUDIENCE, "iat": now, "exp": now + 60,
              "scope": READ, "stores": ["N1001"]}  # fmt: skip
    key = rsa_key if alg == "RS256" else ec_key
    token = pyjwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    r = await client.get("/credentials/N1001", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def _expired() -> str:
    now = int(datetime.now(UTC).timestamp())
    return hs256({"sub": "s", "aud": AUDIENCE, "iat": now - 900, "exp": now - 300})


def _unsigned() -> str:
    return hs256({"sub": "s", "aud": AUDIENCE, "iat": 0, "exp": 1}, alg="none")


def _foreign_key() -> str:
    from service.security.callers import mint

    return mint(
        kid=HS_KID, secret="not-" + HS_SECRET, sub="s", scope=READ, audience=AUDIENCE,
        ttl_seconds=60, stores=["*"],
    )  # fmt: skip


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="no-header"),
        pytest.param("Bearer", id="bearer-without-token"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
        pytest.param("Bearer not-a-jwt", id="garbage"),
        pytest.param("Bearer " + "a" * 9000 + ".b.c", id="oversized"),
        pytest.param(f"Bearer {_unsigned()}", id="alg-none"),
        pytest.param(f"Bearer {_expired()}", id="expired"),
        pytest.param(f"Bearer {_foreign_key()}", id="bad-signature"),
    ],
)
async def test_every_token_refusal_is_a_401_envelope(client, authorization):
    headers = {"Authorization": authorization} if authorization else {}
    r = await client.get("/credentials/N1001", headers=headers)
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"].startswith("Bearer")
    if authorization and " " in authorization:
        presented = authorization.split(" ", 1)[1]
        assert presented not in r.text
        assert presented[:40] not in r.text


async def _last_used(app, store_id: str) -> datetime | None:
    async with app.state.services.sessionmaker() as session:
        return (await queries.last_used(session, [store_id])).get(store_id)


async def test_the_last_used_stamp_never_goes_back_and_skips_revoked_installs(
    app, client, neto, auth
):
    """The stamp's own rules, on both databases' statements: a later use wins over an
    earlier one stamped after it, and a revoked install keeps its last use as it was."""
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    await install_store(client, neto, "gone.example.com", store_id="N1002")
    r = await client.delete("/installs/N1002", headers=auth("installs:admin"))
    assert r.status_code == 200, r.text
    writer = app.state.services.audit_writer
    used = datetime(2026, 12, 1, 9, 30, 15, 123456, tzinfo=UTC)
    writer.remember_use([("N1001", used), ("N1002", used)])
    await writer.stamp_last_used()
    assert await _last_used(app, "N1001") == used
    assert await _last_used(app, "N1002") is None, "a revoked install was stamped"

    writer.remember_use([("N1001", used - timedelta(microseconds=1))])
    await writer.stamp_last_used()
    assert await _last_used(app, "N1001") == used, "the stamp went back in time"
    writer.remember_use([("N1001", used + timedelta(days=1))])
    await writer.stamp_last_used()
    assert await _last_used(app, "N1001") == used + timedelta(days=1)


async def test_the_last_used_stamp_does_not_wait_for_a_locked_install_row(
    app, client, neto, auth, database_url
):
    """PostgreSQL: a bundle batch share-locks its stores' install rows while the stamp
    runs beside it, and a revoke holds one for update. The stamp reads install rows
    without a lock and writes only `install_usage`, so it neither waits for them nor
    (waiting while holding others) deadlocks with a batch."""
    if not database_url.startswith("postgresql"):
        pytest.skip("row locks are PostgreSQL's; SQLite's stamp runs between the batches")
    await install_store(client, neto, "shop.example.com", store_id="N1001")
    writer = app.state.services.audit_writer
    used = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    async with app.state.services.engine.connect() as holder:
        await holder.execute(text("SELECT 1 FROM installs WHERE store_id = 'N1001' FOR UPDATE"))
        writer.remember_use([("N1001", used)])
        await asyncio.wait_for(writer.stamp_last_used(), timeout=5)
        await holder.rollback()
    assert await _last_used(app, "N1001") == used


async def test_bundles_stamp_last_used_in_the_background(
    app_factory, settings_factory, neto, auth, monkeypatch
):
    """`last_used_at` is stamped for the stores bundles were issued for, at most one stamp
    interval late, never on a revoked store, and what is pending is stamped at shutdown."""
    monkeypatch.setattr(audit_batch, "STAMP_SECONDS", 0.2)
    app = await app_factory(settings_factory())
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        await install_store(client, neto, "shop.example.com", store_id="N1001")
        await install_store(client, neto, "idle.example.com", store_id="N1002")
        before = datetime.now(UTC) - timedelta(seconds=1)
        r = await client.get("/credentials/N1001", headers=auth(READ, stores=["N1001"]))
        assert r.status_code == 200, r.text
        for _ in range(100):
            if await _last_used(app, "N1001") is not None:
                break
            await asyncio.sleep(0.05)
        stamped = await _last_used(app, "N1001")
        assert stamped is not None and before <= stamped <= datetime.now(UTC)
        assert await _last_used(app, "N1002") is None, "a store with no bundle is not stamped"

    monkeypatch.setattr(audit_batch, "STAMP_SECONDS", 3600.0)
    quiet = settings_factory()
    lifespan = (late := create_app(quiet)).router.lifespan_context(late)
    await lifespan.__aenter__()
    try:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=late), base_url="http://broker.test"
        ) as client:
            r = await client.get("/credentials/N1002", headers=auth(READ, stores=["N1002"]))
            assert r.status_code == 200, r.text
        assert await _last_used(late, "N1002") is None, "not yet: the interval is an hour"
    finally:
        await lifespan.__aexit__(None, None, None)
    assert await _last_used(app, "N1002") is not None, "the stop stamps what was pending"
