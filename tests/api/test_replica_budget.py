"""One store budget across replicas: two apps on one database, heartbeats on (fast), the
way two replicas run. Each takes its share of the live replicas, re-sized as one comes
and goes, and a Neto 429 on one pauses the store on the other. The same under real
processes and a full minute of traffic: tests/replicas/test_store_budget.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from service.main import create_app
from service.neto.limits import Share
from tests.api.test_invoke import STORE, client_for, installed, invoker
from tests.fakes import neto as fake

BEAT = 0.5  # seconds between heartbeats


def limits_of(app: Any) -> Any:
    return app.state.services.upstream.limits


async def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the replicas did not agree in time"
        await asyncio.sleep(BEAT / 4)


async def test_replicas_divide_the_budget_and_take_it_back(app_factory, settings_factory):
    settings = settings_factory(store_rate_per_minute=120, replica_heartbeat_seconds=BEAT)
    a = await app_factory(settings)
    assert limits_of(a).share == Share.of(120, 1)
    b = create_app(settings)
    lifespan = b.router.lifespan_context(b)
    await lifespan.__aenter__()
    try:
        await eventually(lambda: limits_of(a).share == Share.of(120, 2))
        assert limits_of(b).share == Share.of(120, 2)
        # The newcomer spends nothing until the other has counted it.
        assert limits_of(b).held_for() > 0
        with pytest.raises(Exception, match="budget"):
            limits_of(b).admit("S1")
    finally:
        await lifespan.__aexit__(None, None, None)
    # B's graceful stop removed its row: A takes the whole budget back at its next beat.
    await eventually(lambda: limits_of(a).share == Share.of(120, 1))


async def test_a_neto_429_on_one_replica_pauses_the_store_on_the_other(
    app_factory, settings_factory, neto, auth
):
    settings = settings_factory(replica_heartbeat_seconds=BEAT)
    a = await app_factory(settings)
    b = await app_factory(settings)
    async with await client_for(a) as ca, await client_for(b) as cb:
        await installed(ca, neto)
        await eventually(lambda: b.state.services.heartbeat.live == 2)
        # Past the newcomer's hold (and any hold after a beat slowed by SQLite's lock).
        await eventually(lambda: limits_of(a).held_for() == 0 == limits_of(b).held_for())
        neto.api_responses.append(fake.answer(429, b"slow down"))
        r = await ca.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert r.status_code == 429, r.text
        assert len(neto.api_requests) == 1, r.text
        await eventually(lambda: limits_of(b)._stores.get(STORE) is not None)
        r = await cb.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert r.status_code == 429, r.text
        assert r.headers["x-broker-error"] == "rate_limited"
        assert 50 <= int(r.headers["retry-after"]) <= 60
    assert len(neto.api_requests) == 1, "the other replica called Neto during the pause"


async def test_a_new_replica_answers_ready_only_once_it_can_call_a_store(
    app_factory, settings_factory, neto, auth
):
    """A newcomer's buckets begin empty when its hold ends (nothing refills while held):
    /readyz stays 503 until a first call can go out, so a load balancer never routes a
    caller to a ready replica that refuses it 429. Here a token refills every 1.1 s."""
    settings = settings_factory(store_rate_per_minute=120, replica_heartbeat_seconds=BEAT)
    a = await app_factory(settings)
    async with await client_for(a) as ca:
        await installed(ca, neto)
    b = await app_factory(settings)
    async with await client_for(b) as cb:
        assert (await cb.get("/readyz")).status_code == 503
        deadline = time.monotonic() + 10
        while (await cb.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "the new replica never became ready"
            await asyncio.sleep(0.02)
        r = await cb.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert r.status_code == 200, r.text
    assert [seen.action for seen in neto.api_requests] == ["GetItem"]
