"""The merchant's OAuth install, both entry points, against the fake Neto."""

import asyncio
import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select, text, update
from starlette.responses import HTMLResponse, JSONResponse, Response

from service.db import utcnow
from service.errors import InvalidState
from service.installs.models import Install
from service.oauth import pending
from service.oauth.models import PendingInstall
from service.oauth.pending import CLAIM_LEASE
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    RETURN_PREFIX,
    install_store,
    query_of,
    start_install,
)

DOMAIN = "shop.example.com"
# A value as KeyRing.seal writes it: version, key id, base64url of nonce and ciphertext.
SEALED = re.compile(r"v\d+:[A-Za-z0-9._-]+:[A-Za-z0-9_-]{40,}")


async def rows(app, model):
    async with app.state.services.sessionmaker() as session:
        return list((await session.execute(select(model))).scalars())


async def callback(client, **params):
    return await client.get("/oauth/callback", params=params)


def scripted(response: Response):
    async def handler(request):
        return response

    return handler


# -- starting an install -------------------------------------------------------------


async def test_neto_initiated_install_redirects_to_neto_with_every_parameter(client, app, neto):
    r = await client.get("/oauth/install", params={"store_domain": "Shop.Example.com"})
    assert r.status_code == 302
    location = r.headers["location"]
    assert location.startswith(f"{app.state.services.settings.neto_oauth_url}/auth?")
    q = query_of(location)
    assert q["client_id"] == CLIENT_ID
    assert q["redirect_uri"] == "http://broker.test/oauth/callback"
    assert q["response_type"] == "code"
    assert q["store_domain"] == DOMAIN
    assert len(q["state"]) >= 43, "state must carry at least 128 bits (here 256)"
    pending = await rows(app, PendingInstall)
    assert len(pending) == 1 and pending[0].store_domain == DOMAIN
    assert q["state"] not in pending[0].state_hash, "only a hash of the state is stored"
    assert r.headers["referrer-policy"] == "no-referrer"


async def test_app_initiated_install_returns_the_authorize_url(client, app, auth):
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, "return_url": RETURN_PREFIX + "done"},
        headers=auth("installs:start"),
    )
    assert r.status_code == 201, r.text
    body = r.json()
    q = query_of(body["authorize_url"])
    assert q["store_domain"] == DOMAIN and q["response_type"] == "code"
    assert q["redirect_uri"] == "http://broker.test/oauth/callback"
    from datetime import datetime

    expires = datetime.fromisoformat(body["state_expires_at"])
    ttl = app.state.services.settings.state_ttl_seconds
    assert abs((expires - utcnow()).total_seconds() - ttl) < 10


@pytest.mark.parametrize(
    "return_url",
    [
        "https://app.example.com.evil.com/neto/x",
        "https://evil.com/neto/",
        "//evil.com/neto/",
        "javascript:alert(1)",
        "https://user@app.example.com/neto/",
        "http://app.example.com/neto/",  # scheme differs from the allowed prefix
        "https://app.example.com/other/",
        "https://app.example.com/neto/\r\nSet-Cookie: x=1",
    ],
)
async def test_return_url_outside_allowed_prefixes_is_refused(client, app, auth, return_url):
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, "return_url": return_url},
        headers=auth("installs:start"),
    )
    assert r.status_code == 400
    assert r.json()["error"] == "validation_error"
    assert r.headers["x-broker-error"] == "validation_error"
    assert await rows(app, PendingInstall) == []


@pytest.mark.parametrize(
    ("return_url", "stored"),
    [
        ("https://app.example.com/neto-evil.html", None),
        ("https://app.example.com/netoevil/", None),
        ("https://app.example.com/neto/../../logout", None),
        ("https://app.example.com/neto/..", None),
        ("https://app.example.com/neto/%2e%2E/logout", None),
        ("https://app.example.com/neto/./.%2E/admin", None),
        # Dot segments behind encoding or path parameters (issue 31, item 9), any case.
        ("https://app.example.com/neto/..%2flogout", None),
        ("https://app.example.com/neto/..%2Flogout", None),
        ("https://app.example.com/neto/%2e%2e%2flogout", None),
        ("https://app.example.com/neto/..;/logout", None),
        ("https://app.example.com/neto/..%5clogout", None),
        ("https://app.example.com/neto/..%5Clogout", None),
        ("https://app.example.com/neto/%2E%2E/logout", None),
        ("https://app.example.com/neto/done;jsessionid=1", None),
        # The query is not the path: an encoded slash there is someone's parameter.
        (
            "https://app.example.com/neto/done?next=%2Fhome;x",
            "https://app.example.com/neto/done?next=%2Fhome;x",
        ),
        ("https://app.example.com/neto", "https://app.example.com/neto"),
        ("https://app.example.com/neto/done?x=1", "https://app.example.com/neto/done?x=1"),
        ("https://app.example.com/neto/a/../done", "https://app.example.com/neto/done"),
        ("https://app.example.com/neto/.", "https://app.example.com/neto/"),
    ],
)
async def test_return_url_prefix_matches_whole_segments_after_dot_segments(
    app_factory, settings_factory, auth, return_url, stored
):
    # The prefix has no trailing slash: it must still stop at a segment boundary.
    app = await app_factory(settings_factory(return_url_prefixes="https://app.example.com/neto"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        r = await client.post(
            "/installs/start",
            json={"store_domain": DOMAIN, "return_url": return_url},
            headers=auth("installs:start"),
        )
    if stored is None:
        assert r.status_code == 400, f"{return_url} was admitted: {r.text}"
        assert r.headers["x-broker-error"] == "validation_error"
        assert await rows(app, PendingInstall) == []
    else:
        assert r.status_code == 201, r.text
        [pending] = await rows(app, PendingInstall)
        # What is stored (and later redirected to) is the URL that was checked.
        assert pending.return_url == stored


@pytest.mark.parametrize(
    "domain", ["localhost", "127.0.0.1", "shop.example.com:8080", "evil.com/x", "a.internal"]
)
async def test_hostile_domain_on_either_entry_point_is_refused(client, app, auth, domain):
    r = await client.get("/oauth/install", params={"store_domain": domain})
    assert r.status_code == 400
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["x-broker-error"] == "invalid_store_domain"
    r = await client.post(
        "/installs/start", json={"store_domain": domain}, headers=auth("installs:start")
    )
    assert r.status_code == 400 and r.json()["error"] == "invalid_store_domain"
    assert await rows(app, PendingInstall) == []


async def test_repeated_query_parameter_is_refused(client, app):
    r = await client.get("/oauth/install?store_domain=a.example.com&store_domain=b.example.com")
    assert r.status_code == 400
    assert await rows(app, PendingInstall) == []


async def test_without_oauth_credentials_the_routes_answer_503(app_factory, settings_factory, neto):
    import httpx

    app = await app_factory(settings_factory(neto_client_id=None, neto_client_secret=None))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as c:
        r = await c.get("/oauth/install", params={"store_domain": DOMAIN})
        assert r.status_code == 503 and r.headers["x-broker-error"] == "oauth_not_configured"
        r = await c.get("/healthz")
        assert r.status_code == 200


# -- the callback ---------------------------------------------------------------------


async def test_callback_exchanges_the_code_once_and_stores_the_install(client, app, neto):
    q = await start_install(client, DOMAIN)
    code = neto.authorize(DOMAIN, store_id="N42")
    r = await callback(client, code=code, state=q["state"])
    assert r.status_code == 200
    assert "connected" in r.text and DOMAIN in r.text
    assert len(neto.token_requests) == 1
    form = neto.token_requests[0].form
    assert form["code"] == code and form["access_code"] == code
    assert form["grant_type"] == "authorization_code"
    assert form["client_id"] == CLIENT_ID and form["client_secret"] == CLIENT_SECRET
    assert form["redirect_uri"] == q["redirect_uri"], "redirect_uri must match the authorize one"
    [install] = await rows(app, Install)
    assert (install.store_id, install.store_domain, install.status) == ("N42", DOMAIN, "active")
    assert install.auth_method == "oauth" and install.timezone == "Australia/Brisbane"
    assert install.scope == "api user address"
    [pending] = await rows(app, PendingInstall)
    assert pending.consumed_at is not None and pending.store_id == "N42"


async def test_callback_redirects_to_the_return_url(client, app, neto, auth):
    r = await client.post(
        "/installs/start",
        json={"store_domain": DOMAIN, "return_url": RETURN_PREFIX + "done?tab=1"},
        headers=auth("installs:start"),
    )
    state = query_of(r.json()["authorize_url"])["state"]
    r = await callback(client, code=neto.authorize(DOMAIN, store_id="N7"), state=state)
    assert r.status_code == 302
    assert r.headers["location"] == RETURN_PREFIX + "done?tab=1&store_id=N7&status=installed"


async def test_state_replay_is_refused_without_a_second_exchange(client, app, neto):
    got = await install_store(client, neto, DOMAIN)
    r = await callback(client, code=got["code"], state=got["state"])
    assert r.status_code == 400
    assert r.headers["x-broker-error"] == "invalid_state"
    assert len(neto.token_requests) == 1
    # A fresh code with the used state is refused too.
    r = await callback(client, code=neto.authorize(DOMAIN), state=got["state"])
    assert r.status_code == 400 and len(neto.token_requests) == 1


async def test_unknown_state_is_refused(client, neto):
    r = await callback(client, code=neto.authorize(DOMAIN), state="never-issued")
    assert r.status_code == 400 and r.headers["x-broker-error"] == "invalid_state"
    assert neto.token_requests == []


async def test_expired_state_is_refused(client, app, neto):
    q = await start_install(client, DOMAIN)
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(PendingInstall).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    r = await callback(client, code=neto.authorize(DOMAIN), state=q["state"])
    assert r.status_code == 400 and r.headers["x-broker-error"] == "state_expired"
    assert "expired" in r.text and neto.token_requests == []


async def test_missing_code_or_state_is_a_page_not_a_crash(client, neto):
    r = await callback(client, state="x")
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/html")
    r = await client.get("/oauth/callback?code=a&code=b&state=x")
    assert r.status_code == 400


async def test_access_denied_callback_shows_a_page_and_exchanges_nothing(client, neto):
    q = await start_install(client, DOMAIN)
    r = await callback(client, error="access_denied", state=q["state"],
                       error_description="<script>alert(1)</script>")  # fmt: skip
    assert r.status_code == 400
    assert r.headers["x-broker-error"] == "install_denied"
    assert "access_denied" in r.text and "<script>" not in r.text
    assert "start the install again" in r.text
    assert neto.token_requests == []


async def test_concurrent_callbacks_with_one_state_make_one_exchange(client, app, neto):
    q = await start_install(client, DOMAIN)
    code = neto.authorize(DOMAIN, store_id="N9")
    results = await asyncio.gather(
        *(callback(client, code=code, state=q["state"]) for _ in range(20))
    )
    statuses = sorted(r.status_code for r in results)
    assert statuses.count(200) == 1, statuses
    assert all(s == 400 for s in statuses if s != 200)
    assert len(neto.token_requests) == 1
    assert [i.store_id for i in await rows(app, Install)] == ["N9"]


def _failures():
    async def slow(request):
        await asyncio.sleep(3)
        return JSONResponse({})

    return [
        ("4xx", scripted(JSONResponse({"error": "invalid_grant"}, status_code=400)), 502,
         "token_exchange_failed"),
        ("5xx", scripted(JSONResponse({"error": "server_error"}, status_code=503)), 502,
         "token_exchange_failed"),
        ("html", scripted(HTMLResponse("<html>maintenance</html>")), 502, "token_exchange_failed"),
        ("malformed", scripted(Response('{"access_token": "abc', media_type="application/json")),
         502, "token_exchange_failed"),
        ("no-token", scripted(JSONResponse({"store_id": "N1", "store_domain": DOMAIN})), 502,
         "token_exchange_failed"),
        ("huge", scripted(JSONResponse({"access_token": "t", "pad": "x" * 200_000})), 502,
         "token_exchange_failed"),
        ("mismatch", scripted(JSONResponse({"access_token": "tok_leaked_secret", "store_id": "N1",
                                            "store_domain": "other.example.com"})), 502,
         "store_domain_mismatch"),
        ("timeout", slow, 504, "upstream_timeout"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "handler", "status", "code"),
    _failures(),
    ids=lambda v: v if isinstance(v, str) else "",
)
async def test_token_endpoint_failures_end_on_an_error_page_with_nothing_stored(
    app_factory, settings_factory, neto, name, handler, status, code
):
    import httpx

    app = await app_factory(settings_factory(token_exchange_timeout_seconds=0.5))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        q = await start_install(client, DOMAIN)
        first_code = neto.authorize(DOMAIN, store_id="N5")
        neto.token_responses.append(handler)
        r = await callback(client, code=first_code, state=q["state"])
        assert r.status_code == status, r.text
        assert r.headers["x-broker-error"] == code
        assert r.headers["content-type"].startswith("text/html")
        assert "Traceback" not in r.text and "tok_leaked_secret" not in r.text
        assert CLIENT_SECRET not in r.text and first_code not in r.text
        assert await rows(app, Install) == []
        # The state is not burned: the same code is never exchanged again...
        r = await callback(client, code=first_code, state=q["state"])
        assert r.status_code == 400 and len(neto.token_requests) == 1
        # ...but the merchant can approve again and finish with a new code.
        r = await callback(client, code=neto.authorize(DOMAIN, store_id="N5"), state=q["state"])
        assert r.status_code == 200, r.text
        assert [i.store_id for i in await rows(app, Install)] == ["N5"]


@pytest.mark.parametrize("store_id", ["D4\n", "D4\r\n", " D4", "D4 ", "D4\u00a0"])
async def test_a_store_id_is_matched_whole(client, app, neto, auth, store_id):
    q = await start_install(client, DOMAIN)
    r = await callback(client, code=neto.authorize(DOMAIN, store_id=store_id), state=q["state"])
    assert r.status_code == 502, r.text
    assert r.headers["x-broker-error"] == "token_exchange_failed"
    assert await rows(app, Install) == [], "an id no route can address must not be stored"
    # The store id Neto meant works, and can be read and revoked through the API.
    q = await start_install(client, DOMAIN)
    r = await callback(client, code=neto.authorize(DOMAIN, store_id="D4"), state=q["state"])
    assert r.status_code == 200, r.text
    assert (await client.get("/installs/D4", headers=auth("installs:read"))).status_code == 200
    assert (await client.delete("/installs/D4", headers=auth("installs:admin"))).status_code == 200


async def test_camel_case_user_names_are_accepted(client, app, neto, auth):
    await install_store(
        client, neto, DOMAIN, store_id="N3",
        user={"id": "9", "firstName": "Camel", "lastName": "Case", "email": "c@shop.au"},
    )  # fmt: skip
    r = await client.get("/installs/N3", headers=auth("installs:read"))
    assert r.json()["user"] == {
        "id": "9", "first_name": "Camel", "last_name": "Case", "email": "c@shop.au"
    }  # fmt: skip


async def test_reinstall_keeps_the_id_replaces_the_token_and_reactivates(client, app, neto, auth):
    first = await install_store(client, neto, DOMAIN, store_id="N8")
    [before] = await rows(app, Install)
    r = await client.delete("/installs/N8", headers=auth("installs:admin"))
    assert r.status_code == 200 and r.json()["status"] == "revoked"
    second = await install_store(client, neto, DOMAIN, store_id="N8")
    assert second["access_token"] != first["access_token"]
    [after] = await rows(app, Install)
    assert after.status == "active" and after.revoked_at is None
    assert after.installed_at == before.installed_at
    assert after.secret_sealed != before.secret_sealed
    assert after.token_fingerprint != before.token_fingerprint


async def test_the_database_holds_no_plaintext_token_email_or_address(client, app, neto):
    got = await install_store(client, neto, DOMAIN, store_id="N77")
    values, sealed = [], []
    async with app.state.services.engine.connect() as conn:
        for table in ("installs", "pending_installs", "audit_events"):
            for row in (await conn.execute(text(f"SELECT * FROM {table}"))).all():  # noqa: S608
                for value in map(str, row):
                    # Ciphertext is random: a short plaintext like "Mia" turns up in it by
                    # chance now and then. It is checked to be sealed, not searched.
                    (sealed if SEALED.fullmatch(value) else values).append(value)
    assert len(sealed) >= 3, "the token, the user and the address are sealed"
    dump = " ".join(values)
    for plaintext in (got["access_token"], f"owner@{DOMAIN}", "123 Sample St", "Mia",
                      got["code"], got["state"]):  # fmt: skip
        assert plaintext not in dump, f"{plaintext!r} is readable in the database"
    assert "N77" in dump  # the dump did read the rows


async def test_a_used_link_stays_used_after_its_claim_lease_runs_out(client, app, neto):
    """The claim lease (120 s) only covers a callback in progress; a consumed state is
    refused for good, so a used install link with a fresh code never reinstalls."""
    got = await install_store(client, neto, DOMAIN)
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(PendingInstall).values(claimed_at=utcnow() - CLAIM_LEASE - timedelta(seconds=1))
        )
    [before] = await rows(app, Install)
    r = await callback(client, code=neto.authorize(DOMAIN, store_id="N1001"), state=got["state"])
    assert r.status_code == 400 and r.headers["x-broker-error"] == "invalid_state", r.text
    assert "already used" in r.text
    assert len(neto.token_requests) == 1, "a used link exchanged a second code"
    [after] = await rows(app, Install)
    assert after.token_fingerprint == before.token_fingerprint
    assert after.updated_at == before.updated_at


async def test_a_refused_connection_to_the_token_endpoint_is_not_reported_as_a_timeout(
    app_factory, settings_factory, neto
):
    import socket

    import httpx

    with socket.socket() as closed:  # bound, never listening: connects are refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        app = await app_factory(
            settings_factory(neto_oauth_url=f"http://127.0.0.1:{port}/oauth/v2")
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
        ) as client:
            q = await start_install(client, DOMAIN)
            r = await callback(client, code=neto.authorize(DOMAIN), state=q["state"])
    assert r.status_code == 502, r.text
    assert r.headers["x-broker-error"] == "token_exchange_failed"
    assert "could not be reached" in r.text
    assert await rows(app, Install) == []


async def test_a_failed_callback_frees_only_its_own_claim(client, app, neto):
    """A callback whose exchange failed lets its own state be claimed again, and no
    other: another install's callback in progress keeps its claim, so a second code for
    that state is refused instead of exchanged alongside it."""
    other = "other.example.com"
    mine, theirs = await start_install(client, DOMAIN), await start_install(client, other)
    in_progress = utcnow()
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(PendingInstall)
            .where(PendingInstall.store_domain == other)
            .values(claimed_at=in_progress, claim_code_hash="0" * 64)
        )
    neto.token_responses.append(scripted(JSONResponse({"error": "server_error"}, 503)))
    r = await callback(client, code=neto.authorize(DOMAIN, store_id="N5"), state=mine["state"])
    assert r.status_code == 502, r.text
    claims = {p.store_domain: p.claimed_at for p in await rows(app, PendingInstall)}
    assert claims[DOMAIN] is None, "the failed callback's own claim was kept"
    assert claims[other] is not None, "another install's claim was freed"
    r = await callback(client, code=neto.authorize(other, store_id="N6"), state=theirs["state"])
    assert r.status_code == 400 and "already being completed" in r.text, r.text
    assert len(neto.token_requests) == 1


async def test_a_claimed_state_refuses_another_code_until_its_lease_runs_out(client, app, neto):
    """A callback in progress holds the state for the claim lease: a second approval's
    code is refused meanwhile, and may take the state over once the lease ran out (the
    first callback died)."""
    q = await start_install(client, DOMAIN)
    assert len(q["state"]) == 43, "the state is 32 random bytes, base64url"
    sessionmaker = app.state.services.sessionmaker
    async with sessionmaker() as session, session.begin():
        claimed = await pending.claim(session, q["state"], "code-1")
        assert claimed.claimed_at is not None
    async with sessionmaker() as session, session.begin():
        with pytest.raises(InvalidState, match="already being completed"):
            await pending.claim(session, q["state"], "code-2")
    async with sessionmaker() as session, session.begin():
        await session.execute(
            update(PendingInstall).values(claimed_at=utcnow() - CLAIM_LEASE - timedelta(seconds=1))
        )
    async with sessionmaker() as session, session.begin():
        taken = await pending.claim(session, q["state"], "code-2")
        assert taken.claimed_at is not None and taken.claimed_at > utcnow() - CLAIM_LEASE
