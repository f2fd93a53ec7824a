"""A database writer who changes a pending install cannot redirect the merchant or take
the app's `app_state`: the return URL, store domain and initiator are bound into the row's
sealed binding, and the return URL is checked again at the callback. A changed row fails
closed with the merchant's error page before the code is exchanged: no redirect, no
`app_state` anywhere, nothing installed."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from service.installs.models import Install
from service.oauth.models import PendingInstall
from tests.support import RETURN_PREFIX, query_of

DOMAIN = "shop.example.com"
APP_STATE = "app-session-31337-secret"


async def start(client: httpx.AsyncClient, auth: Any, **body: Any) -> httpx.Response:
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, **body},
        headers=auth("installs:start"),
    )
    assert r.status_code == 201, r.text
    return r


async def pending_rows(app: Any) -> list[PendingInstall]:
    async with app.state.services.sessionmaker() as session:
        rows = await session.execute(select(PendingInstall).order_by(PendingInstall.id))
        return list(rows.scalars())


async def change(app: Any, row_id: int | None, **values: Any) -> None:
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(PendingInstall).where(PendingInstall.id == row_id).values(**values)
        )


async def installs(app: Any) -> list[Install]:
    async with app.state.services.sessionmaker() as session:
        return list((await session.execute(select(Install))).scalars())


def assert_refused_page(r: httpx.Response) -> None:
    """The merchant's error page: HTML, a 4xx, no redirect, no app_state in it."""
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/html"), r.headers
    assert r.headers["x-broker-error"] == "invalid_state"
    assert "location" not in r.headers, r.headers["location"]
    assert APP_STATE not in r.text and "Start the install again" in r.text


async def finish(client: httpx.AsyncClient, neto: Any, started: httpx.Response) -> Any:
    state = query_of(started.json()["authorize_url"])["state"]
    code = neto.authorize(DOMAIN, store_id="N31")
    return await client.get("/oauth/callback", params={"code": code, "state": state})


@pytest.mark.parametrize(
    "values",
    [
        {"return_url": "https://evil.example/steal"},
        # Still under the allowed prefix: only the binding tells it from the original.
        {"return_url": RETURN_PREFIX + "other-page"},
        {"return_url": None},
        {"store_domain": "other.example.com"},
        {"initiated_by": "someone-else"},
        {"app_state_sealed": None},
    ],
    ids=["evil-url", "other-allowed-url", "no-url", "domain", "initiator", "no-binding"],
)
async def test_a_changed_pending_row_fails_closed(client, app, neto, auth, caplog, values):
    started = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state=APP_STATE)
    [row] = await pending_rows(app)
    await change(app, row.id, **values)
    with caplog.at_level(logging.ERROR, logger="broker"):
        r = await finish(client, neto, started)
    assert_refused_page(r)
    assert neto.token_requests == [], "the code must not be exchanged for a changed row"
    assert await installs(app) == [], "nothing may be installed"
    assert any("sealed binding" in rec.getMessage() for rec in caplog.records)
    assert APP_STATE not in caplog.text


async def test_a_binding_copied_from_another_row_fails_closed(client, app, neto, auth):
    """The writer's own install (same domain, their return URL) lends its binding."""
    victim = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state=APP_STATE)
    await start(client, auth, return_url=RETURN_PREFIX + "theirs", app_state="theirs")
    first, second = await pending_rows(app)
    await change(
        app, first.id, return_url=second.return_url, app_state_sealed=second.app_state_sealed
    )
    assert_refused_page(await finish(client, neto, victim))
    assert neto.token_requests == [] and await installs(app) == []


async def test_a_neto_initiated_row_is_bound_too(client, app, neto):
    r = await client.get("/oauth/install", params={"store_domain": DOMAIN})
    state = query_of(r.headers["location"])["state"]
    [row] = await pending_rows(app)
    await change(app, row.id, return_url="https://evil.example/steal")
    code = neto.authorize(DOMAIN, store_id="N31")
    refused = await client.get("/oauth/callback", params={"code": code, "state": state})
    assert refused.status_code == 400 and "location" not in refused.headers
    assert refused.headers["content-type"].startswith("text/html")
    assert neto.token_requests == [] and await installs(app) == []


async def test_the_return_url_is_checked_again_at_the_callback(
    app_factory, settings_factory, neto, auth
):
    """An operator who narrows BROKER_RETURN_URL_PREFIXES stops installs in flight from
    going back to a prefix it no longer allows (the row itself is untouched)."""
    wide = await app_factory(settings_factory(return_url_prefixes=RETURN_PREFIX))
    narrow = await app_factory(settings_factory(return_url_prefixes=RETURN_PREFIX + "only/"))
    transport = httpx.ASGITransport(app=wide)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        started = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state=APP_STATE)
    transport = httpx.ASGITransport(app=narrow)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        r = await finish(client, neto, started)
    assert_refused_page(r)
    assert neto.token_requests == [] and await installs(narrow) == []
