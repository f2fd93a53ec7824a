"""POST /installs/api-key through the app: registration, sealing, replacement, bundles
for API-key stores, input validation and who may register."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.support import assert_error, audit_rows

ADMIN = "installs:admin"


def registration(**overrides: str) -> dict[str, str]:
    body = {
        "store_id": "K3003",
        "store_domain": "Keys.Example.com",
        "username": "api-user@keys.example.com",
        "api_key": "nk_live_5Qm8x2LrT7vWq9ZsB4",
    }
    body.update(overrides)
    return body


async def raw_install_row(app, store_id: str) -> str:
    """The whole installs row as the database holds it, as one text."""
    async with app.state.services.sessionmaker() as session:
        result = await session.execute(
            text("SELECT * FROM installs WHERE store_id = :id"), {"id": store_id}
        )
        rows = [dict(row._mapping) for row in result]
    assert len(rows) == 1, rows
    return json.dumps(rows[0], default=str)


async def test_register_answers_the_detail_view_without_secrets(client, auth):
    body = registration()
    r = await client.post("/installs/api-key", json=body, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    detail = r.json()
    assert detail["store_id"] == "K3003"
    assert detail["store_domain"] == "keys.example.com"  # normalised
    assert detail["auth_method"] == "api_key"
    assert detail["status"] == "active"
    assert detail["token_fingerprint"].startswith("sha256:")
    assert body["api_key"] not in r.text
    assert body["username"] not in r.text

    shown = await client.get("/installs/K3003", headers=auth("installs:read"))
    assert shown.status_code == 200, shown.text
    assert shown.json()["token_fingerprint"] == detail["token_fingerprint"]


async def test_registered_secret_is_sealed_in_the_database(app, client, auth):
    body = registration()
    r = await client.post("/installs/api-key", json=body, headers=auth(ADMIN))
    assert r.status_code == 201, r.text
    row = await raw_install_row(app, "K3003")
    assert "keys.example.com" in row  # the row is there, readable where it should be
    assert body["api_key"] not in row
    assert body["username"] not in row
    for event in await audit_rows(app):
        assert body["api_key"] not in json.dumps(event, default=str)


async def test_bundle_for_an_api_key_store_carries_netoapi_headers(client, neto_server, auth):
    body = registration()
    assert (await client.post("/installs/api-key", json=body, headers=auth(ADMIN))).status_code
    r = await client.get("/credentials/K3003", headers=auth("credentials:read", stores=["K3003"]))
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["auth_method"] == "api_key"
    assert bundle["store_domain"] == "keys.example.com"
    assert bundle["api_url"] == f"{neto_server.url}/keys.example.com/do/WS/NetoAPI"
    assert bundle["headers"] == {
        "NETOAPI_USERNAME": body["username"],
        "NETOAPI_KEY": body["api_key"],
    }


async def test_re_registering_replaces_the_key_at_once(app, client, auth):
    headers = auth("credentials:read", stores=["K3003"])
    first = await client.post("/installs/api-key", json=registration(), headers=auth(ADMIN))
    assert first.status_code == 201, first.text
    old = (await client.get("/credentials/K3003", headers=headers)).json()  # now cached

    new_key = "nk_live_rotated_8Hd2Kq"
    second = await client.post(
        "/installs/api-key", json=registration(api_key=new_key), headers=auth(ADMIN)
    )
    assert second.status_code == 201, second.text
    assert second.json()["token_fingerprint"] != first.json()["token_fingerprint"]
    assert second.json()["installed_at"] == first.json()["installed_at"]

    bundle = (await client.get("/credentials/K3003", headers=headers)).json()
    assert old["headers"]["NETOAPI_KEY"] == registration()["api_key"]
    assert bundle["headers"]["NETOAPI_KEY"] == new_key
    row = await raw_install_row(app, "K3003")
    assert registration()["api_key"] not in row and new_key not in row
    events = [e["event"] for e in await audit_rows(app) if e["event"].startswith("install.")]
    assert events == ["install.created", "install.reinstalled"]


async def test_re_registering_a_revoked_store_makes_it_usable_again(client, auth):
    assert (
        await client.post("/installs/api-key", json=registration(), headers=auth(ADMIN))
    ).status_code == 201
    assert (await client.delete("/installs/K3003", headers=auth(ADMIN))).status_code == 200
    headers = auth("credentials:read", stores=["K3003"])
    assert_error(await client.get("/credentials/K3003", headers=headers), 410, "store_revoked")
    r = await client.post("/installs/api-key", json=registration(), headers=auth(ADMIN))
    assert r.status_code == 201 and r.json()["status"] == "active", r.text
    assert (await client.get("/credentials/K3003", headers=headers)).status_code == 200


@pytest.mark.parametrize(
    "domain",
    ["localhost", "127.0.0.1", "shop.example.com:8443", "https://shop.example.com", "a b.com"],
)
async def test_invalid_store_domain_is_400(app, client, auth, domain):
    r = await client.post(
        "/installs/api-key", json=registration(store_domain=domain), headers=auth(ADMIN)
    )
    assert_error(r, 400, "invalid_store_domain")
    async with app.state.services.sessionmaker() as session:
        count = (await session.execute(text("SELECT COUNT(*) FROM installs"))).scalar_one()
    assert count == 0


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"store_id": "../x"}, id="store-id-traversal"),
        pytest.param({"store_id": "N 1"}, id="store-id-space"),
        pytest.param({"store_id": "N1/x"}, id="store-id-slash"),
        pytest.param({"store_id": ""}, id="store-id-empty"),
        pytest.param({"store_id": "N" * 65}, id="store-id-long"),
        pytest.param({"username": "user\r\nX-Injected: 1"}, id="username-crlf"),
        pytest.param({"username": ""}, id="username-empty"),
        pytest.param({"api_key": "key with spaces"}, id="api-key-space"),
        pytest.param({"api_key": "key\x00nul"}, id="api-key-nul"),
        pytest.param({"api_key": "clé-non-ascii"}, id="api-key-non-ascii"),
    ],
)
async def test_malformed_registration_is_a_validation_envelope(client, auth, overrides):
    r = await client.post("/installs/api-key", json=registration(**overrides), headers=auth(ADMIN))
    assert_error(r, 422, "validation_error")
    if "api_key" in overrides:
        assert overrides["api_key"] not in r.text


async def test_unknown_fields_are_refused(client, auth):
    body = {**registration(), "status": "active"}
    r = await client.post("/installs/api-key", json=body, headers=auth(ADMIN))
    assert_error(r, 422, "validation_error")


@pytest.mark.parametrize("scope", ["installs:start", "installs:read", "credentials:read", ""])
async def test_registration_needs_installs_admin(app, client, auth, scope):
    r = await client.post(
        "/installs/api-key", json=registration(), headers=auth(scope, stores=["*"])
    )
    assert_error(r, 403, "forbidden")
    async with app.state.services.sessionmaker() as session:
        count = (await session.execute(text("SELECT COUNT(*) FROM installs"))).scalar_one()
    assert count == 0


async def test_registration_without_a_token_is_401(client):
    r = await client.post("/installs/api-key", json=registration())
    assert_error(r, 401, "unauthorized")
    assert "www-authenticate" in r.headers


# -- POST /installs/start: who may start an install --------------------------------------


@pytest.mark.parametrize("scope", ["installs:start", "installs:admin"])
async def test_install_start_accepts_start_and_admin(client, auth, scope):
    r = await client.post(
        "/installs/start", json={"store_domain": "shop.example.com"}, headers=auth(scope)
    )
    assert r.status_code == 201, r.text
    assert "state=" in r.json()["authorize_url"]


@pytest.mark.parametrize("scope", ["credentials:read", "installs:read", "invoke"])
async def test_install_start_refuses_other_scopes(app, client, auth, scope):
    r = await client.post(
        "/installs/start", json={"store_domain": "shop.example.com"}, headers=auth(scope)
    )
    assert_error(r, 403, "forbidden")
    async with app.state.services.sessionmaker() as session:
        count = (await session.execute(text("SELECT COUNT(*) FROM pending_installs"))).scalar_one()
    assert count == 0


async def test_install_start_without_a_token_is_401(client):
    r = await client.post("/installs/start", json={"store_domain": "shop.example.com"})
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
