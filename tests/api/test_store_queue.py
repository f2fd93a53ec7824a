"""Waiting for a store's budget instead of being refused (neto/limits.py, neto/queue.py):
a call that finds the bucket empty waits its turn up to BROKER_STORE_QUEUE_SECONDS; batch
callers (`priority` claim) give way to interactive ones; callers of one lane take turns;
a caller that leaves frees its place. Budget 60 a minute throughout: a burst of 6, then a
token every 1.1 s."""

from __future__ import annotations

import asyncio
import itertools
import time

import httpx

from service.main import create_app
from service.neto.queue import BATCH
from tests.api.test_invoke import STORE, client_for, installed, invoker
from tests.support import LiveBroker, assert_error

BUDGET = {"store_rate_per_minute": 60, "store_max_in_flight": 64, "replica_heartbeat_seconds": 0}
BURST = 6
SERIAL = itertools.count()


async def invoke(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[int, float]:
    started = time.monotonic()
    # Each call reads its own SKU: identical reads in flight would share one upstream call
    # (neto/flights.py) and one token, and these tests are about calls that each spend one.
    read = {"Filter": {"SKU": [f"sku-{next(SERIAL)}"]}}
    r = await client.post(f"/invoke/{STORE}/GetItem", json=read, headers=headers)
    return r.status_code, time.monotonic() - started


async def settled(app, flood: list[asyncio.Task[tuple[int, float]]]) -> None:
    """Until every call of `flood` is answered or waiting in the batch lane: the loop is
    then idle, so what a later call takes is the queue's doing, not the flood's parsing."""
    limits = app.state.services.upstream.limits
    for _ in range(500):
        state = limits._stores.get(STORE)  # the store's bucket (private: no API needs it)
        waiting = state.queue.waiting(BATCH) if state and state.queue else 0
        if waiting + sum(task.done() for task in flood) == len(flood):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the flood never settled")


async def drain(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    for _ in range(BURST):
        status, elapsed = await invoke(client, headers)
        assert status == 200 and elapsed < 0.5


async def test_a_call_past_the_burst_waits_for_its_token_then_is_refused_honestly(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**BUDGET))
    async with await client_for(app) as client:
        await installed(client, neto)
        await drain(client, invoker(auth))
        status, elapsed = await invoke(client, invoker(auth))
        assert status == 200 and 0.5 < elapsed < 1.8, (status, elapsed)
    assert len(neto.api_requests) == BURST + 1

    neto.reset()
    quick = await app_factory(settings_factory(**BUDGET, store_queue_seconds=0.3))
    async with await client_for(quick) as client:
        await installed(client, neto)
        await drain(client, invoker(auth))
        started = time.monotonic()
        r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert_error(r, 429, "rate_limited")
        assert 0.25 < time.monotonic() - started < 1.0
        assert r.headers["retry-after"] in ("1", "2")  # the token came 1.1 s after the burst
    assert len(neto.api_requests) == BURST, "a refused call went upstream"


async def test_the_wait_never_outlasts_the_call_deadline(app_factory, settings_factory, neto, auth):
    app = await app_factory(settings_factory(**BUDGET, upstream_deadline_seconds=0.4))
    async with await client_for(app) as client:
        await installed(client, neto)
        await drain(client, invoker(auth))
        started = time.monotonic()
        r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert_error(r, 429, "rate_limited")
        assert time.monotonic() - started < 0.4


async def test_interactive_calls_get_through_a_batch_flood(
    app_factory, settings_factory, neto, auth
):
    """A nightly sync floods the store with 200 calls at once; a person's five calls, one
    after another meanwhile, are each answered within 3 s (the first three at once, from
    the half of the burst batch may not spend)."""
    app = await app_factory(settings_factory(**BUDGET))
    batch = auth("invoke", stores=[STORE], sub="nightly-sync", priority="batch")
    person = auth("invoke", stores=[STORE], sub="storefront")
    async with await client_for(app) as client:
        await installed(client, neto)
        flood = [asyncio.create_task(invoke(client, batch)) for _ in range(200)]
        await settled(app, flood)
        interactive = [await invoke(client, person) for _ in range(5)]
        flooded = await asyncio.gather(*flood)
    assert all(status == 200 for status, _ in interactive), interactive
    assert max(elapsed for _, elapsed in interactive) < 3.0, interactive
    assert [elapsed < 0.3 for _, elapsed in interactive[:3]] == [True] * 3, interactive
    statuses = [status for status, _ in flooded]
    assert set(statuses) == {200, 429} and statuses.count(200) < BURST, statuses.count(200)


async def test_batch_uses_the_whole_rate_when_no_interactive_call_waits(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**BUDGET))
    batch = auth("invoke", stores=[STORE], priority="batch")
    async with await client_for(app) as client:
        await installed(client, neto)
        started = time.monotonic()
        results = await asyncio.gather(*(invoke(client, batch) for _ in range(8)))
    # Half the burst is kept for interactive calls; the rest and the refill are batch's.
    served = [elapsed for status, elapsed in results if status == 200]
    assert len(served) >= 4 and time.monotonic() - started < 3.0, results


async def test_callers_of_one_lane_take_turns(app_factory, settings_factory, neto, auth):
    """One caller floods (30 calls at once, ten times the other's); the other's calls, sent
    while the flood waits, are each served at the next token rather than after the flood."""
    app = await app_factory(settings_factory(**BUDGET))
    busy = auth("invoke", stores=[STORE], sub="busy-service")
    quiet = auth("invoke", stores=[STORE], sub="quiet-service")
    async with await client_for(app) as client:
        await installed(client, neto)
        flood = [asyncio.create_task(invoke(client, busy)) for _ in range(30)]
        await asyncio.sleep(0.2)
        first = await invoke(client, quiet)
        second = await invoke(client, quiet)
        await asyncio.gather(*flood)
    assert first[0] == 200 and second[0] == 200, (first, second)


async def test_an_unknown_priority_is_refused(app_factory, settings_factory, neto, auth):
    app = await app_factory(settings_factory(**BUDGET))
    async with await client_for(app) as client:
        await installed(client, neto)
        r = await client.post(
            f"/invoke/{STORE}/GetItem", json={},
            headers=auth("invoke", stores=[STORE], priority="urgent"),
        )  # fmt: skip
        body = assert_error(r, 401, "unauthorized")
        assert "priority" in body["detail"]


async def test_a_caller_that_leaves_frees_its_place(settings_factory, neto, auth):
    settings = settings_factory(**BUDGET, store_queue_seconds=5)
    async with (
        LiveBroker(create_app(settings)) as broker,
        httpx.AsyncClient(base_url=broker.url, timeout=10) as client,
    ):
        await installed(client, neto)
        await drain(client, invoker(auth))
        async with httpx.AsyncClient(base_url=broker.url, timeout=0.3) as leaving:
            try:
                await leaving.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
            except httpx.TimeoutException:
                pass
            else:
                raise AssertionError("the call was not queued")
        status, elapsed = await invoke(client, invoker(auth))
        assert status == 200 and elapsed < 1.5, (status, elapsed)
        await asyncio.sleep(0.5)
    # The one who left was never sent: its token went to the next caller.
    assert len(neto.api_requests) == BURST + 1
