"""An app-initiated install's opaque `app_state`: sealed in the pending row, echoed on the
return redirect, refused where it could never come back, and a tampered one fails the
callback closed before the code is exchanged."""

import logging
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from sqlalchemy import select, text, update

from service.installs.models import Install
from service.oauth.models import PendingInstall
from service.security.crypto import Context
from tests.support import RETURN_PREFIX, query_of

DOMAIN = "shop.example.com"
# Every character a query string must escape, and the printable ends of the range.
SPECIAL = " &=?#%+/;\"<>'~!{}[]|^`\\:@,*$()-_.sess1on"


async def start(client, auth, **body):
    return await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, **body},
        headers=auth("installs:start"),
    )


async def pending_rows(app):
    async with app.state.services.sessionmaker() as session:
        rows = select(PendingInstall).order_by(PendingInstall.id)  # oldest first, on any database
        return list((await session.execute(rows)).scalars())


async def finish(client, neto, started, store_id="N7"):
    state = query_of(started.json()["authorize_url"])["state"]
    code = neto.authorize(DOMAIN, store_id=store_id)
    return await client.get("/oauth/callback", params={"code": code, "state": state})


async def test_app_state_round_trips_url_encoded_on_the_return_redirect(client, app, neto, auth):
    started = await start(client, auth, return_url=RETURN_PREFIX + "done?tab=1", app_state=SPECIAL)
    assert started.status_code == 201, started.text
    r = await finish(client, neto, started)
    assert r.status_code == 302, r.text
    location = r.headers["location"]
    assert location == (
        RETURN_PREFIX
        + "done?tab=1&"
        + urlencode({"store_id": "N7", "status": "installed", "app_state": SPECIAL})
    )
    # Decoded by any query parser, it is exactly what the app sent, and nothing leaks out
    # of the query into the fragment or the path.
    parts = urlsplit(location)
    assert parts.fragment == "" and parts.path == "/neto/done"
    assert parse_qsl(parts.query) == [
        ("tab", "1"), ("store_id", "N7"), ("status", "installed"), ("app_state", SPECIAL),
    ]  # fmt: skip


async def test_without_app_state_the_redirect_carries_none(client, app, neto, auth):
    r = await finish(client, neto, await start(client, auth, return_url=RETURN_PREFIX + "x"))
    assert r.status_code == 302
    assert "app_state" not in query_of(r.headers["location"])


async def test_app_state_is_stored_sealed_never_in_clear(client, app, auth):
    value = "my-app-session-4242-" + "z" * 40
    r = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state=value)
    assert r.status_code == 201, r.text
    async with app.state.services.engine.connect() as conn:
        [row] = (await conn.execute(text("SELECT * FROM pending_installs"))).mappings().all()
    dump = " ".join(str(v) for v in row.values())
    assert value not in dump and "my-app-session" not in dump, "app_state is readable"
    assert str(row["app_state_sealed"]).startswith("v1:"), row["app_state_sealed"]
    # Bound to its table, column and state, and to where the merchant goes back, for
    # which store and who started it (tests/hostile/test_pending_rows.py).
    bound = (RETURN_PREFIX + "done", DOMAIN, "test-service")
    ctx = Context("pending_installs", "app_state_sealed", row["state_hash"], bound)
    assert app.state.services.keyring.open(row["app_state_sealed"], ctx) == value.encode()


@pytest.mark.parametrize(
    ("app_state", "status"),
    [("a" * 512, 201), ("a" * 513, 422), ("", 422), ("line\nbreak", 422), ("caf\u00e9", 422)],
)
async def test_app_state_is_bounded_printable_ascii(client, app, auth, app_state, status):
    r = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state=app_state)
    assert r.status_code == status, r.text
    if status == 422:
        assert r.json()["error"] == "validation_error"
        assert await pending_rows(app) == [], "a refused start must leave nothing pending"


async def test_app_state_without_return_url_is_refused(client, app, auth):
    for body in ({"app_state": "s1"}, {"app_state": "s1", "return_url": ""}):
        r = await start(client, auth, **body)
        assert r.status_code == 400, r.text
        assert r.headers["x-broker-error"] == "validation_error"
        assert "return_url" in r.json()["detail"]
    assert await pending_rows(app) == [], "nothing is left pending"


@pytest.mark.parametrize("tamper", ["flip", "copy"])
async def test_a_tampered_app_state_fails_closed_before_the_code_is_exchanged(
    client, app, neto, auth, caplog, tamper
):
    """A value that does not open is a changed row: never echoed, nothing installed, the
    code not spent (the merchant starts again), operators told."""
    mine = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state="mine")
    other = await start(client, auth, return_url=RETURN_PREFIX + "done", app_state="theirs")
    assert mine.status_code == other.status_code == 201
    first, second = await pending_rows(app)
    assert first.app_state_sealed and second.app_state_sealed
    if tamper == "flip":
        sealed = first.app_state_sealed
        forged = sealed[:-2] + ("AA" if sealed[-2:] != "AA" else "BB")
    else:  # a genuine value, sealed for another pending row
        forged = second.app_state_sealed
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(PendingInstall)
            .where(PendingInstall.id == first.id)
            .values(app_state_sealed=forged)
        )
    with caplog.at_level(logging.ERROR, logger="broker"):
        r = await finish(client, neto, mine, store_id="N8")
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert "location" not in r.headers
    assert neto.token_requests == [], "the code must not be exchanged"
    async with app.state.services.sessionmaker() as session:
        assert await session.get(Install, "N8") is None, "nothing may be installed"
    logged = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert any("sealed binding" in rec.getMessage() for rec in logged), logged
    assert "theirs" not in caplog.text and "mine" not in caplog.text
