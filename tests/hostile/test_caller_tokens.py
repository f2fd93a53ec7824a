"""Caller tokens at the edges: names (`sub`) at the size limit, time claims no float
holds, and what a database error may print.

A 256-character `sub` is valid; every column that records a caller must hold it (a
200-character one made `POST /installs/start` a 500 on PostgreSQL). Longer ones are a
401 at verification. A database error's message never carries the bound values."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from service.audit.models import AuditEvent
from service.oauth.models import PendingInstall
from tests.support import AUDIENCE, hs256, query_of

DOMAIN = "shop.example.com"
# 256 characters, multibyte ones included: PostgreSQL's varchar(n) counts characters.
LONG_SUB = "svc-" + "é" * 100 + "x" * 152


async def test_a_256_character_sub_fits_every_column(app, client, neto, auth):
    assert len(LONG_SUB) == 256
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN},
        headers=auth("installs:start", sub=LONG_SUB),
    )
    assert r.status_code == 201, r.text
    state = query_of(r.json()["authorize_url"])["state"]
    r = await client.get(
        "/oauth/callback", params={"code": neto.authorize(DOMAIN, store_id="N1"), "state": state}
    )
    assert r.status_code == 200, r.text
    r = await client.get(
        "/credentials/N1", headers=auth("credentials:read", sub=LONG_SUB, stores=["N1"])
    )
    assert r.status_code == 200, r.text
    r = await client.post(
        "/invoke/N1/GetItem", json={}, headers=auth("invoke", sub=LONG_SUB, stores=["N1"])
    )
    assert r.status_code == 200, r.text
    r = await client.delete("/installs/N1", headers=auth("installs:admin", sub=LONG_SUB))
    assert r.status_code == 200, r.text

    async with app.state.services.sessionmaker() as session:
        pending = (await session.execute(select(PendingInstall))).scalar_one()
        events = (
            await session.execute(select(AuditEvent).where(AuditEvent.actor == LONG_SUB))  # type: ignore[arg-type]
        ).scalars()
        recorded = {e.event for e in events}
    assert pending.initiated_by == LONG_SUB, "the name must be stored whole, not cut"
    assert {"install.started", "install.created", "bundle.issued", "install.revoked"} <= recorded, (
        recorded
    )


@pytest.mark.parametrize("length", [257, 1000])
async def test_a_longer_sub_is_a_401_at_verification(app, client, neto, auth, length):
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN},
        headers=auth("installs:start", sub="s" * length),
    )
    assert r.status_code == 401, r.text
    assert r.headers["x-broker-error"] == "unauthorized"
    assert "256" in r.json()["detail"]
    async with app.state.services.sessionmaker() as session:
        assert (await session.execute(select(PendingInstall))).first() is None


async def test_a_database_error_never_prints_its_parameters(app):
    secret = "PARAM-LEAKCHECK-7f3a"
    async with app.state.services.engine.connect() as conn:
        with pytest.raises(DBAPIError) as caught:
            await conn.execute(text("INSERT INTO no_such_table VALUES (:v)"), {"v": secret})
    message = str(caught.value)
    assert "no_such_table" in message, message  # the statement is still named
    assert secret not in message, f"the bound value leaked into the error: {message}"


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
async def test_a_signed_token_with_a_time_claim_of_ten_to_the_400_is_a_401(client, claim):
    now = int(time.time())
    claims = {"sub": "svc", "aud": AUDIENCE, "iat": now, "exp": now + 60, "scope": "installs:read"}
    claims[claim] = 10**400  # valid JSON, valid signature; overflows a float
    r = await client.get("/installs", headers={"Authorization": f"Bearer {hs256(claims)}"})
    assert r.status_code == 401, r.text
    assert r.headers["x-broker-error"] == "unauthorized"
    assert f"`{claim}`" in r.json()["detail"]
