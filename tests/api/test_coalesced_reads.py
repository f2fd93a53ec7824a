"""Coalesced reads (neto/flights.py, issue 22 item 2): identical reads in flight at the same
moment on one replica share one upstream call; each caller's own checks run first; writes,
other bodies and other media go by themselves; nothing is kept after the flight."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from service.web import metrics
from tests.api.test_invoke import STORE, client_for, door, installed, invoker
from tests.fakes import neto as fake
from tests.support import assert_refused

__all__ = ["door"]  # the both-doors fixture, used here too

# Room for every call of a test in the store's budget and slots: what is saved is calls to
# Neto, not the broker's own refusals.
ROOMY = {"store_rate_per_minute": 600, "store_max_in_flight": 64}
READ = {"Filter": {"SKU": ["SKU-1"], "OutputSelector": ["Name"]}}


def hot_read(client: httpx.AsyncClient, headers: dict[str, str]) -> Any:
    """The read every test here repeats, through /invoke (a coroutine, to start later)."""
    return client.post(f"/invoke/{STORE}/GetItem", json=READ, headers=headers)


def saved() -> float:
    return float(metrics.COALESCED_READS._value.get())


async def held_calls(neto: Any, calls: list[Any], first: int = 1) -> list[asyncio.Task[Any]]:
    """Starts `calls` (coroutines) while Neto holds its answers: the first `first` of them
    reach Neto before the rest start, so the rest find them in flight."""
    tasks = [asyncio.ensure_future(c) for c in calls[:first]]
    await neto.api_arrived(first)
    tasks += [asyncio.ensure_future(c) for c in calls[first:]]
    await asyncio.sleep(0.2)  # the rest are in the broker, joined or queued
    return tasks


async def test_identical_reads_share_one_call_and_each_gets_the_answer(
    app_factory, settings_factory, neto, auth, door
):
    app = await app_factory(settings_factory(**ROOMY))
    async with await client_for(app) as client:
        await installed(client, neto)
        before = saved()
        neto.hold_api()
        calls = [
            door(client, STORE, "GetItem", invoker(auth, sub=f"svc-{n}"), json=READ)
            for n in range(8)
        ]
        tasks = await held_calls(neto, calls)
        assert len(neto.api_requests) == 1, "a joiner went upstream"
        neto.release_api()
        answers = await asyncio.gather(*tasks)
        assert [r.status_code for r in answers] == [200] * 8
        assert len({r.content for r in answers}) == 1
        assert answers[0].json()["Item"][0]["Echo"].startswith('{"Filter"')
        assert saved() - before == 7
        assert all("ratelimit" in r.headers for r in answers)
        assert len(neto.api_requests) == 1

        # Nothing is kept past the flight: the same read later goes to Neto again.
        again = await door(client, STORE, "GetItem", invoker(auth), json=READ)
        assert again.status_code == 200
    assert len(neto.api_requests) == 2
    assert saved() - before == 7


async def test_other_bodies_actions_media_and_writes_are_not_shared(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**ROOMY))
    async with await client_for(app) as client:
        await installed(client, neto)
        before = saved()
        neto.hold_api()
        writer = invoker(auth, actions=["GetItem", "AddOrder"])
        other = {"Filter": {"SKU": ["SKU-2"], "OutputSelector": ["Name"]}}
        xml_reader = {
            "NETOAPI_KEY": invoker(auth)["Authorization"].removeprefix("Bearer "),
            "NETOAPI_ACTION": "GetItem",
            "Accept": "application/xml",
        }
        calls = [
            hot_read(client, invoker(auth)),
            client.post(f"/invoke/{STORE}/GetItem", json=other, headers=invoker(auth)),
            client.post(f"/invoke/{STORE}/GetOrder", json=READ, headers=invoker(auth)),
            # The same read through the Neto door, asking for XML: another answer.
            client.post(f"/neto/{STORE}/do/WS/NetoAPI", json=READ, headers=xml_reader),
            client.post(f"/invoke/{STORE}/AddOrder", json=READ, headers=writer),
            client.post(f"/invoke/{STORE}/AddOrder", json=READ, headers=writer),
        ]
        tasks = [asyncio.ensure_future(c) for c in calls]
        await neto.api_arrived(6)
        neto.release_api()
        answers = await asyncio.gather(*tasks)
    assert [r.status_code for r in answers] == [200] * 6, [r.text for r in answers]
    assert len(neto.api_requests) == 6
    assert sorted(seen.action for seen in neto.api_requests) == [
        "AddOrder", "AddOrder", "GetItem", "GetItem", "GetItem", "GetOrder",
    ]  # fmt: skip
    assert saved() == before


async def test_each_callers_grants_are_checked_before_it_joins(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**ROOMY))
    async with await client_for(app) as client:
        await installed(client, neto)
        before = saved()
        neto.hold_api()
        first = asyncio.ensure_future(hot_read(client, invoker(auth)))
        await neto.api_arrived(1)
        # The identical read, from callers the flight's answer is not for.
        other_store = await hot_read(client, invoker(auth, stores=["N9"]))
        no_action = await hot_read(client, invoker(auth, actions=["GetOrder"]))
        no_scope = await hot_read(client, auth("credentials:read"))
        neto.release_api()
        assert (await first).status_code == 200
    assert_refused(other_store, 403, "store_not_allowed")
    assert_refused(no_action, 403, "action_not_allowed")
    assert_refused(no_scope, 403, "forbidden")
    assert saved() == before
    assert len(neto.api_requests) == 1


async def test_an_error_is_everyones_and_a_batch_read_is_not_joined_by_interactive_ones(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**ROOMY))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(fake.answer(429, b"Too Many Requests", "text/plain"))
        neto.hold_api()
        calls = [hot_read(client, invoker(auth)) for _ in range(3)]
        tasks = await held_calls(neto, calls)
        # The same read in the batch lane goes by itself (nobody waits behind a queued
        # batch call): here it reaches Neto too, before the 429's pause, and is answered.
        batch = asyncio.ensure_future(hot_read(client, invoker(auth, priority="batch")))
        await neto.api_arrived(2)
        neto.release_api()
        answers = await asyncio.gather(*tasks)
        late = await batch
    for r in answers:
        assert_refused(r, 429, "rate_limited")
        assert int(r.headers["retry-after"]) > 0
        assert r.headers["ratelimit-policy"] == answers[0].headers["ratelimit-policy"]
    assert late.status_code == 200
    assert late.headers["ratelimit-policy"] != answers[0].headers["ratelimit-policy"]
    assert len(neto.api_requests) == 2


async def test_the_first_caller_leaving_does_not_leave_the_others_without_an_answer(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**ROOMY))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.hold_api()
        calls = [hot_read(client, invoker(auth)) for _ in range(4)]
        first, *joiners = await held_calls(neto, calls)
        first.cancel()  # the ASGI transport cancels the first caller's request with it
        await neto.api_arrived(2)  # one of the others sent it again
        a_joiner = joiners.pop()
        a_joiner.cancel()  # a joiner leaving cancels nothing of the others'
        await asyncio.sleep(0.1)
        neto.release_api()
        answers = await asyncio.gather(*joiners)
        assert [r.status_code for r in answers] == [200, 200]
        assert first.cancelled() and a_joiner.cancelled()
        # Nothing is left in flight: the table is empty once every answer is in.
        assert len(app.state.services.upstream.reads) == 0
    assert len(neto.api_requests) == 2


async def test_a_revoke_during_the_flight_reaches_every_caller(
    app_factory, settings_factory, neto, auth
):
    """The first caller's fence re-reads the store before each attempt: a read held at
    Neto's door answers, but the retry after a 500, due after the revoke, is refused for
    every caller, and nothing more is sent."""
    app = await app_factory(settings_factory(**ROOMY))
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(fake.answer(500, b'{"Ack":"Error"}'))
        neto.hold_api()
        calls = [hot_read(client, invoker(auth)) for _ in range(3)]
        tasks = await held_calls(neto, calls)
        revoked = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
        assert revoked.status_code in (200, 204), revoked.text
        neto.release_api()
        answers: list[httpx.Response] = await asyncio.gather(*tasks)
    for r in answers:
        assert_refused(r, 410, "store_revoked")
    assert len(neto.api_requests) == 1
