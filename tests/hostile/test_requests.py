"""The hostile input catalogue: bodies, content types, query parameters, headers and
paths an attacker controls. Each refusal is asserted by status and code, and by what it
did not do: no row written, nothing sent to Neto."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from service.installs.models import Install
from service.oauth.models import PendingInstall
from tests.hostile.support import footprint, raw_request
from tests.support import RETURN_PREFIX, start_install

DOMAIN = "shop.example.com"
JSON_ROUTES = [
    ("/installs/start", "installs:start"),
    ("/installs/api-key", "installs:admin"),
]


def assert_envelope(response, status: int, code: str) -> dict:
    assert response.status_code == status, f"expected {status} {code}, got {response.text}"
    assert response.headers["x-broker-error"] == code
    body = response.json()
    assert body["error"] == code and body["request_id"] == response.headers["x-request-id"]
    return body


# -- bodies ----------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "scope"), JSON_ROUTES)
async def test_a_body_over_the_cap_is_refused_before_parsing(client, app, neto, auth, path, scope):
    cap = app.state.services.settings.max_json_bytes
    before = await footprint(app, neto)
    padded = json.dumps({"store_domain": DOMAIN, "return_url": "x" * cap}).encode()
    r = await client.post(
        path, content=padded, headers={**auth(scope), "Content-Type": "application/json"}
    )
    assert_envelope(r, 413, "payload_too_large")

    async def chunks():  # no Content-Length: the cap holds while reading
        for _ in range(cap // 1024 + 2):
            yield b" " * 1024

    r = await client.post(
        path, content=chunks(), headers={**auth(scope), "Content-Type": "application/json"}
    )
    assert_envelope(r, 413, "payload_too_large")
    assert await footprint(app, neto) == before


async def test_a_lying_content_length_is_refused(app, neto, token):
    before = await footprint(app, neto)
    for declared in (b"10000000000", b"-1", b"12abc"):
        r = await raw_request(
            app, "POST", "/installs/start",
            headers=[(b"authorization", f"Bearer {token('installs:start')}".encode()),
                     (b"content-type", b"application/json"), (b"content-length", declared)],
            body=b"{}",
        )  # fmt: skip
        assert r.status in (400, 413), (declared, r.status, r.body)
        assert r.header("x-broker-error") in ("validation_error", "payload_too_large")
    assert await footprint(app, neto) == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"store_domain": ',
        b"\xff\xfe{}",
        b"[]",
        b"42",
        b'"shop.example.com"',
        b"null",
        b'{"store_domain": "shop.example.com", "store_domain": 1}',
        b"[" * 20_000 + b"]" * 20_000,  # deep nesting under the size cap
        b'{"store_domain": "shop.example.com", "extra": 1}',
        b'{"store_domain": 1e400}',
    ],
    ids=["truncated", "not-utf8", "array", "number", "string", "null", "dup-key", "deep",
         "extra-field", "huge-number"],
)  # fmt: skip
async def test_malformed_json_is_a_4xx_envelope(client, app, neto, auth, body):
    before = await footprint(app, neto)
    r = await client.post(
        "/installs/start",
        content=body,
        headers={**auth("installs:start"), "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422), r.text
    assert r.headers["x-broker-error"] in ("validation_error", "invalid_store_domain")
    assert r.json()["error"] == r.headers["x-broker-error"]
    assert await footprint(app, neto) == before


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "application/jsonx"],
)  # fmt: skip
@pytest.mark.parametrize(("path", "scope"), JSON_ROUTES)
async def test_a_json_route_refuses_other_content_types(
    client, app, neto, auth, path, scope, content_type
):
    before = await footprint(app, neto)
    body = json.dumps({"store_domain": DOMAIN}).encode()
    r = await client.post(path, content=body, headers={**auth(scope), "Content-Type": content_type})
    assert_envelope(r, 415, "unsupported_media_type")
    assert await footprint(app, neto) == before


async def test_json_with_a_charset_or_a_json_suffix_type_is_accepted(client, auth):
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await client.post(
            "/installs/start",
            content=json.dumps({"store_domain": DOMAIN}).encode(),
            headers={**auth("installs:start"), "Content-Type": content_type},
        )
        assert r.status_code == 201, (content_type, r.text)


async def test_an_api_key_never_comes_back_in_a_validation_error(client, auth):
    secret = "api-key-" + "z" * 2000  # over the documented maximum length
    r = await client.post(
        "/installs/api-key",
        json={"store_id": "N1", "store_domain": DOMAIN, "username": "u", "api_key": secret},
        headers=auth("installs:admin"),
    )
    assert_envelope(r, 422, "validation_error")
    assert "zzzz" not in r.text


# -- the OAuth routes' query parameters ------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "store_domain=shop.example.com&store_domain=evil.example.com",
        "store_domain=" + "a" * 2000 + ".com",
        "store_domain=shop.example.com%0d%0aLocation:%20https://evil.example.com",
        "store_domain=",
        "",
    ],
    ids=["duplicated", "over-long", "crlf", "empty", "missing"],
)
async def test_oauth_install_refuses_hostile_queries(app, neto, query):
    before = await footprint(app, neto)
    r = await raw_request(app, "GET", "/oauth/install", query=query)
    assert r.status == 400, r.body
    assert r.header("content-type").startswith("text/html")
    assert r.header("x-broker-error") in ("validation_error", "invalid_store_domain")
    assert r.header("location") is None
    assert await footprint(app, neto) == before


async def test_oauth_callback_refuses_duplicated_and_over_long_parameters(client, app, neto):
    q = await start_install(client, DOMAIN)
    code = neto.authorize(DOMAIN)
    before = await footprint(app, neto)
    for query in (
        f"state={q['state']}&state=other&code={code}",
        f"state={q['state']}&code={code}&code=other",
        f"state={q['state']}&code={code}&error=access_denied&error=x",
        f"state={'s' * 600}&code={code}",
        f"state={q['state']}&code={'c' * 3000}",
        f"state={q['state']}&code={code}&error={'e' * 300}",
    ):
        r = await raw_request(app, "GET", "/oauth/callback", query=query)
        assert r.status == 400, (query[:80], r.body[:200])
        assert r.header("x-broker-error") == "validation_error"
        assert r.header("content-type").startswith("text/html")
    assert await footprint(app, neto) == before, "no token request, no row touched"
    # The state was not burned by any of it: the genuine callback still completes.
    r = await client.get("/oauth/callback", params={"state": q["state"], "code": code})
    assert r.status_code == 200, r.text


# -- header injection --------------------------------------------------------------------


async def test_a_raw_crlf_return_url_is_refused(client, app, neto, auth):
    before = await footprint(app, neto)
    for url in (
        RETURN_PREFIX + "ok\r\nSet-Cookie: session=stolen",
        RETURN_PREFIX + "ok\nLocation: https://evil.example.com",
        RETURN_PREFIX + "ok\x00",
        RETURN_PREFIX + "ok\x7f",
        RETURN_PREFIX + "ok\u2028",
    ):
        r = await client.post(
            "/installs/start",
            json={"store_domain": DOMAIN, "return_url": url},
            headers=auth("installs:start"),
        )
        assert_envelope(r, 400, "validation_error")
    assert await footprint(app, neto) == before


async def test_an_encoded_crlf_return_url_stays_encoded_in_location(client, app, neto, auth):
    url = RETURN_PREFIX + "ok%0d%0aSet-Cookie:%20session=stolen?next=%0D%0A"
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, "return_url": url},
        headers=auth("installs:start"),
    )
    assert r.status_code == 201, r.text
    state = dict(p.split("=", 1) for p in r.json()["authorize_url"].split("?", 1)[1].split("&"))
    code = neto.authorize(DOMAIN, store_id="N1001")
    done = await raw_request(
        app, "GET", "/oauth/callback", query=f"state={state['state']}&code={code}"
    )
    assert done.status == 302, done.body
    locations = done.headers_named("location")
    assert len(locations) == 1
    assert "\r" not in locations[0] and "\n" not in locations[0]
    assert locations[0].startswith(RETURN_PREFIX)
    assert "store_id=N1001" in locations[0] and "status=installed" in locations[0]
    assert not done.headers_named("set-cookie")


@pytest.mark.parametrize(
    "store_id",
    ["N1\r\nSet-Cookie: a=b", "N1\nLocation: //evil", "N1 ", "../N1", "N1%0d%0a", "N1?x=y"],
)
async def test_a_hostile_store_id_from_neto_never_becomes_a_header(client, app, neto, store_id):
    q = await start_install(client, DOMAIN)
    code = neto.authorize(DOMAIN, store_id=store_id)
    r = await raw_request(app, "GET", "/oauth/callback", query=f"state={q['state']}&code={code}")
    assert r.status == 502, r.body
    assert r.header("x-broker-error") == "token_exchange_failed"
    assert r.header("location") is None and not r.headers_named("set-cookie")
    async with app.state.services.sessionmaker() as session:
        assert not list((await session.execute(select(Install))).scalars())
        pending = (await session.execute(select(PendingInstall))).scalar_one()
        assert pending.consumed_at is None and pending.claimed_at is None, "state not burned"


@pytest.mark.parametrize(
    "sent",
    [b"abc\x01def", b"abc\r\nx-evil: 1", b"x" * 129, b"abc def", b"\xc3\xa9t\xc3\xa9", b""],
    ids=["control", "crlf", "too-long", "space", "non-ascii", "empty"],
)
async def test_an_insane_request_id_is_replaced_not_echoed(app, sent):
    r = await raw_request(
        app, "GET", "/installs/none", headers=[(b"x-request-id", sent)]
    )  # an error answer: the envelope carries the id too
    assert r.status == 401
    ids = r.headers_named("x-request-id")
    assert len(ids) == 1 and ids[0].startswith("req_") and ids[0].encode() != sent
    body = json.loads(r.body)
    assert body["request_id"] == ids[0]
    if sent:
        assert sent not in r.body
    assert not r.headers_named("x-evil")


async def test_a_sane_request_id_is_echoed(client):
    r = await client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b_c"})
    assert r.headers["x-request-id"] == "trace-42.a:b_c"


# -- path traversal in ids ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "raw_path"),
    [
        ("GET", "/installs/..%2F..%2Fetc"),
        ("GET", "/installs/..%2Fcredentials%2FN1001"),
        ("DELETE", "/installs/%2e%2e"),
        ("DELETE", "/installs/N1001%2F..%2FN2002"),
        ("GET", "/credentials/%2e%2e"),
        ("GET", "/credentials/..%2F..%2Finstalls"),
        ("GET", "/credentials/N1001%00"),
        ("GET", "/credentials/N1001%0d%0a"),
        ("GET", "/credentials/%4E1001%2F"),
        ("GET", "/credentials/N1001/"),
        ("GET", "/installs/"),
    ],
)
async def test_path_traversal_in_ids_is_refused(client, app, neto, token, method, raw_path):
    await install_and_count(client, neto)
    before = await footprint(app, neto)
    bearer = token("installs:admin credentials:read", stores=["*"])
    r = await raw_request(
        app, method, raw_path, headers=[(b"authorization", f"Bearer {bearer}".encode())]
    )
    assert r.status in (404, 422), (raw_path, r.status, r.body)
    body = json.loads(r.body)
    assert body["error"] in ("not_found", "validation_error", "store_not_found")
    assert r.header("x-broker-error") == body["error"]
    assert await footprint(app, neto) == before, "no bundle, no revoke, no audit row"
    async with app.state.services.sessionmaker() as session:
        install = (await session.execute(select(Install))).scalar_one()
        assert install.status == "active"


async def install_and_count(client, neto) -> None:
    from tests.support import install_store

    await install_store(client, neto, DOMAIN, store_id="N1001")


async def test_a_trailing_slash_never_redirects_to_the_host_header(app):
    r = await raw_request(app, "GET", "/installs/", headers=[(b"host", b"evil.example.com")])
    assert r.status == 404 and r.header("location") is None
    assert json.loads(r.body)["error"] == "not_found"
