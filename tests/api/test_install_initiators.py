"""Who starts an install is decided by the route, never by a token's `sub`: the anonymous
route's rows are Neto's (audited as `neto`, under the anonymous cap), the name `neto` is
reserved so no caller passes for them, and each caller has a cap of its own."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import select

from service.oauth.models import PendingInstall
from tests.support import assert_error, audit_rows, query_of

DOMAIN = "shop.example.com"


async def start(client: httpx.AsyncClient, auth: Any, sub: str, **body: Any) -> httpx.Response:
    return await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, **body},
        headers=auth("installs:start", sub=sub),
    )


async def pending_rows(app: Any) -> list[PendingInstall]:
    async with app.state.services.sessionmaker() as session:
        return list((await session.execute(select(PendingInstall))).scalars())


@pytest.mark.parametrize("sub", ["neto", "NETO", "Neto", "neto:0123456789abcdef", "neto:"])
async def test_a_caller_named_neto_is_refused(client, app, auth, sub):
    r = await start(client, auth, sub)
    body = assert_error(r, 401, "unauthorized")
    assert "reserved" in body["detail"] and "neto" in body["detail"], body
    assert await pending_rows(app) == [], "nothing may be pending"
    assert await audit_rows(app) == []


@pytest.mark.parametrize("sub", ["neto-billing", "netocorp", "my-neto", "neto.sync"])
async def test_names_that_only_begin_like_neto_are_callers(client, app, auth, sub):
    r = await start(client, auth, sub)
    assert r.status_code == 201, r.text
    [row] = await pending_rows(app)
    assert row.initiated_by == sub
    assert [a["actor"] for a in await audit_rows(app)] == [sub]


async def test_anonymous_rows_are_marked_by_the_route_and_audited_as_neto(client, app, neto):
    r = await client.get("/oauth/install", params={"store_domain": DOMAIN})
    assert r.status_code == 302
    [row] = await pending_rows(app)
    # A digest of the client's address prefix (the ASGI test client's 127.0.0.1), which no
    # caller can be named: never the address itself.
    assert row.initiated_by.startswith("neto:") and "127.0.0.1" not in row.initiated_by
    assert await audit_rows(app) == [], "an anonymous start writes no audit row"
    code = neto.authorize(DOMAIN, store_id="N11")
    state = query_of(r.headers["location"])["state"]
    done = await client.get("/oauth/callback", params={"code": code, "state": state})
    assert done.status_code == 200, done.text
    assert [(a["event"], a["actor"]) for a in await audit_rows(app)] == [
        ("install.created", "neto")
    ]


async def test_each_caller_has_a_cap_of_its_own(app_factory, settings_factory, auth):
    app = await app_factory(settings_factory(max_pending_installs=3))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        for _ in range(3):
            assert (await start(client, auth, "svc-a")).status_code == 201
        refused = await start(client, auth, "svc-a")
        body = assert_error(refused, 429, "rate_limited")
        assert "installs in progress" in body["detail"]
        assert int(refused.headers["retry-after"]) >= 1
        # Another caller, and the anonymous route, are not held by svc-a's installs.
        assert (await start(client, auth, "svc-b")).status_code == 201
        anonymous = await client.get("/oauth/install", params={"store_domain": DOMAIN})
        assert anonymous.status_code == 302, anonymous.text
    starts = [a for a in await audit_rows(app) if a["event"] == "install.started"]
    assert [a["actor"] for a in starts] == ["svc-a"] * 3 + ["svc-b"]
    assert len(await pending_rows(app)) == 5
