"""Every answer of both doors to Neto, refusals included, says what is left of the store's
budget for the caller's lane (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy`
and `RateLimit`). Budget 60 a minute: a burst of 6, then a token every 1.1 s."""

from __future__ import annotations

import re

import pytest

from tests.api.test_invoke import STORE, client_for, installed
from tests.fakes import neto as fake
from tests.support import DOORS, assert_refused, call_door

BUDGET = {"store_rate_per_minute": 60, "replica_heartbeat_seconds": 0, "store_queue_seconds": 0}
FIELD = re.compile(r'^"(interactive|batch)";r=(\d+);t=(\d+)$')


def left(response) -> tuple[str, int, int]:
    match = FIELD.match(response.headers["ratelimit"])
    assert match, response.headers["ratelimit"]
    return match[1], int(match[2]), int(match[3])


@pytest.mark.parametrize("door", DOORS)
async def test_each_answer_says_what_is_left_and_refusals_too(
    door, app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**BUDGET))
    headers = auth("invoke", stores=[STORE])
    async with await client_for(app) as client:
        await installed(client, neto)
        seen = []
        for _ in range(6):
            r = await call_door(door, client, STORE, "GetItem", headers, json={})
            assert r.status_code == 200, r.text
            assert r.headers["ratelimit-policy"] == '"interactive";q=60;w=60'
            seen.append(left(r))
        assert [r for _, r, _ in seen] == [5, 4, 3, 2, 1, 0]
        assert seen[-1][2] >= 6  # the burst refills over 6.6 s

        r = await call_door(door, client, STORE, "GetItem", headers, json={})
        assert_refused(r, 429, "rate_limited")
        assert left(r)[1] == 0 and r.headers["ratelimit-policy"] == '"interactive";q=60;w=60'

        # Neto's own 429: the pause, in the fields too.
        neto.api_responses.append(fake.answer(429, b"slow down"))
        app.state.services.upstream.limits._stores[STORE].tokens = 6.0
        r = await call_door(door, client, STORE, "GetItem", headers, json={})
        assert_refused(r, 429, "rate_limited")
        lane, remaining, reset = left(r)
        assert lane == "interactive"
        assert remaining == 0 and 50 <= reset <= 60, r.headers["ratelimit"]
        # The budget Neto left is the policy now: the 7 calls sent, less 5 %.
        assert r.headers["ratelimit-policy"] == '"interactive";q=6;w=60'


async def test_a_batch_caller_sees_its_own_lane_without_the_reserve(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**BUDGET))
    batch = auth("invoke", stores=[STORE], priority="batch")
    async with await client_for(app) as client:
        await installed(client, neto)
        r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=batch)
        assert r.status_code == 200
        assert r.headers["ratelimit-policy"] == '"batch";q=60;w=60'
        assert left(r)[:2] == ("batch", 2)  # 5 tokens left, 3 kept for interactive calls


async def test_no_fields_for_a_caller_not_granted_the_store(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory(**BUDGET))
    async with await client_for(app) as client:
        await installed(client, neto)
        r = await client.post(
            f"/invoke/{STORE}/GetItem", json={}, headers=auth("invoke", stores=["OTHER"])
        )
        assert r.status_code == 403 and "ratelimit" not in r.headers
