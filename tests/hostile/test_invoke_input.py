"""Hostile input on `/invoke`: values that would become upstream headers, secrets with
CR/LF smuggled into the database, bodies, content types, traversal in the path, over-long
and look-alike action names. Each asserts status and code, and what reached Neto and the
database (nothing, unless the call is legal)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from service.installs.models import Install
from service.installs.sealing import Binding, sealed_values
from tests.hostile.support import footprint, raw_request
from tests.support import assert_error, install_store

STORE, DOMAIN = "N1001", "shop.example.com"


@pytest.fixture
async def store(client, neto):
    return await install_store(client, neto, DOMAIN, store_id=STORE)


def bearer(token, **kwargs) -> list[tuple[bytes, bytes]]:
    jwt = token("invoke", stores=[STORE], actions=["*"], **kwargs)
    return [(b"authorization", f"Bearer {jwt}".encode())]


# -- values that become upstream headers ------------------------------------------------


@pytest.mark.parametrize(
    "sent",
    [b"abc\r\nX-Injected: 1", b"abc\nX-Injected: 1", b"abc\rX-Injected: 1", b"a\x00b",
     b"caf\xc3\xa9", b"x" * 129, b"a b"],
)  # fmt: skip
async def test_an_insane_request_id_never_reaches_neto(app, neto, token, store, sent):
    r = await raw_request(
        app, "POST", f"/invoke/{STORE}/GetItem", body=b"{}",
        headers=[*bearer(token), (b"content-type", b"application/json"), (b"x-request-id", sent)],
    )  # fmt: skip
    assert r.status == 200, r.body
    [seen] = neto.api_requests
    forwarded = seen.headers["x-request-id"]
    assert forwarded == r.header("x-request-id") and forwarded.startswith("req_")
    assert "x-injected" not in seen.headers
    assert sent.decode("latin-1") not in json.dumps(seen.headers)


@pytest.mark.parametrize(
    ("field", "value"),
    [("api_key", "k" * 20 + "\r\nX-Injected: 1"), ("username", "api\r\nX-Injected: 1"),
     ("api_key", "k" * 20 + "\nX-Injected: 1"), ("username", "api\x00user"),
     ("api_key", "k" * 20 + "\x7f"), ("username", "caf\u00e9")],
)  # fmt: skip
async def test_a_smuggled_crlf_secret_never_becomes_a_header(
    client, app, neto, auth, caplog, field, value
):
    """Registration refuses CR/LF; a value written into the database directly (sealed
    properly, as if by an attacker holding the keys or an old bug) must still never split
    a header upstream or reach a caller in a bundle: it does not open, loudly."""
    secret = {"username": "api", "api_key": "k" * 40, field: value}
    r = await client.post(
        "/installs/api-key",
        json={"store_id": "K1", "store_domain": "keys.example.com", "username": "api",
              "api_key": "k" * 40},
        headers=auth("installs:admin"),
    )  # fmt: skip
    assert r.status_code == 201, r.text
    async with app.state.services.sessionmaker() as session, session.begin():
        values = sealed_values(
            app.state.services.keyring,
            Binding("K1", "keys.example.com", "api_key"),
            secret=secret,
            user=None,
            billing=None,
        )
        await session.execute(update(Install).where(Install.store_id == "K1").values(**values))
    app.state.services.store_cache.clear()

    before = await footprint(app, neto)
    r = await client.post("/invoke/K1/GetItem", json={}, headers=auth("invoke", stores=["K1"]))
    assert_error(r, 500, "store_secret_unreadable")
    assert "X-Injected" not in r.text and value not in r.text
    r = await client.get("/credentials/K1", headers=auth("credentials:read", stores=["K1"]))
    assert_error(r, 500, "store_secret_unreadable")
    assert value not in r.text
    assert await footprint(app, neto) == before, "nothing sent upstream, nothing audited"
    assert not neto.stray_requests
    loud = [rec for rec in caplog.records if "not a safe header" in rec.getMessage()]
    assert loud and all(rec.levelname == "ERROR" for rec in loud), "operators are told"
    assert not any(value in str(rec.__dict__) for rec in caplog.records), "nor is it logged"
    assert not any(rec.exc_info for rec in caplog.records), "no stack trace: a clean refusal"


# -- bodies and content types -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [b"{not json", b'{"a": 1', b"\xff\xfe\x00garbage", b"[]", b"null", b"", b'"\\ud800"',
     b"{" * 10000 + b"}" * 10000],
)  # fmt: skip
async def test_a_malformed_body_is_forwarded_as_is_without_crashing(
    client, neto, auth, store, body
):
    """The broker is a passthrough: it never parses the body (Neto judges it), so a
    malformed one can neither crash the broker nor be changed on the way."""
    headers = {**auth("invoke", stores=[STORE]), "Content-Type": "application/json"}
    r = await client.post(f"/invoke/{STORE}/GetItem", content=body, headers=headers)
    assert r.status_code == 200, r.text
    [seen] = neto.api_requests
    assert seen.body == body


async def test_an_oversized_body_is_refused_before_neto(client, app, neto, auth, store):
    cap = app.state.services.settings.max_request_bytes
    before = await footprint(app, neto)
    headers = {**auth("invoke", stores=[STORE]), "Content-Type": "application/json"}
    r = await client.post(f"/invoke/{STORE}/GetItem", content=b" " * (cap + 1), headers=headers)
    assert_error(r, 413, "payload_too_large")
    assert await footprint(app, neto) == before


@pytest.mark.parametrize(
    "content_type",
    [b"text/plain", b"application/xml", b"multipart/form-data; boundary=x",
     b"application/jsonx", b"application/x-json-but-not", b"json", b"application/",
     b"text/json+plain", b"application/json\r\nX-Injected: 1", b"\xff\xfe"],
)  # fmt: skip
async def test_a_non_json_content_type_is_415_and_nothing_is_sent(
    app, neto, token, store, content_type
):
    before = await footprint(app, neto)
    r = await raw_request(
        app, "POST", f"/invoke/{STORE}/GetItem", body=b"{}",
        headers=[*bearer(token), (b"content-type", content_type)],
    )  # fmt: skip
    assert r.status == 415, (content_type, r.status, r.body)
    assert json.loads(r.body)["error"] == "unsupported_media_type"
    assert await footprint(app, neto) == before


# -- paths and action names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_path", "codes"),
    [
        ("/invoke/..%2F..%2Fx/GetItem", {"validation_error", "not_found"}),
        ("/invoke/%2e%2e/GetItem", {"validation_error"}),
        ("/invoke/N1001%2F..%2FN2002/GetItem", {"unknown_action"}),
        ("/invoke/N1001%00/GetItem", {"validation_error"}),
        ("/invoke/N1001/..%2FGetItem", {"unknown_action"}),
        ("/invoke/N1001/..%2F..%2Finstalls", {"unknown_action"}),
        ("/invoke/N1001/%2e%2e", {"unknown_action"}),
        ("/invoke/N1001/GetItem%2F..%2F..%2FAddItem", {"unknown_action"}),
        ("/invoke/N1001/Get%C4%B0tem", {"unknown_action"}),  # dotted capital I
        ("/invoke/N1001/Get%D0%86tem", {"unknown_action"}),  # Cyrillic I
        ("/invoke/N1001/%EF%BC%A7etItem", {"unknown_action"}),  # fullwidth G
        ("/invoke/N1001/GetItem%E2%80%8B", {"unknown_action"}),  # zero-width space
        ("/invoke/N1001/Get%C4%B1tem", {"unknown_action"}),  # dotless i
        ("/invoke/N1001/" + "GetItem" * 10000, {"unknown_action"}),
    ],
)
async def test_traversal_and_lookalike_actions_send_nothing(
    app, neto, token, store, raw_path, codes
):
    before = await footprint(app, neto)
    r = await raw_request(
        app, "POST", raw_path, body=b"{}",
        headers=[*bearer(token), (b"content-type", b"application/json")],
    )  # fmt: skip
    body = json.loads(r.body)
    assert r.status in (404, 422), (raw_path[:60], r.status, r.body[:200])
    assert body["error"] in codes and r.header("x-broker-error") == body["error"]
    assert len(r.body) < 2000, "an over-long name is not echoed back"
    assert await footprint(app, neto) == before
    assert not neto.stray_requests
