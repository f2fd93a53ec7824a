"""Hostile data: unicode look-alike store domains, and a sealed secret moved from one
store's row to another's directly in the database."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select, update

from service.audit.models import AuditEvent
from service.installs.models import Install
from service.oauth.models import PendingInstall
from tests.hostile.support import footprint
from tests.support import install_store, query_of, start_install

REAL = "shop.example.com"


@pytest.mark.parametrize(
    ("lookalike", "encoded"),
    [
        ("sh\u043ep.example.com", "xn--shp-ted.example.com"),  # Cyrillic o
        ("\u0455hop.example.com", "xn--hop-ehd.example.com"),  # Cyrillic dze
        ("straße.example.com", "xn--strae-oqa.example.com"),  # not "strasse"
    ],
)
async def test_a_lookalike_domain_is_a_different_store(client, app, neto, lookalike, encoded):
    r = await client.get("/oauth/install", params={"store_domain": lookalike})
    assert r.status_code == 302
    assert query_of(r.headers["location"])["store_domain"] == encoded
    async with app.state.services.sessionmaker() as session:
        pending = (await session.execute(select(PendingInstall))).scalar_one()
    assert pending.store_domain == encoded != REAL


async def test_ss_and_sharp_s_domains_stay_distinct(client, app):
    for domain in ("strasse.example.com", "straße.example.com"):
        r = await client.get("/oauth/install", params={"store_domain": domain})
        assert r.status_code == 302
    async with app.state.services.sessionmaker() as session:
        pending = (await session.execute(select(PendingInstall))).scalars()
        domains = {p.store_domain for p in pending}
    assert domains == {"strasse.example.com", "xn--strae-oqa.example.com"}


@pytest.mark.parametrize("invisible", ["sh\u200dop.example.com", "sh\u200cop.example.com"])
async def test_invisible_joiners_are_refused_not_dropped(client, app, neto, invisible):
    before = await footprint(app, neto)
    r = await client.get("/oauth/install", params={"store_domain": invisible})
    assert r.status_code == 400 and r.headers["x-broker-error"] == "invalid_store_domain"
    assert await footprint(app, neto) == before


@pytest.mark.parametrize("answered", ["sh\u043ep.example.com", "xn--shp-ted.example.com"])
async def test_neto_naming_a_lookalike_of_the_started_store_is_a_mix_up(
    client, app, neto, answered
):
    q = await start_install(client, REAL)
    code = neto.authorize(answered, store_id="N1001")  # the grant names the look-alike
    r = await client.get("/oauth/callback", params={"state": q["state"], "code": code})
    assert r.status_code == 502 and r.headers["x-broker-error"] == "store_domain_mismatch"
    assert len(neto.token_requests) == 1
    async with app.state.services.sessionmaker() as session:
        assert not list((await session.execute(select(Install))).scalars())


# -- a ciphertext moved between rows ---------------------------------------------------


async def move_sealed(app, column: str, source: str, target: str) -> None:
    async with app.state.services.sessionmaker() as session, session.begin():
        query = select(getattr(Install, column)).where(Install.store_id == source)
        sealed = (await session.execute(query)).scalar_one()
        await session.execute(
            update(Install).where(Install.store_id == target).values({column: sealed})
        )


async def test_a_secret_copied_from_another_store_fails_loudly(client, app, neto, auth, caplog):
    a = await install_store(client, neto, "shop-a.example.com", store_id="N1001")
    b = await install_store(client, neto, "shop-b.example.com", store_id="N2002")
    await move_sealed(app, "secret_sealed", "N1001", "N2002")
    app.state.services.store_cache.clear()
    headers = auth("credentials:read installs:read", stores=["*"])
    before = await footprint(app, neto)

    with caplog.at_level(logging.ERROR, logger="broker"):
        r = await client.get("/credentials/N2002", headers=headers)
    assert r.status_code == 500, r.text
    assert r.headers["x-broker-error"] == "store_secret_unreadable"
    assert r.json()["error"] == "store_secret_unreadable"
    assert a["access_token"] not in r.text and b["access_token"] not in r.text
    logged = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert logged, "operators see it in the log at ERROR"
    assert any(
        getattr(rec, "fields", {}).get("store_id") == "N2002"
        and "copied from another row" in rec.getMessage()
        for rec in logged
    ), [rec.getMessage() for rec in logged]
    assert all(a["access_token"] not in str(getattr(rec, "fields", "")) for rec in logged)
    after = await footprint(app, neto)
    assert after == before, "no bundle audited, nothing sent upstream"

    detail = await client.get("/installs/N2002", headers=headers)
    assert detail.status_code == 200, detail.text
    assert detail.json()["secret_readable"] is False
    assert a["access_token"] not in detail.text

    # The store the ciphertext came from is untouched.
    ok = await client.get("/credentials/N1001", headers=headers)
    assert ok.status_code == 200 and ok.json()["headers"]["X_SECRET_KEY"] == a["access_token"]
    assert (await client.get("/installs/N1001", headers=headers)).json()["secret_readable"]


async def test_a_profile_copied_from_another_store_is_flagged_not_shown(client, app, neto, auth):
    await install_store(client, neto, "shop-a.example.com", store_id="N1001")
    await install_store(client, neto, "shop-b.example.com", store_id="N2002")
    await move_sealed(app, "user_sealed", "N1001", "N2002")
    headers = auth("installs:read")
    r = await client.get("/installs/N2002", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["secret_readable"] is False and body["user"] is None
    assert "owner@shop-a.example.com" not in r.text
    assert body["billing_address"] is not None, "the columns that open still show"


async def test_reinstalling_repairs_an_unreadable_row(client, app, neto, auth):
    await install_store(client, neto, "shop-a.example.com", store_id="N1001")
    await install_store(client, neto, "shop-b.example.com", store_id="N2002")
    await move_sealed(app, "secret_sealed", "N1001", "N2002")
    app.state.services.store_cache.clear()
    again = await install_store(client, neto, "shop-b.example.com", store_id="N2002")
    r = await client.get("/credentials/N2002", headers=auth("credentials:read", stores=["N2002"]))
    assert r.status_code == 200 and r.json()["headers"]["X_SECRET_KEY"] == again["access_token"]
    async with app.state.services.sessionmaker() as session:
        events = [e.event for e in (await session.execute(select(AuditEvent))).scalars()]
    assert events.count("install.reinstalled") == 1
