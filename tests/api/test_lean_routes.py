"""The hot routes are answered ahead of FastAPI's request handling (service/web/lean.py).
They must answer exactly as the FastAPI routes would (same statuses, codes, details and
headers, in the same order of checks), pass through the application's middleware, be
labelled by their template in logs and metrics, and stay described by the OpenAPI
document."""

from __future__ import annotations

import re
from typing import Any

import httpx

from service.access import bundles, invoke, neto_door
from service.inbound import routes as inbound_routes
from service.web.lean import LeanRoute
from tests.support import install_store

STORE = "N1001"
BAD_ID = "bad!id"
LONG_ID = "a" * 65
NETO = "/neto/{}/do/WS/NetoAPI"


def notification(event_id: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><Event><CurrentTime>2026-12-07 14:03:09'
        f"</CurrentTime><EventID>{event_id}</EventID><EventType>Order</EventType><Order>"
        "<OrderID>N1</OrderID><OrderStatus>Pick</OrderStatus></Order></Event>"
    ).encode()


def notifications(url: str, run: int) -> list[tuple[str, str, dict[str, str], bytes]]:
    """Neto's notifications: refused, accepted (a new one in each run) and duplicate."""
    path = httpx.URL(url).path
    token = path.rsplit("/", 1)[1]
    xml = {"Content-Type": "text/xml"}
    return [
        ("POST", f"/neto-notify/{STORE}/nt_wrong", xml, notification(1)),
        ("POST", f"/neto-notify/{BAD_ID}/{token}", xml, notification(1)),
        ("POST", f"/neto-notify/{LONG_ID}", {**xml, "NETOAPI_KEY": token}, notification(1)),
        ("POST", f"/neto-notify/{STORE}", xml, notification(1)),
        ("POST", path, xml, b"<Event><EventType>Order</Event>"),
        ("POST", path, {**xml, "Content-Length": "999999"}, notification(1)),
        ("PUT", path, xml, notification(1)),
        ("GET", path, xml, b""),
        ("POST", path, xml, notification(100 + run)),
        ("POST", f"/neto-notify/{STORE}", {**xml, "NETOAPI_KEY": token}, notification(100 + run)),
        ("POST", f"/neto-notify/{STORE}", {**xml, "NETOAPI_KEY": token}, notification(200 + run)),
    ]


def requests(auth: Any) -> list[tuple[str, str, dict[str, str], bytes]]:
    """(method, path, headers, body): refusals of every kind, and answers that succeed."""
    read = auth("credentials:read", stores=[STORE])
    call = auth("invoke", stores=[STORE])
    other = auth("credentials:read invoke", stores=["N2"])
    neto = {"NETOAPI_ACTION": "GetItem", **call}
    return [
        ("GET", f"/credentials/{BAD_ID}", {}, b""),
        ("GET", f"/credentials/{LONG_ID}", read, b""),
        ("GET", f"/credentials/{BAD_ID}", read, b""),
        ("GET", f"/credentials/{STORE}", {}, b""),
        ("GET", f"/credentials/{STORE}", {"Authorization": "Bearer nope"}, b""),
        ("GET", f"/credentials/{STORE}", other, b""),
        ("GET", f"/credentials/{STORE}", call, b""),
        ("GET", "/credentials/N404", auth("credentials:read", stores=["*"]), b""),
        ("HEAD", f"/credentials/{STORE}", read, b""),
        ("POST", f"/credentials/{STORE}", read, b""),
        ("GET", f"/credentials/{STORE}", read, b""),
        ("POST", f"/invoke/{BAD_ID}/GetItem", {}, b"{}"),
        ("POST", f"/invoke/{BAD_ID}/GetItem", call, b"{}"),
        ("POST", f"/invoke/{LONG_ID}/GetItem", call, b"{}"),
        ("POST", f"/invoke/{STORE}/GetItem", read, b"{}"),
        ("POST", f"/invoke/{STORE}/NoSuchAction", call, b"{}"),
        ("POST", f"/invoke/{STORE}/UpdateItem", call, b"{}"),
        ("POST", f"/invoke/{STORE}/GetItem", {**call, "Content-Type": "text/plain"}, b"x"),
        ("GET", f"/invoke/{STORE}/GetItem", call, b""),
        ("POST", f"/invoke/{STORE}/GetItem", {**call, "Content-Type": "application/json"}, b"{}"),
        ("POST", NETO.format(BAD_ID), {}, b"{}"),
        ("POST", NETO.format(BAD_ID), neto, b"{}"),
        ("POST", NETO.format(STORE), call, b"{}"),
        ("POST", NETO.format(STORE), {**neto, "Accept": "application/xml"}, b"{}"),
        ("POST", NETO.format(STORE), {"NETOAPI_ACTION": "GetItem"}, b"{}"),
        ("PUT", NETO.format(STORE), neto, b"{}"),
        ("POST", NETO.format(STORE), neto, b"{}"),
    ]


COMPARED_HEADERS = (
    "content-type",
    "cache-control",
    "x-broker-error",
    "www-authenticate",
    "allow",
    "x-content-type-options",
    "content-security-policy",
)


def answer(response: httpx.Response) -> tuple[Any, ...]:
    """What must not differ between the two implementations (request and bundle ids and
    times do by nature; the bundle's shape must not)."""
    headers = {k: response.headers.get(k) for k in COMPARED_HEADERS}
    body = response.content.replace(response.headers["x-request-id"].encode(), b"<rid>")
    body = re.sub(rb'"evt_[^"]*"', b'"<event>"', body)
    # Neto's answer carries its clock to the second; the two runs may straddle one.
    body = re.sub(rb'"CurrentTime": ?"[^"]*"', b'"CurrentTime":"<now>"', body)
    if response.request.method == "GET" and response.status_code == 200 and response.content:
        bundle = response.json()  # its shape and store, not the random id and times
        body = repr((sorted(bundle), bundle["store_id"], bundle["headers"])).encode()
    return response.status_code, headers, body


async def test_the_lean_routes_answer_exactly_as_the_fastapi_routes(app, client, neto, auth):
    await install_store(client, neto, "shop.example.com", store_id=STORE)
    r = await client.post(f"/installs/{STORE}/notifications/rotate", headers=auth("installs:admin"))
    url = r.json()["url"]

    async def run(n: int) -> list[tuple[Any, ...]]:
        cases = requests(auth) + notifications(url, n)
        return [
            answer(await client.request(method, path, headers=headers, content=body))
            for method, path, headers, body in cases
        ]

    lean = await run(1)
    served = app.lean_routes
    assert len(served) == 5 and all(isinstance(route, LeanRoute) for route in served)
    app.lean_routes, app.middleware_stack = [], None  # FastAPI's stack and routes alone
    try:
        declared = await run(2)
    finally:
        app.lean_routes, app.middleware_stack = served, None
    cases = requests(auth) + notifications(url, 0)
    for case, got, expected in zip(cases, lean, declared, strict=True):
        assert got == expected, (case[:2], got, expected)
    statuses = {status for status, _, _ in lean}
    assert {200, 400, 401, 403, 404, 405, 413, 415, 422} <= statuses, statuses  # the cases bite
    duplicates = [body for status, _, body in lean if b'"duplicate":true' in body]
    assert len(duplicates) == 1, lean[-3:]  # the one sent twice in a run
    # The upstream was really called: both implementations reached the fake Neto.
    assert len([r for r in neto.api_requests if r.action == "GetItem"]) == 2 * 3


async def test_the_hot_routes_are_served_lean_and_documented(app):
    served = [(route.path, route.methods) for route in app.lean_routes]
    assert served == [
        (bundles.PATH, {"GET"}),
        (invoke.PATH, {"POST"}),
        (neto_door.PATH, {"POST"}),
        (inbound_routes.PATH_WITH_TOKEN, {"POST"}),
        (inbound_routes.PATH, {"POST"}),
    ]
    paths = app.openapi()["paths"]
    credentials = paths["/credentials/{store_id}"]["get"]
    assert [p["name"] for p in credentials["parameters"]] == ["store_id"]
    assert credentials["security"] == [{"CallerJWT": []}]
    assert credentials["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Bundle"
    }
    call = paths["/invoke/{store_id}/{action}"]["post"]
    assert [p["name"] for p in call["parameters"]] == ["store_id", "action"]
    assert call["security"] == [{"CallerJWT": []}]
    door = paths["/neto/{store_id}/do/WS/NetoAPI"]["post"]
    assert "NETOAPI_ACTION" in [p["name"] for p in door["parameters"]]


async def test_lean_requests_are_logged_and_counted_by_route_template(
    app, client, neto, auth, caplog
):
    await install_store(client, neto, "shop.example.com", store_id=STORE)
    caplog.set_level("INFO", logger="broker.access")
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=[STORE]))
    assert r.status_code == 200
    lines = [rec for rec in caplog.records if rec.name == "broker.access"]
    fields = lines[-1].fields  # type: ignore[attr-defined]
    assert fields["route"] == "/credentials/{store_id}"
    assert fields["store_id"] == STORE and fields["status"] == 200
    assert fields["caller"] == "test-service"


async def test_the_lean_routes_answer_without_fastapis_router(app, client, neto, auth):
    """With every route gone from FastAPI's router, the hot routes still answer (they are
    served ahead of it) and everything else is a 404: the lean way is really taken."""
    await install_store(client, neto, "shop.example.com", store_id=STORE)
    routes = app.router.routes
    app.router.routes = []
    try:
        read = auth("credentials:read", stores=[STORE])
        assert (await client.get(f"/credentials/{STORE}", headers=read)).status_code == 200
        call = auth("invoke", stores=[STORE])
        r = await client.post(f"/invoke/{STORE}/GetItem", headers=call, json={})
        assert r.status_code == 200 and r.json()["Ack"] == "Success"
        assert r.headers["x-content-type-options"] == "nosniff"  # the middleware ran
        r = await client.post(NETO.format(STORE), headers={"NETOAPI_ACTION": "GetItem", **call})
        assert r.status_code == 200
        # A lean path with a method it does not take goes FastAPI's way: no route is left.
        assert (await client.head(f"/credentials/{STORE}", headers=read)).status_code == 404
        assert (await client.get("/healthz")).status_code == 404
    finally:
        app.router.routes = routes


async def test_an_error_on_a_lean_route_is_the_handler_the_app_registered(
    app, client, neto, auth, monkeypatch
):
    """The lean way maps exceptions through the application's own handlers: a database
    that does not answer is a 503 envelope, anything unexpected a 500 envelope, both with
    the request id and no trace of the error's text."""
    await install_store(client, neto, "shop.example.com", store_id=STORE)
    cache = app.state.services.store_cache
    read = auth("credentials:read", stores=[STORE])

    async def unreachable(store_id: str) -> Any:
        raise ConnectionError("db-host-secret:5432 refused")

    monkeypatch.setattr(cache, "get", unreachable)
    r = await client.get(f"/credentials/{STORE}", headers=read)
    assert r.status_code == 503 and r.headers["x-broker-error"] == "service_unavailable"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert "db-host-secret" not in r.text

    async def broken(store_id: str) -> Any:
        raise RuntimeError("internal-secret")

    monkeypatch.setattr(cache, "get", broken)
    r = await client.post(f"/invoke/{STORE}/GetItem", headers=auth("invoke", stores=[STORE]))
    assert r.status_code == 500 and r.headers["x-broker-error"] == "internal_error"
    assert r.json()["request_id"] == r.headers["x-request-id"]
    assert "internal-secret" not in r.text
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_behind_a_root_path_the_hot_routes_are_still_served_lean(app, neto, auth):
    """A server given a root path (`uvicorn --root-path /broker`, a proxy mounting the
    broker under a prefix) puts it in front of the path: the hot routes still go the lean
    way (with FastAPI's router emptied only they can answer), and a request whose proxy
    stripped the prefix is served the same."""
    transport = httpx.ASGITransport(app=app, root_path="/broker")
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as c:
        await install_store(c, neto, "shop.example.com", store_id=STORE)  # via FastAPI
        # FastAPI's routes match without the root path too: a validation error on an
        # OAuth route is its 400, not the 422 of the JSON routes.
        assert (await c.get("/broker/oauth/install")).status_code == 400
        routes = app.router.routes
        app.router.routes = []
        try:
            read = auth("credentials:read", stores=[STORE])
            for path in (f"/broker/credentials/{STORE}", f"/credentials/{STORE}"):
                r = await c.get(path, headers=read)
                assert r.status_code == 200, (path, r.text)
                assert r.json()["store_id"] == STORE
            call = auth("invoke", stores=[STORE])
            r = await c.post(f"/broker/invoke/{STORE}/GetItem", headers=call, json={})
            assert r.status_code == 200 and r.json()["Ack"] == "Success"
            door = {"NETOAPI_ACTION": "GetItem", **call}
            assert (await c.post("/broker" + NETO.format(STORE), headers=door)).status_code == 200
            # The lean checks see the route's path: a bad store id is their 422.
            r = await c.get(f"/broker/credentials/{BAD_ID}", headers=read)
            assert r.status_code == 422 and r.headers["x-broker-error"] == "validation_error"
            assert (await c.get("/broker/healthz")).status_code == 404  # FastAPI's way
        finally:
            app.router.routes = routes
