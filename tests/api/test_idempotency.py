"""Idempotency keys for writes on both doors to Neto (service/idempotency/store.py): a
write sent with `Idempotency-Key` reaches Neto at most once per store, caller and key,
across replicas; repeats get Neto's first answer (or learn that its outcome is unknown),
the same key with another body is refused, and nothing of it is kept in clear."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from service.jobs.retention import prune, targets
from tests.api.test_invoke import STORE, client_for, installed
from tests.fakes import neto as fake
from tests.support import DOORS, assert_refused, call_door

ORDER = {"Order": [{"OrderID": "ZQ-7731", "Email": "pat@example.com"}]}


def writer(auth: Any, sub: str = "orders-service") -> dict[str, str]:
    return auth("invoke", stores=[STORE], actions=["AddOrder", "GetItem"], sub=sub)


def keyed(headers: dict[str, str], key: str = '"order-7"') -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


async def rows(database_url: str) -> list[dict[str, Any]]:
    engine = create_async_engine(database_url)
    async with engine.connect() as conn:
        found = await conn.execute(text("SELECT * FROM idempotency_keys"))
        result = [dict(row._mapping) for row in found]
    await engine.dispose()
    return result


@pytest.mark.parametrize("door", DOORS)
async def test_a_repeated_write_is_answered_from_the_first_and_sent_once(
    door, app_factory, settings_factory, neto, auth, database_url
):
    app = await app_factory(settings_factory())
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(
            fake.answer(200, {"Order": [{"OrderID": "ZQ-7731"}], "Ack": "Success"})
        )
        first = await call_door(door, client, STORE, "AddOrder", keyed(writer(auth)), json=ORDER)
        again = await call_door(door, client, STORE, "AddOrder", keyed(writer(auth)), json=ORDER)
    assert first.status_code == again.status_code == 200, again.text
    assert again.content == first.content and b"ZQ-7731" in again.content
    assert again.headers["content-type"] == first.headers["content-type"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert [seen.action for seen in neto.api_requests] == ["AddOrder"]
    [row] = await rows(database_url)
    assert row["state"] == "done" and row["status"] == 200
    assert "ZQ-7731" not in str(row) and "order-7" not in str(row), "kept in clear"


async def test_the_same_key_with_another_body_is_refused_and_not_sent(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory())
    async with await client_for(app) as client:
        await installed(client, neto)
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert r.status_code == 200
        other = {"Order": [{"OrderID": "N101"}]}
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=other, headers=keyed(writer(auth)))
        assert_refused(r, 422, "idempotency_key_reused")
        # Keys are the caller's own: another caller's same key is another write.
        r = await client.post(
            f"/invoke/{STORE}/AddOrder", json=other, headers=keyed(writer(auth, sub="billing"))
        )
        assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert len(neto.api_requests) == 2


async def test_a_repeat_while_the_first_is_out_waits_for_its_answer(
    app_factory, settings_factory, neto, auth
):
    settings = settings_factory(replica_heartbeat_seconds=0)
    a, b = await app_factory(settings), await app_factory(settings)  # two replicas
    async with await client_for(a) as ca, await client_for(b) as cb:
        await installed(ca, neto)
        neto.hold_api()
        first = asyncio.create_task(
            ca.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        )
        await neto.api_arrived(1)
        second = asyncio.create_task(
            cb.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        )
        await asyncio.sleep(0.5)
        assert not second.done(), "the repeat did not wait"
        neto.release_api()
        r1, r2 = await first, await second
    assert r1.status_code == r2.status_code == 200
    assert r2.content == r1.content and r2.headers["idempotent-replayed"] == "true"
    assert len(neto.api_requests) == 1


async def test_a_repeat_gives_up_waiting_with_409(app_factory, settings_factory, neto, auth):
    patient = await app_factory(settings_factory(upstream_deadline_seconds=10))
    hasty = await app_factory(
        settings_factory(upstream_deadline_seconds=0.5, store_queue_seconds=0)
    )
    async with await client_for(patient) as ca, await client_for(hasty) as cb:
        await installed(ca, neto)
        neto.hold_api()
        first = asyncio.create_task(
            ca.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        )
        await neto.api_arrived(1)
        r = await cb.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert_refused(r, 409, "idempotency_key_in_flight")
        neto.release_api()
        assert (await first).status_code == 200
    assert len(neto.api_requests) == 1


async def test_a_write_whose_outcome_is_unknown_is_never_sent_again(
    app_factory, settings_factory, neto, auth, database_url
):
    app = await app_factory(settings_factory(upstream_deadline_seconds=0.5))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.hold_api()
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert_refused(r, 504, "upstream_timeout")
        neto.release_api()
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert_refused(r, 504, "upstream_outcome_unknown")
    assert len(neto.api_requests) == 1
    [row] = await rows(database_url)
    assert row["state"] == "unknown"


async def test_a_write_neto_refused_with_429_may_be_tried_again(
    app_factory, settings_factory, neto, auth, database_url
):
    app = await app_factory(settings_factory(rate_limit_pause_seconds=0.2))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(fake.answer(429, b"slow down"))
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert_refused(r, 429, "rate_limited")
        assert await rows(database_url) == [], "a refused write left its key taken"
        await asyncio.sleep(0.3)
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert len(neto.api_requests) == 2


async def test_without_a_key_or_for_a_read_nothing_changes(
    app_factory, settings_factory, neto, auth, database_url
):
    app = await app_factory(settings_factory())
    async with await client_for(app) as client:
        await installed(client, neto)
        for _ in range(2):
            r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=writer(auth))
            assert r.status_code == 200 and "idempotent-replayed" not in r.headers
            r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=keyed(writer(auth)))
            assert r.status_code == 200 and "idempotent-replayed" not in r.headers
    assert len(neto.api_requests) == 4
    assert await rows(database_url) == []


@pytest.mark.parametrize("key", ['""', '"a\\"b"', "two words", "x" * 256, '"open'])
async def test_a_malformed_key_is_refused(key, app_factory, settings_factory, neto, auth):
    app = await app_factory(settings_factory())
    async with await client_for(app) as client:
        await installed(client, neto)
        r = await client.post(
            f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth), key)
        )
        assert_refused(r, 400, "validation_error")
    assert neto.api_requests == []


async def test_keys_expire_and_retention_deletes_them(
    app_factory, settings_factory, neto, auth, database_url
):
    settings = settings_factory(idempotency_ttl_hours=1 / 3600)  # one second
    app = await app_factory(settings)
    async with await client_for(app) as client:
        await installed(client, neto)
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert r.status_code == 200
        await asyncio.sleep(1.2)
        r = await client.post(f"/invoke/{STORE}/AddOrder", json=ORDER, headers=keyed(writer(auth)))
        assert r.status_code == 200 and "idempotent-replayed" not in r.headers
        assert len(neto.api_requests) == 2
        await asyncio.sleep(1.2)
        [target] = [t for t in targets(settings) if t.table == "idempotency_keys"]
        assert await prune(app.state.services.sessionmaker, target, pause_seconds=0) == 1
    assert await rows(database_url) == []
