"""Invokes, bundles, a revoke and a reinstall of one store, all at once from many tasks;
and invokes while the encryption key rotates.

On this replica no invoke may be sent upstream with the revoked token once the revoke has
answered: a call that read the store before the revoke, then waited (for a slot, or
between retries), checks again before each attempt. Neto's own record of what arrived,
and when, is the witness. No bundle with the revoked token is issued after the revoke
answered either, and the store ends in a legal state: revoked with no secret, or active
with the new token, never `reauth_required` because Neto refused a token the reinstall
had already replaced.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from service.installs.models import Install
from service.installs.sealing import ROTATION, fingerprint
from service.keys import rotation as keys
from service.security.crypto import KeyRing, generate_key
from tests.fakes import neto as fake
from tests.races.test_revoke_handoff import observe_sends
from tests.support import ENC_KEY, install_store, start_install

TASKS, PER_TASK = 8, 8
ROUNDS = 3
# Loopback delivery and the fake's thread picking the request up: a request whose bytes
# left before the revoke answered may be recorded this much later.
DELIVERY = 0.005
# Neto answers "busy" this often (scripted below): a read retries it, and passes it on as
# 503 only once its retries ran out, so at most this many invokes can answer 503.
BUSY = 6
# Every answer an invoke may give, with its error code. When each is legal is checked
# against the revoke's and the reinstall's windows after the race.
ERROR_CODES = {
    200: None,
    503: None,  # Neto's own "busy", passed through
    429: "rate_limited",  # no slot freed up within the wait
    410: "store_revoked",
    502: "upstream_unauthorized",  # Neto refused the old token: the merchant approved again
    409: "store_reauth_required",  # ... and the store was flagged before the reinstall
}


@dataclass
class Window:
    started: float = 0.0
    finished: float = 0.0


@dataclass
class Invoke:
    started: float
    finished: float
    status: int


@pytest.fixture
async def racy_app(app_factory, settings_factory, neto):
    # Two slots per store: most calls queue for one, the window this race is about.
    return await app_factory(settings_factory(store_max_in_flight=2))


@pytest.mark.parametrize(
    ("revoke_after", "reinstall_after"),
    [(0.03, 0.12), (0.12, 0.03), (0.05, 0.05)],
    ids=["revoke-then-reinstall", "reinstall-then-revoke", "together"],
)
async def test_revoke_invokes_bundles_and_reinstall_race_to_a_legal_end(
    racy_app, neto, auth, revoke_after, reinstall_after
):
    import httpx

    transport = httpx.ASGITransport(app=racy_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        straddled = []
        for round_ in range(ROUNDS):
            neto.api_requests.clear()
            store, domain = f"N20{round_}", f"race{round_}.example.com"
            straddled.append(
                await race(client, racy_app, neto, auth, store, domain,
                           revoke_after, reinstall_after + round_ * 0.004)
            )  # fmt: skip
    assert any(straddled), "raced: in no round was an invoke in flight across the whole revoke"


async def race(client, app, neto, auth, store, domain, revoke_after, reinstall_after) -> bool:
    old = (await install_store(client, neto, domain, store_id=store))["access_token"]
    pending = await start_install(client, domain)
    invoker = auth("invoke", stores=[store])
    reader = auth("credentials:read", stores=[store])
    admin = auth("installs:admin")
    revoke, reinstall = Window(), Window()
    new_token: list[str] = []
    sends = observe_sends(app)  # the broker's own record of what it wrote, on its clock
    bundles: list[tuple[float, str | None]] = []
    invokes_seen: list[Invoke] = []
    neto.api_delay = 0.01  # each call holds its slot a moment
    for _ in range(BUSY):  # some reads fail once and are retried after a backoff
        neto.api_responses.append(fake.answer(503, b"busy"))

    async def invokes() -> None:
        for _ in range(PER_TASK):
            started = time.monotonic()
            # Each read its own (no two share a flight, neto/flights.py): one busy answer
            # is one caller's, as the 503 count below assumes.
            read = {"Filter": {"SKU": [f"sku-{len(invokes_seen)}-{started}"]}}
            r = await client.post(f"/invoke/{store}/GetItem", json=read, headers=invoker)
            invokes_seen.append(Invoke(started, time.monotonic(), r.status_code))
            assert r.status_code in ERROR_CODES, r.text
            if ERROR_CODES[r.status_code]:
                assert r.json()["error"] == ERROR_CODES[r.status_code], r.text

    async def bundle_calls() -> None:
        for _ in range(PER_TASK):
            started = time.monotonic()
            r = await client.get(f"/credentials/{store}", headers=reader)
            assert r.status_code in (200, 410), r.text
            token = r.json()["headers"]["X_SECRET_KEY"] if r.status_code == 200 else None
            bundles.append((started, token))
            await asyncio.sleep(0.003)

    async def do_revoke() -> None:
        await asyncio.sleep(revoke_after)
        revoke.started = time.monotonic()
        r = await client.delete(f"/installs/{store}", headers=admin)
        revoke.finished = time.monotonic()
        assert r.status_code == 200, r.text

    async def do_reinstall() -> None:
        await asyncio.sleep(reinstall_after)
        reinstall.started = time.monotonic()
        # The merchant approves again: from now on Neto refuses the old token.
        code = neto.authorize(domain, store_id=store)
        new_token.append(neto.codes[code]["access_token"])
        r = await client.get("/oauth/callback", params={"state": pending["state"], "code": code})
        reinstall.finished = time.monotonic()
        assert r.status_code == 200, r.text

    await asyncio.gather(
        *(invokes() for _ in range(TASKS)),
        *(bundle_calls() for _ in range(2)),
        do_revoke(),
        do_reinstall(),
    )
    neto.api_delay = 0.0
    neto.api_responses.clear()
    [new] = new_token

    # What Neto saw: nothing with the revoked token after the revoke answered.
    late = [
        round(seen.at - revoke.finished, 4)
        for seen in neto.api_requests
        if seen.headers.get("x_secret_key") == old and seen.at > revoke.finished + DELIVERY
    ]
    assert not late, f"sent upstream with the revoked token after the revoke answered: {late}"
    # And with no allowance for delivery: the broker wrote nothing with the revoked token
    # after the revoke answered (the hand-off check, neto/http.HandOffConnector).
    written = [round(at - revoke.finished, 4) for at in sends.with_token(old)]
    assert not [d for d in written if d > 0], f"written after the revoke answered: {written}"
    assert any(s.headers.get("x_secret_key") == old for s in neto.api_requests), "raced"
    # Whether this round raced as meant (an invoke in flight across the whole revoke): on a
    # loaded machine one round may not; the test asks it of at least one of its rounds.
    straddled = any(
        call.started < revoke.started and call.finished > revoke.finished for call in invokes_seen
    )
    for started, token in bundles:
        if started > revoke.finished:
            assert token != old, "a bundle with the revoked token after the revoke answered"

    async with app.state.services.sessionmaker() as session:
        install = (
            await session.execute(select(Install).where(Install.store_id == store))
        ).scalar_one()
    # Each answer only where it can happen: a revoke that has begun, a refusal of the
    # old token only between the merchant's new approval and the reinstall's answer, and
    # once both have answered, the end state's answer.
    for call in invokes_seen:
        if call.status == 410:
            assert call.finished > revoke.started, "revoked before the revoke began"
        elif call.status in (502, 409):
            assert call.finished > reinstall.started, f"{call.status}: Neto still took the token"
            assert call.started < reinstall.finished, f"{call.status} after the reinstall"
        if call.started > max(revoke.finished, reinstall.finished):
            if install.status == "revoked":
                assert call.status == 410, f"{call.status} after the store ended revoked"
            else:
                assert call.status in (200, 503, 429), f"{call.status} for a reinstalled store"
    busy = sum(call.status == 503 for call in invokes_seen)
    assert busy <= BUSY, f"{busy} answers of 503, but Neto was busy only {BUSY} times"

    if install.status == "revoked":
        assert install.secret_sealed is None and install.user_sealed is None
        # The fingerprint of the token it held when revoked stays, for the audit trail.
        assert install.token_fingerprint in {fingerprint(old), fingerprint(new)}
        assert revoke.finished > reinstall.started, "revoked only if the revoke ended last"
    else:
        assert install.status == "active", "never reauth_required for a replaced token"
        assert install.token_fingerprint == fingerprint(new)
        r = await client.post(f"/invoke/{store}/GetItem", json={}, headers=invoker)
        assert r.status_code == 200, r.text
        assert neto.api_requests[-1].headers["x_secret_key"] == new
    return straddled


async def test_key_rotation_during_invoke_traffic_loses_nothing(
    app_factory, settings_factory, neto, auth
):
    import httpx

    # The app opens with the new key first (it seals) and the old one (still opens).
    new_key = generate_key()
    keyring = f"k2:{new_key},k1:{ENC_KEY}"
    old_app = await app_factory(settings_factory())
    transport = httpx.ASGITransport(app=old_app)
    stores = [f"R{i:03d}" for i in range(40)]
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        tokens = {}
        for sid in stores:  # sealed under k1
            got = await install_store(client, neto, f"{sid.lower()}.example.com", store_id=sid)
            tokens[sid] = got["access_token"]

    app = await app_factory(settings_factory(encryption_keys=keyring, store_cache_seconds=0.05))
    transport = httpx.ASGITransport(app=app)
    invoker = auth("invoke", stores=["*"])
    rotating = True
    answers: list[int] = []

    async def traffic(worker: int) -> None:
        rng = random.Random(worker)
        async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as c:
            while rotating or len(answers) < 100:
                sid = rng.choice(stores)
                r = await c.post(f"/invoke/{sid}/GetItem", json={}, headers=invoker)
                answers.append(r.status_code)
                assert r.status_code == 200, r.text

    workers = [asyncio.create_task(traffic(i)) for i in range(6)]
    await asyncio.sleep(0.05)
    report = await keys.rotate(
        app.state.services.sessionmaker, KeyRing.parse(keyring), ROTATION, batch_size=5
    )
    rotating = False
    await asyncio.gather(*workers)

    assert report.ok and report.rotated == len(stores), report
    assert set(answers) == {200} and len(answers) >= 100
    async with app.state.services.sessionmaker() as session:
        kids = set((await session.execute(select(Install.key_id))).scalars())
    assert kids == {"k2"}
    # Every call carried its store's own token, before, during and after the rotation.
    for seen in neto.api_requests[-len(answers) :]:
        sid = seen.path.split("/")[1].split(".")[0].upper()
        assert seen.headers["x_secret_key"] == tokens[sid]


async def test_a_refusal_of_the_replaced_token_does_not_flag_the_reinstalled_store(
    client, app, neto, auth
):
    """An invoke sent with the old token is refused by Neto after the reinstall committed:
    the caller gets 502, but the store, which now holds a token Neto accepts, stays active."""
    old = await install_store(client, neto, "shop.example.com", store_id="N1001")
    pending = await start_install(client, "shop.example.com")
    reinstalled = threading.Event()

    async def refuse_after_the_reinstall(request):
        await fake.released(reinstalled)  # answered only once the reinstall has committed
        return await fake.answer(401, b'{"Ack":"Error"}')(request)

    neto.api_responses.append(refuse_after_the_reinstall)
    invoke = asyncio.create_task(
        client.post("/invoke/N1001/GetItem", json={}, headers=auth("invoke", stores=["N1001"]))
    )
    try:
        await neto.api_arrived(1)  # sent with the old token, and held
        code = neto.authorize("shop.example.com", store_id="N1001")
        new = neto.codes[code]["access_token"]
        r = await client.get("/oauth/callback", params={"state": pending["state"], "code": code})
        assert r.status_code == 200, r.text
    finally:
        reinstalled.set()
    r = await invoke
    assert r.status_code == 502 and r.json()["error"] == "upstream_unauthorized", r.text
    assert neto.api_requests[0].headers["x_secret_key"] == old["access_token"]

    async with app.state.services.sessionmaker() as session:
        install = (await session.execute(select(Install))).scalar_one()
    assert install.status == "active" and install.token_fingerprint == fingerprint(new)
    r = await client.post(
        "/invoke/N1001/GetItem", json={}, headers=auth("invoke", stores=["N1001"])
    )
    assert r.status_code == 200, r.text
