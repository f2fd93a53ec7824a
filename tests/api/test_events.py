"""The outbox and `GET /events`: one event per install change, written with the change
(none for a change that rolled back), in commit order, paged by cursor, long polling."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from service.events.outbox import APPEND_LOCK, emit
from service.installs import repository as stores
from service.neto.oauth import TokenGrant
from tests.fakes import neto as fake
from tests.support import assert_error, install_store, register_api_key_store

STORE = "N1001"
DATA_KEYS = {"store_id", "store_domain", "auth_method", "status", "actor"}


@pytest.fixture
async def app(app_factory, settings_factory, neto):
    return await app_factory(settings_factory(events_poll_seconds=0.2))


async def feed(client, auth, after: str | None = None, **params: Any) -> dict[str, Any]:
    query = {"after": after, **params} if after else params
    r = await client.get("/events", params=query, headers=auth("events:read"))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_every_install_change_emits_its_event_in_order(client, neto, auth):
    admin = auth("installs:admin", sub="ops-alice")
    await install_store(client, neto, store_id=STORE)  # created, by Neto's merchant flow
    await install_store(client, neto, store_id=STORE)  # reinstalled
    neto.api_responses.append(fake.answer(401, b'{"Ack":"Error"}'))
    await client.post(f"/installs/{STORE}/verify", headers=admin)  # reauth_required
    await client.post(f"/installs/{STORE}/verify", headers=admin)  # reactivated
    await client.post(f"/installs/{STORE}/verify", headers=admin)  # no change: no event
    await register_api_key_store(client, admin, "K2002", username="u@k.example", api_key="k" * 30)
    assert (await client.delete(f"/installs/{STORE}", headers=admin)).status_code == 200
    await client.delete(f"/installs/{STORE}", headers=admin)  # already revoked: no event

    body = await feed(client, auth)
    events = body["events"]
    assert [(e["type"], e["data"]["store_id"], e["data"]["status"]) for e in events] == [
        ("install.created", STORE, "active"),
        ("install.reinstalled", STORE, "active"),
        ("install.reauth_required", STORE, "reauth_required"),
        ("install.reactivated", STORE, "active"),
        ("install.created", "K2002", "active"),
        ("install.revoked", STORE, "revoked"),
    ]
    assert all(set(e["data"]) == DATA_KEYS for e in events)
    assert events[2]["data"]["actor"] == "ops-alice"
    assert events[4]["data"]["auth_method"] == "api_key"
    assert all(e["id"].startswith("evt_") and e["timestamp"].endswith("Z") for e in events)
    text = json.dumps(body)
    tokens = [c["x_secret_key"] for c in neto.credentials.values()]
    for secret in ("k" * 30, "u@k.example", *tokens):
        assert secret not in text
    # Nothing new: the same cursor comes back with no events.
    again = await feed(client, auth, body["next_cursor"])
    assert again == {"events": [], "next_cursor": body["next_cursor"]}


async def test_a_change_that_rolls_back_emits_nothing(app, client, auth):
    grant = TokenGrant(
        store_id="R1", store_domain="r1.example.com", access_token=SecretStr("t" * 32),
        scope=None, timezone=None, user=None, billing_address=None,
    )  # fmt: skip

    async def fail(_session: Any) -> None:
        raise RuntimeError("the OAuth state could not be consumed")

    with pytest.raises(RuntimeError):
        await app.state.services.installs.store_oauth_grant(
            grant, actor="neto", request_id=None, also=fail
        )
    assert (await feed(client, auth))["events"] == []
    await app.state.services.installs.store_oauth_grant(grant, actor="neto", request_id=None)
    assert [e["type"] for e in (await feed(client, auth))["events"]] == ["install.created"]


async def test_pages_follow_the_cursor_without_repeats(client, auth):
    admin = auth("installs:admin")
    for n in range(5):
        await register_api_key_store(client, admin, f"P{n}")
    seen, cursor = [], None
    for _ in range(3):
        page = await feed(client, auth, cursor, limit=2)
        seen += [e["data"]["store_id"] for e in page["events"]]
        cursor = page["next_cursor"]
    assert seen == ["P0", "P1", "P2", "P3", "P4"]


async def test_long_poll_holds_an_empty_answer_until_an_event_commits(client, auth):
    cursor = (await feed(client, auth))["next_cursor"]
    started = time.monotonic()
    waiting = asyncio.create_task(feed(client, auth, cursor, wait=10))
    await asyncio.sleep(0.5)
    assert not waiting.done(), "an empty long poll answered before its wait"
    await register_api_key_store(client, auth("installs:admin"), "W1")
    committed = time.monotonic()
    body = await asyncio.wait_for(waiting, 5)
    assert [e["data"]["store_id"] for e in body["events"]] == ["W1"]
    assert time.monotonic() - committed < 1.0, "the waiting request was not woken within 1 s"
    assert time.monotonic() - started < 5


async def test_long_poll_ends_empty_when_the_wait_runs_out(client, auth):
    cursor = (await feed(client, auth))["next_cursor"]
    started = time.monotonic()
    body = await feed(client, auth, cursor, wait=0.6)
    assert body["events"] == [] and 0.5 < time.monotonic() - started < 3


async def test_feed_needs_its_scope_and_a_cursor_it_issued(client, auth):
    r = await client.get("/events", headers=auth("installs:admin"))
    assert_error(r, 403, "forbidden")
    r = await client.get(
        "/events", params={"after": "bm90LWEtY3Vyc29y"}, headers=auth("events:read")
    )
    assert_error(r, 400, "validation_error")
    r = await client.get("/events", params={"wait": 31}, headers=auth("events:read"))
    assert_error(r, 422, "validation_error")
    r = await client.get("/events", params={"limit": 501}, headers=auth("events:read"))
    assert_error(r, 422, "validation_error")


async def test_an_emit_waits_for_an_uncommitted_one_and_the_feed_keeps_their_order(
    app, client, auth
):
    """PostgreSQL: while transaction A has appended its event and not committed, an append
    in transaction B waits (the append lock), so B's event can neither be numbered nor
    seen ahead of A's. Forced, not raced: B is seen waiting in pg_locks before A commits."""
    sessionmaker = app.state.services.sessionmaker
    async with sessionmaker() as probe:
        if probe.get_bind().dialect.name != "postgresql":
            pytest.skip("SQLite has one writer at a time: B could not even begin its write")
    admin = auth("installs:admin")
    for sid in ("A1", "B1"):
        await register_api_key_store(client, admin, sid)
    cursor = (await feed(client, auth))["next_cursor"]
    b_pid: list[int] = []
    b_appended = asyncio.Event()

    async def b_side() -> str:
        async with sessionmaker() as b, b.begin():
            b_pid.append((await b.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            event = await emit(b, "install.revoked", await stores.revoke(b, "B1"), "test-b")
            b_appended.set()
            return event.event_id

    async def b_waits_for_the_lock() -> bool:
        """True once B's backend waits for the append lock; False if B appended instead."""
        deadline = time.monotonic() + 10
        async with sessionmaker() as watcher:
            while not b_appended.is_set():
                assert time.monotonic() < deadline, "B neither waited nor appended in 10 s"
                if b_pid:
                    waiting = await watcher.execute(
                        text("SELECT count(*) FROM pg_locks WHERE pid = :pid AND NOT granted "
                             "AND locktype = 'advisory' AND objid = :key"),
                        {"pid": b_pid[0], "key": APPEND_LOCK},
                    )  # fmt: skip
                    if waiting.scalar_one():
                        return True
                    await watcher.rollback()  # pg_locks is read afresh each time anyway
                await asyncio.sleep(0.01)
        return False

    async with sessionmaker() as a:
        await a.begin()
        first = await emit(a, "install.revoked", await stores.revoke(a, "A1"), "test-a")
        second = asyncio.create_task(b_side())
        try:
            assert await b_waits_for_the_lock(), "B appended while A's append was uncommitted"
            assert (await feed(client, auth, cursor))["events"] == []
            await a.commit()
        finally:
            if not second.done() and a.in_transaction():
                await a.rollback()  # lets B finish rather than hang the test
        second_id = await asyncio.wait_for(second, 10)
    events = (await feed(client, auth, cursor))["events"]
    assert [(e["id"], e["data"]["actor"]) for e in events] == [
        (first.event_id, "test-a"),
        (second_id, "test-b"),
    ]
