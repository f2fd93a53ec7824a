"""Several Neto add-ons in one broker (issue 23, item 2): two apps against the fake Neto,
which knows both client ids and, like Neto, lets only the add-on a code was issued to
exchange it. Each app's installs, callbacks, bundles and calls use its own client id and
secret; a state started for one app is refused on the other's callback and its code is
never sent with the other's secret (asserted on what the fake Neto received); the
`apps` claim refuses another app's stores; the admin list filters by app."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from alembic import command
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import create_async_engine

from service.installs.models import Install
from service.oauth.models import PendingInstall
from service.security.callers import mint
from tests.support import (
    AUDIENCE,
    CLIENT_ID,
    CLIENT_SECRET,
    DOORS,
    HS_KID,
    HS_SECRET,
    alembic_config,
    assert_error,
    assert_refused,
    audit_rows,
    call_door,
    query_of,
    recreate_database,
)

STAGING_ID, STAGING_SECRET = "staging-client-id", "staging-client-secret-" + "t" * 24
DEFAULT_STORE, DEFAULT_DOMAIN = "N1001", "prod-shop.example.com"
STAGING_STORE, STAGING_DOMAIN = "N2002", "test-shop.example.com"


def apps_json(neto_url: str) -> str:
    return json.dumps(
        {
            "staging": {
                "client_id": STAGING_ID,
                "client_secret": STAGING_SECRET,
                "oauth_url": f"{neto_url}/oauth/v2",
            }
        }
    )


@pytest.fixture
async def two_apps(app_factory, settings_factory, neto, neto_server) -> Any:
    neto.add_client(STAGING_ID, STAGING_SECRET)
    return await app_factory(settings_factory(neto_apps=apps_json(neto_server.url)))


@pytest.fixture
async def client(two_apps) -> Any:
    transport = httpx.ASGITransport(app=two_apps)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as c:
        yield c


def bearer(scope: str, **claims: Any) -> dict[str, str]:
    token = mint(kid=HS_KID, secret=HS_SECRET, sub="svc", scope=scope, audience=AUDIENCE,
                 ttl_seconds=600, **claims)  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


async def start(client: httpx.AsyncClient, domain: str, app: str | None) -> dict[str, str]:
    params = {"store_domain": domain, **({"app": app} if app else {})}
    r = await client.get("/oauth/install", params=params)
    assert r.status_code == 302, r.text
    return query_of(r.headers["location"])


async def install(
    client: httpx.AsyncClient, neto: Any, domain: str, store_id: str, app: str | None
) -> dict[str, str]:
    """A whole merchant install of `app` (None: default), Neto issuing the code to it."""
    q = await start(client, domain, app)
    code = neto.authorize(domain, store_id=store_id,
                          client_id=STAGING_ID if app == "staging" else CLIENT_ID)  # fmt: skip
    params = {"code": code, "state": q["state"], **({"app": app} if app else {})}
    r = await client.get("/oauth/callback", params=params)
    assert r.status_code == 200, r.text
    return q


async def both_installed(client: httpx.AsyncClient, neto: Any) -> None:
    await install(client, neto, DEFAULT_DOMAIN, DEFAULT_STORE, None)
    await install(client, neto, STAGING_DOMAIN, STAGING_STORE, "staging")


async def rows(app: Any, model: Any) -> list[Any]:
    async with app.state.services.sessionmaker() as session:
        return list((await session.execute(select(model))).scalars())


# -- installs and callbacks ------------------------------------------------------------


async def test_each_app_installs_with_its_own_client_id_secret_and_callback(client, two_apps, neto):
    default_q = await install(client, neto, DEFAULT_DOMAIN, DEFAULT_STORE, None)
    staging_q = await install(client, neto, STAGING_DOMAIN, STAGING_STORE, "staging")

    assert default_q["client_id"] == CLIENT_ID
    assert default_q["redirect_uri"] == "http://broker.test/oauth/callback"
    assert staging_q["client_id"] == STAGING_ID
    assert staging_q["redirect_uri"] == "http://broker.test/oauth/callback?app=staging"
    sent = [(t.form["client_id"], t.form["client_secret"], t.form["redirect_uri"])
            for t in neto.token_requests]  # fmt: skip
    assert sent == [
        (CLIENT_ID, CLIENT_SECRET, default_q["redirect_uri"]),
        (STAGING_ID, STAGING_SECRET, staging_q["redirect_uri"]),
    ], "each code is exchanged with its own app's secret and redirect URI"
    apps = {i.store_id: i.app for i in await rows(two_apps, Install)}
    assert apps == {DEFAULT_STORE: "default", STAGING_STORE: "staging"}
    created = [r for r in await audit_rows(two_apps) if r["event"] == "install.created"]
    assert {r["store_id"]: r["details"]["app"] for r in created} == apps


async def test_an_app_initiated_install_names_its_app(client, two_apps, neto):
    r = await client.post("/installs/start", json={"store_domain": STAGING_DOMAIN,
                          "app": "staging"}, headers=bearer("installs:start"))  # fmt: skip
    assert r.status_code == 201, r.text
    q = query_of(r.json()["authorize_url"])
    assert q["client_id"] == STAGING_ID
    [row] = await rows(two_apps, PendingInstall)
    assert row.app == "staging"
    # A token limited to other apps cannot start it.
    r = await client.post("/installs/start", json={"store_domain": STAGING_DOMAIN,
                          "app": "staging"},
                          headers=bearer("installs:start", apps=["default"]))  # fmt: skip
    assert_error(r, 403, "forbidden")
    r = await client.post("/installs/start", json={"store_domain": STAGING_DOMAIN,
                          "app": "nope"}, headers=bearer("installs:start"))  # fmt: skip
    assert_error(r, 400, "validation_error")


@pytest.mark.parametrize(("started", "returned"), [("staging", None), (None, "staging")])
async def test_a_state_of_one_app_is_refused_on_the_other_apps_callback(
    client, two_apps, neto, started, returned
):
    q = await start(client, STAGING_DOMAIN, started)
    code = neto.authorize(STAGING_DOMAIN, store_id=STAGING_STORE,
                          client_id=STAGING_ID if started else CLIENT_ID)  # fmt: skip
    wrong = {"code": code, "state": q["state"], **({"app": returned} if returned else {})}
    r = await client.get("/oauth/callback", params=wrong)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), r.text
    assert r.headers["x-broker-error"] == "invalid_state"
    assert "another add-on" in r.text
    assert neto.token_requests == [], "the code went to no token endpoint, with no secret"
    assert await rows(two_apps, Install) == []

    # The state was not burned: its own app's callback completes it, with its secret.
    right = {"code": code, "state": q["state"], **({"app": started} if started else {})}
    r = await client.get("/oauth/callback", params=right)
    assert r.status_code == 200, r.text
    [sent] = neto.token_requests
    expected = (STAGING_ID, STAGING_SECRET) if started else (CLIENT_ID, CLIENT_SECRET)
    assert (sent.form["client_id"], sent.form["client_secret"]) == expected
    [installed] = await rows(two_apps, Install)
    assert installed.app == (started or "default")


async def test_a_pending_install_moved_to_another_app_in_the_database_fails_closed(
    client, two_apps, neto
):
    q = await start(client, STAGING_DOMAIN, "staging")
    code = neto.authorize(STAGING_DOMAIN, store_id=STAGING_STORE, client_id=STAGING_ID)
    async with two_apps.state.services.sessionmaker() as session, session.begin():
        await session.execute(update(PendingInstall).values(app="default"))
    r = await client.get("/oauth/callback", params={"code": code, "state": q["state"]})
    assert r.status_code == 400 and r.headers["x-broker-error"] == "invalid_state", r.text
    assert neto.token_requests == [], "a row moved around the broker exchanges nothing"
    assert await rows(two_apps, Install) == []


@pytest.mark.parametrize("name", ["nope", "Staging", "staging_", "-x", "a" * 40])
async def test_an_unknown_app_is_a_400_page_and_starts_nothing(client, two_apps, neto, name):
    r = await client.get("/oauth/install", params={"store_domain": DEFAULT_DOMAIN, "app": name})
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-broker-error"] == "validation_error"
    assert "is configured on this broker" in r.text and STAGING_ID not in r.text
    r = await client.get("/oauth/callback", params={"code": "c", "state": "s", "app": name})
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    assert await rows(two_apps, PendingInstall) == []
    assert neto.token_requests == []


async def test_a_repeated_app_parameter_is_refused(client, two_apps):
    r = await client.get("/oauth/install?store_domain=shop.example.com&app=staging&app=default")
    assert r.status_code == 400 and "&#x27;app&#x27; appears more than once" in r.text


async def test_without_the_single_app_settings_the_default_app_is_unknown(
    app_factory, settings_factory, neto, neto_server
):
    neto.add_client(STAGING_ID, STAGING_SECRET)
    app = await app_factory(settings_factory(neto_client_id=None, neto_client_secret=None,
                                             neto_apps=apps_json(neto_server.url)))  # fmt: skip
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://broker.test") as client:  # fmt: skip
        r = await client.get("/oauth/install", params={"store_domain": DEFAULT_DOMAIN})
        assert r.status_code == 400 and "&#x27;default&#x27;" in r.text, r.text
        await install(client, neto, STAGING_DOMAIN, STAGING_STORE, "staging")


# -- bundles and calls ------------------------------------------------------------------


async def test_bundles_carry_the_installs_own_client_id(client, two_apps, neto):
    await both_installed(client, neto)
    headers = bearer("credentials:read", stores=["*"])
    for store, client_id in ((DEFAULT_STORE, CLIENT_ID), (STAGING_STORE, STAGING_ID)):
        r = await client.get(f"/credentials/{store}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["headers"]["X_ACCESS_KEY"] == client_id, store


@pytest.mark.parametrize("door", DOORS)
async def test_calls_go_to_neto_with_the_installs_own_client_id(client, two_apps, neto, door):
    await both_installed(client, neto)
    headers = {**bearer("invoke", stores=["*"]), "Content-Type": "application/json"}
    for store, domain, client_id in ((DEFAULT_STORE, DEFAULT_DOMAIN, CLIENT_ID),
                                     (STAGING_STORE, STAGING_DOMAIN, STAGING_ID)):  # fmt: skip
        before = len(neto.api_requests)
        r = await call_door(door, client, store, "GetItem", headers, content=b"{}")
        # The fake accepts a token only with the client id of the add-on it was issued to.
        assert r.status_code == 200, r.text
        [seen] = neto.api_requests[before:]
        assert seen.path == f"/{domain}/do/WS/NetoAPI"
        assert seen.headers["x_access_key"] == client_id


async def test_verify_uses_the_installs_own_client_id(client, two_apps, neto):
    await both_installed(client, neto)
    r = await client.post(f"/installs/{STAGING_STORE}/verify", headers=bearer("installs:admin"))
    assert r.status_code == 200 and r.json()["ok"] is True, r.text
    assert neto.api_requests[-1].headers["x_access_key"] == STAGING_ID


async def test_a_store_of_an_app_no_longer_configured_is_not_used_with_another_client_id(
    client, two_apps, neto, app_factory, settings_factory
):
    await both_installed(client, neto)
    single = await app_factory(settings_factory())  # staging removed from the settings
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=single),
                                 base_url="http://broker.test") as other:  # fmt: skip
        r = await other.get(f"/credentials/{STAGING_STORE}",
                            headers=bearer("credentials:read", stores=["*"]))  # fmt: skip
        assert_error(r, 503, "oauth_not_configured")
        before = len(neto.api_requests)
        r = await call_door("invoke", other, STAGING_STORE, "GetItem",
                            bearer("invoke", stores=["*"]), json={})  # fmt: skip
        assert_refused(r, 503, "oauth_not_configured")
        r = await other.post(f"/installs/{STAGING_STORE}/verify",
                             headers=bearer("installs:admin"))  # fmt: skip
        assert r.status_code == 200 and r.json()["ok"] is False, r.text
        assert r.json()["status"] == "active", "the broker's configuration flags no store"
        assert "oauth_not_configured" in r.json()["detail"]
        assert len(neto.api_requests) == before, "nothing went to Neto"
        r = await other.get(f"/credentials/{DEFAULT_STORE}",
                            headers=bearer("credentials:read", stores=["*"]))  # fmt: skip
        assert r.status_code == 200 and r.json()["headers"]["X_ACCESS_KEY"] == CLIENT_ID


# -- the `apps` claim -------------------------------------------------------------------


@pytest.mark.parametrize("door", DOORS)
async def test_the_apps_claim_refuses_a_store_of_another_app(client, two_apps, neto, door):
    await both_installed(client, neto)
    limited = bearer("credentials:read invoke", stores=["*"], apps=["staging"])
    r = await client.get(f"/credentials/{DEFAULT_STORE}", headers=limited)
    assert_error(r, 403, "store_not_allowed")
    assert "`apps`" in r.json()["detail"]
    r = await client.get(f"/credentials/{STAGING_STORE}", headers=limited)
    assert r.status_code == 200, r.text
    before = len(neto.api_requests)
    r = await call_door(door, client, DEFAULT_STORE, "GetItem", limited, json={})
    assert_refused(r, 403, "store_not_allowed")
    assert len(neto.api_requests) == before, "a refused call sends nothing"
    r = await call_door(door, client, STAGING_STORE, "GetItem", limited, json={})
    assert r.status_code == 200, r.text
    everything = bearer("credentials:read", stores=["*"], apps=["*"])
    r = await client.get(f"/credentials/{DEFAULT_STORE}", headers=everything)
    assert r.status_code == 200, r.text
    bundles = [r for r in await audit_rows(two_apps) if r["event"] == "bundle.issued"]
    assert [b["store_id"] for b in bundles] == [STAGING_STORE, DEFAULT_STORE]


async def test_the_apps_claim_is_checked_before_the_stores_status_is_told(client, two_apps, neto):
    await both_installed(client, neto)
    r = await client.delete(f"/installs/{DEFAULT_STORE}", headers=bearer("installs:admin"))
    assert r.status_code == 200
    limited = bearer("credentials:read", stores=["*"], apps=["staging"])
    r = await client.get(f"/credentials/{DEFAULT_STORE}", headers=limited)
    assert_error(r, 403, "store_not_allowed")


@pytest.mark.parametrize("apps", [["Staging"], ["staging", ""], "staging", [7]])
async def test_an_apps_claim_of_the_wrong_shape_is_refused(client, two_apps, apps):
    r = await client.get(f"/credentials/{STAGING_STORE}",
                         headers=bearer("credentials:read", stores=["*"], apps=apps))  # fmt: skip
    assert_error(r, 401, "unauthorized")
    assert "`apps`" in r.json()["detail"]


# -- moving between apps, operators' views ---------------------------------------------


async def test_a_reinstall_under_another_app_moves_the_store(client, two_apps, neto):
    await install(client, neto, DEFAULT_DOMAIN, DEFAULT_STORE, None)
    await install(client, neto, DEFAULT_DOMAIN, DEFAULT_STORE, "staging")
    [row] = await rows(two_apps, Install)
    assert row.app == "staging"
    r = await client.get(f"/credentials/{DEFAULT_STORE}",
                         headers=bearer("credentials:read", stores=["*"]))  # fmt: skip
    assert r.json()["headers"]["X_ACCESS_KEY"] == STAGING_ID
    [moved] = [r for r in await audit_rows(two_apps) if r["event"] == "install.reinstalled"]
    assert moved["details"]["app"] == "staging"
    assert moved["details"]["previous_app"] == "default"
    # The same app again: no move is recorded.
    await install(client, neto, DEFAULT_DOMAIN, DEFAULT_STORE, "staging")
    again = [r for r in await audit_rows(two_apps) if r["event"] == "install.reinstalled"][-1]
    assert "previous_app" not in again["details"]


async def test_the_admin_list_filters_by_app_and_shows_it(client, two_apps, neto):
    await both_installed(client, neto)
    admin = bearer("installs:read")

    async def listed(headers: dict[str, str], **params: str) -> list[tuple[str, str]]:
        r = await client.get("/installs", params=params, headers=headers)
        assert r.status_code == 200, r.text
        return [(i["store_id"], i["app"]) for i in r.json()["items"]]

    assert await listed(admin, app="staging") == [(STAGING_STORE, "staging")]
    assert await listed(admin, app="default") == [(DEFAULT_STORE, "default")]
    assert sorted(await listed(admin)) == [(DEFAULT_STORE, "default"), (STAGING_STORE, "staging")]
    limited = bearer("installs:read", apps=["staging"])
    assert await listed(limited) == [(STAGING_STORE, "staging")]
    r = await client.get("/installs", params={"app": "default"}, headers=limited)
    assert_error(r, 403, "forbidden")
    r = await client.get("/installs", params={"app": "Bad App"}, headers=admin)
    assert r.status_code == 422, r.text
    r = await client.get(f"/installs/{STAGING_STORE}", headers=admin)
    assert r.status_code == 200 and r.json()["app"] == "staging"
    r = await client.get(f"/installs/{DEFAULT_STORE}", headers=limited)
    assert_error(r, 403, "store_not_allowed")


async def test_an_api_key_store_names_its_app_for_the_claim(client, two_apps, neto):
    admin = bearer("installs:admin")
    body = {"store_id": "K1", "store_domain": "k1.example.com", "username": "u",
            "api_key": "k" * 24, "app": "staging"}  # fmt: skip
    r = await client.post("/installs/api-key", json=body, headers=admin)
    assert r.status_code == 201 and r.json()["app"] == "staging", r.text
    r = await client.post("/installs/api-key", json={**body, "app": "nope"}, headers=admin)
    assert_error(r, 400, "validation_error")
    limited = bearer("credentials:read", stores=["*"], apps=["default"])
    r = await client.get("/credentials/K1", headers=limited)
    assert_error(r, 403, "store_not_allowed")


# -- the migration ---------------------------------------------------------------------

BEFORE_APPS, APPS_MIGRATION = "d8e9f0a1b023", "e9f0a1b2c024"


async def _run(url: str, statements: list[str]) -> list[Any]:
    engine = create_async_engine(url)
    out: list[Any] = []
    async with engine.begin() as conn:
        for statement in statements:
            result = await conn.execute(text(statement))
            if result.returns_rows:
                out.append([tuple(r) for r in result])
    await engine.dispose()
    return out


def test_the_migration_puts_every_existing_row_in_the_default_app(database_url, tmp_path):
    if database_url.startswith("sqlite"):
        url = f"sqlite+aiosqlite:///{tmp_path}/apps.db"
    else:
        base, name = database_url.rsplit("/", 1)
        url = f"{base}/{name}_neto_apps"
        asyncio.run(recreate_database(database_url, f"{name}_neto_apps"))
    command.upgrade(alembic_config(url), BEFORE_APPS)
    asyncio.run(_run(url, [
        "INSERT INTO installs (store_id, store_domain, auth_method, status, secret_sealed, "
        "token_fingerprint, installed_at, updated_at, change_seq) VALUES "
        "('A1', 'a.example.com', 'oauth', 'active', 's', 'sha256:a', CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP, 1), ('K1', 'k.example.com', 'api_key', 'revoked', NULL, "
        "'sha256:k', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 2)",
        "INSERT INTO pending_installs (state_hash, store_domain, initiated_by, created_at, "
        "expires_at) VALUES ('h1', 'a.example.com', 'svc', CURRENT_TIMESTAMP, "
        "CURRENT_TIMESTAMP)",
    ]))  # fmt: skip
    command.upgrade(alembic_config(url), APPS_MIGRATION)
    installs, pending = asyncio.run(_run(url, [
        "SELECT store_id, app FROM installs ORDER BY store_id",
        "SELECT state_hash, app FROM pending_installs",
    ]))  # fmt: skip
    assert installs == [("A1", "default"), ("K1", "default")]
    assert pending == [("h1", "default")]
    # A replica of the previous version writes no app: its rows are `default` too.
    asyncio.run(_run(url, [
        "INSERT INTO installs (store_id, store_domain, auth_method, status, installed_at, "
        "updated_at, change_seq) VALUES ('O1', 'o.example.com', 'oauth', 'active', "
        "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 3)",
    ]))  # fmt: skip
    [[(app,)]] = asyncio.run(_run(url, ["SELECT app FROM installs WHERE store_id = 'O1'"]))
    assert app == "default"
    command.downgrade(alembic_config(url), BEFORE_APPS)
    command.upgrade(alembic_config(url), APPS_MIGRATION)
