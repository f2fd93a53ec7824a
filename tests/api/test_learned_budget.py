"""The budget a store learns from Neto's 429, through the app: the fake Neto's store
allows fewer calls than the configured budget (the merchant's other add-ons use the rest).
After its 429 the store resumes at what the broker sent in the minute before, less a
margin; every replica takes it up through the heartbeat, a replica started later too, and
operators see it on GET /installs/{store_id}. The five-minute bar on a controlled clock:
tests/unit/test_learned_budget.py."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.test_invoke import STORE, client_for, installed, invoker
from tests.api.test_replica_budget import BEAT, eventually, limits_of
from tests.support import metric

PAUSE = 1.0  # seconds; Neto asks for a minute


def learned(app: Any) -> float | None:
    value = limits_of(app).learned(STORE)
    return None if value is None else float(value)


async def published_budget(client: Any, auth: Any) -> dict[str, Any]:
    for _ in range(40):
        r = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
        if r.json()["budget"]["last_rate_limited_at"] is not None:
            return dict(r.json()["budget"])
        await asyncio.sleep(BEAT / 4)
    raise AssertionError("the pause never reached the database")


async def test_a_429_teaches_every_replica_the_store_budget(
    app_factory, settings_factory, neto, auth
):
    settings = settings_factory(
        store_rate_per_minute=500, rate_limit_pause_seconds=PAUSE, replica_heartbeat_seconds=BEAT
    )
    a = await app_factory(settings)
    b = await app_factory(settings)
    async with await client_for(a) as ca:
        await installed(ca, neto)
        await eventually(lambda: limits_of(a).held_for() == 0 == limits_of(b).held_for())
        await eventually(lambda: a.state.services.heartbeat.live == 2)
        r = await ca.get(f"/installs/{STORE}", headers=auth("installs:read"))
        assert r.json()["budget"] == {
            "rate_per_minute": 500.0, "learned": False,
            "last_rate_limited_at": None, "paused_until": None,
        }  # fmt: skip

        neto.hidden_limit = 20  # the other add-ons leave 20 a minute
        statuses = []
        for _ in range(24):
            r = await ca.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
            statuses.append(r.status_code)
        assert statuses == [200] * 20 + [429] * 4
        assert neto.rate_limited == 1 and len(neto.api_requests) == 21, "sent in the pause"
        # Two replicas: this one sent 21 of the store's calls, as half of them.
        assert learned(a) == pytest.approx(2 * 21 * 0.95)

        # Published at once (the heartbeat wakes for it), read from the database.
        budget = await published_budget(ca, auth)
        assert budget["learned"] is True and budget["rate_per_minute"] == pytest.approx(39.9, 0.01)
        assert budget["last_rate_limited_at"] and budget["paused_until"]
        metrics = (await ca.get("/metrics")).text
        assert metric(metrics, "broker_store_budget_stores", state="paused") == 1

        # The other replica learns it at its next beat; one that starts now, from the row.
        await eventually(lambda: learned(b) is not None)
        assert learned(b) == pytest.approx(39.9, 0.01)
        c = await app_factory(settings)
        assert learned(c) == pytest.approx(39.9, 0.01)

        # After the pause the store is called at the learned pace, not the configured 500
        # (whose burst alone is 50 calls): 39.9 a minute over three replicas is a burst of
        # one call here, the next about five seconds later.
        neto.hidden_limit = None
        await asyncio.sleep(PAUSE)
        r = await ca.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert r.status_code == 200, r.text
        r = await ca.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        assert r.status_code == 429 and r.headers["x-broker-error"] == "rate_limited"
        assert 2 <= int(r.headers["retry-after"]) <= 8
        assert len(neto.api_requests) == 22
        r = await ca.get(f"/installs/{STORE}", headers=auth("installs:read"))
        assert r.json()["budget"]["paused_until"] is None
        metrics = (await ca.get("/metrics")).text
        assert metric(metrics, "broker_store_budget_stores", state="learned") == 1
