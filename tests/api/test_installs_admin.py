"""The operator views of installs: list, detail, revoke."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from service.audit.models import AuditEvent
from service.installs import repository as stores
from service.installs.models import AuthMethod
from service.installs.sealing import fingerprint
from tests.support import install_store, register_api_key_store, warm_store_cache

ADMIN = "installs:admin"


async def register(client, auth, store_id, domain=None, api_key="key-" + "k" * 20):
    return await register_api_key_store(client, auth(ADMIN), store_id, domain, api_key=api_key)


async def seed_at(app, store_id, at, domain=None):
    """An install with a chosen install time (for ties), through the repository."""
    async with app.state.services.sessionmaker() as session, session.begin():
        await stores.upsert(
            session, app.state.services.keyring, store_id=store_id,
            store_domain=domain or f"{store_id.lower()}.example.com",
            auth_method=AuthMethod.api_key, secret={"username": "u", "api_key": "k"},
            now=at,
        )  # fmt: skip


async def list_all(client, auth, **params):
    """Follow next_cursor to the end; returns (store ids in order, pages)."""
    seen, pages, cursor = [], 0, None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await client.get("/installs", params=query, headers=auth("installs:read"))
        assert response.status_code == 200, response.text
        body = response.json()
        seen += [item["store_id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return seen, pages


async def test_list_is_newest_first_and_pages_end_with_a_null_cursor(client, auth):
    for n in range(1, 6):
        await register(client, auth, f"S{n:02d}")
    ids, pages = await list_all(client, auth, limit=2)
    assert ids == ["S05", "S04", "S03", "S02", "S01"]
    assert pages == 3


async def test_installs_added_while_paging_cause_no_duplicates_or_gaps(client, auth):
    for n in range(1, 6):
        await register(client, auth, f"S{n:02d}")
    first = await client.get("/installs", params={"limit": 2}, headers=auth("installs:read"))
    body = first.json()
    assert [i["store_id"] for i in body["items"]] == ["S05", "S04"]
    # Newer installs arrive, and an older store is re-registered, between the pages.
    for n in range(6, 9):
        await register(client, auth, f"S{n:02d}")
    await register(client, auth, "S02", api_key="rotated-" + "r" * 20)
    rest, cursor = [], body["next_cursor"]
    while cursor:
        response = await client.get(
            "/installs", params={"limit": 2, "cursor": cursor}, headers=auth("installs:read")
        )
        assert response.status_code == 200, response.text
        rest += [i["store_id"] for i in response.json()["items"]]
        cursor = response.json()["next_cursor"]
    assert rest == ["S03", "S02", "S01"], "later pages continue exactly where page 1 ended"


async def test_installs_with_the_same_install_time_page_by_store_id(client, app, auth):
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    for store_id in ("T1", "T2", "T3", "T4", "T5"):
        await seed_at(app, store_id, at)
    await seed_at(app, "OLD", at - timedelta(days=1))
    ids, _ = await list_all(client, auth, limit=2)
    assert ids == ["T5", "T4", "T3", "T2", "T1", "OLD"]


async def test_list_filters_by_status_and_by_case_insensitive_substring(client, auth):
    await register(client, auth, "N100", domain="alpha-shop.example.com")
    await register(client, auth, "N_200", domain="beta-shop.example.com")
    await register(client, auth, "X300", domain="gamma.example.org")
    await client.delete("/installs/N_200", headers=auth(ADMIN))

    ids, _ = await list_all(client, auth, status="revoked")
    assert ids == ["N_200"]
    ids, _ = await list_all(client, auth, status="active")
    assert ids == ["X300", "N100"]
    ids, _ = await list_all(client, auth, q="n1")  # store id, any case
    assert ids == ["N100"]
    ids, _ = await list_all(client, auth, q="EXAMPLE.COM")  # domain, any case
    assert ids == ["N_200", "N100"]
    ids, _ = await list_all(client, auth, q="n_")  # "_" is literal, not a wildcard
    assert ids == ["N_200"]
    ids, _ = await list_all(client, auth, q="%")
    assert ids == []


async def test_list_rejects_bad_parameters_with_the_envelope(client, auth):
    headers = auth("installs:read")
    for params, status in (
        ({"cursor": "not-a-cursor"}, 400),
        ({"cursor": "WyJ4Il0"}, 400),  # ["x"]: valid base64 JSON, wrong shape
        ({"cursor": "WyJub3QgYSBkYXRlIiwiTjEiXQ"}, 400),  # ["not a date","N1"]
        ({"limit": 201}, 422),
        ({"limit": 0}, 422),
        ({"status": "deleted"}, 422),
    ):
        response = await client.get("/installs", params=params, headers=headers)
        assert response.status_code == status, (params, response.text)
        assert response.json()["error"] == "validation_error"
        assert response.headers["x-broker-error"] == "validation_error"


async def test_admin_routes_need_the_right_scope(client, auth):
    await register(client, auth, "N1")
    for method, path, scope in (
        ("GET", "/installs", "credentials:read"),
        ("GET", "/installs/N1", "invoke"),
        ("DELETE", "/installs/N1", "installs:read"),
    ):
        response = await client.request(method, path, headers=auth(scope))
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
        anonymous = await client.request(method, path)
        assert anonymous.status_code == 401
        assert anonymous.json()["error"] == "unauthorized"


async def test_detail_shows_everything_but_the_token(client, neto, auth):
    got = await install_store(client, neto, "shop.example.com", store_id="N1001")
    response = await client.get("/installs/N1001", headers=auth("installs:read"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["store_id"] == "N1001"
    assert body["store_domain"] == "shop.example.com"
    assert body["auth_method"] == "oauth"
    assert body["status"] == "active"
    assert body["scope"] == "api user address"
    assert body["timezone"] == "Australia/Brisbane"
    assert body["user"]["email"] == "owner@shop.example.com"
    assert body["billing_address"]["city"] == "Brisbane"
    assert body["installed_at"] and body["updated_at"]
    assert body["last_used_at"] is None and body["revoked_at"] is None
    digest = hashlib.sha256(got["access_token"].encode()).hexdigest()[:16]
    assert body["token_fingerprint"] == f"sha256:{digest}"
    assert got["access_token"] not in response.text
    assert response.headers["cache-control"] == "no-store"


async def test_detail_of_an_unknown_or_malformed_store(client, auth):
    response = await client.get("/installs/N404", headers=auth("installs:read"))
    assert response.status_code == 404
    assert response.json()["error"] == "store_not_found"
    response = await client.get("/installs/bad%20id", headers=auth("installs:read"))
    assert response.status_code == 422
    assert response.json()["error"] == "validation_error"


@pytest.mark.parametrize("warm", [False, True], ids=["cold-cache", "warm-cache"])
async def test_revoke_destroys_the_secret_audits_and_stops_bundles_at_once(
    client, app, neto, auth, warm
):
    got = await install_store(client, neto, "shop.example.com", store_id="N1001")
    bundle_auth = auth("credentials:read", stores=["N1001"])
    assert (await client.get("/credentials/N1001", headers=bundle_auth)).status_code == 200
    if warm:  # the bundle is served from the cache's copy, which polls have kept
        await warm_store_cache(app, lambda: client.get("/credentials/N1001", headers=bundle_auth))

    response = await client.delete("/installs/N1001", headers=auth(ADMIN, sub="ops-alice"))
    assert response.status_code == 200, response.text
    assert len(app.state.services.store_cache) == 0, "the revoking replica kept its copy"
    body = response.json()
    assert body["status"] == "revoked"
    assert body["revoked_at"] is not None
    # Kept for the audit trail (it names the token, cannot be reversed); the token is gone.
    assert body["token_fingerprint"] == fingerprint(got["access_token"])
    assert got["access_token"] not in response.text

    bundle = await client.get("/credentials/N1001", headers=bundle_auth)
    assert bundle.status_code == 410, "a revoked store's bundle must stop at once"
    assert bundle.json()["error"] == "store_revoked"
    sent = len(neto.api_requests)
    invoke = auth("invoke", stores=["N1001"])
    invoked = await client.post("/invoke/N1001/GetItem", json={}, headers=invoke)
    assert invoked.status_code == 410, "a revoked store's token must not be sent upstream"
    assert len(neto.api_requests) == sent

    async with app.state.services.sessionmaker() as session:
        row = await stores.require(session, "N1001")
        assert row.secret_sealed is None
        assert row.status == "revoked"
        events = (
            await session.execute(select(AuditEvent).where(AuditEvent.event == "install.revoked"))
        ).scalars().all()  # fmt: skip
    assert [(e.actor, e.store_id) for e in events] == [("ops-alice", "N1001")]
    assert events[0].request_id == response.headers["x-request-id"]


async def test_revoking_twice_changes_nothing(client, app, auth):
    await register(client, auth, "N1")
    first = (await client.delete("/installs/N1", headers=auth(ADMIN))).json()
    second = await client.delete("/installs/N1", headers=auth(ADMIN))
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first["revoked_at"]
    async with app.state.services.sessionmaker() as session:
        events = (await session.execute(
            select(AuditEvent).where(AuditEvent.event == "install.revoked")
        )).scalars().all()  # fmt: skip
    assert len(events) == 1


async def test_revoking_an_unknown_store_is_404(client, auth):
    response = await client.delete("/installs/N404", headers=auth(ADMIN))
    assert response.status_code == 404
    assert response.json()["error"] == "store_not_found"
