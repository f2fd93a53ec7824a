"""Events across two real replicas on one database: concurrent install changes on both
reach a feed follower complete and in commit order, webhooks are delivered once each, and
a long poll on one replica wakes within a second of a commit on the other. The figures
(delivery latency, wake-up) are printed for the report."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tests.conftest import truncate
from tests.fakes.receiver import Receiver
from tests.replicas.conftest import Cluster

pytestmark = pytest.mark.slow
STORES = 30


@pytest.fixture
async def http(cluster: Cluster) -> AsyncIterator[httpx.AsyncClient]:
    """A client for both replicas; the shared database emptied first."""
    await truncate(cluster.database_url)
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


@pytest.fixture
def admin(token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token('installs:admin')}"}


@pytest.fixture
def events_reader(token: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {token('events:read')}"}


async def register(http: httpx.AsyncClient, base: str, headers: dict[str, str], sid: str) -> float:
    r = await http.post(
        f"{base}/installs/api-key", headers=headers,
        json={"store_id": sid, "store_domain": f"{sid.lower()}.example.com",
              "username": "u", "api_key": "k" * 24},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    return time.monotonic()


async def test_feed_follower_misses_nothing_while_both_replicas_commit(
    cluster: Cluster, http: httpx.AsyncClient, admin: dict[str, str],
    events_reader: dict[str, str],
) -> None:  # fmt: skip
    followed: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def follow() -> None:
        cursor = None
        while not (done.is_set() and len(followed) >= STORES):
            params: dict[str, Any] = {"wait": 2, "limit": 7}
            if cursor:
                params["after"] = cursor
            r = await http.get(f"{cluster.b.url}/events", params=params, headers=events_reader)
            assert r.status_code == 200, r.text
            followed.extend(r.json()["events"])
            cursor = r.json()["next_cursor"]

    follower = asyncio.create_task(follow())
    bases = [cluster.a.url, cluster.b.url]
    await asyncio.gather(*(register(http, bases[n % 2], admin, f"F{n:03}") for n in range(STORES)))
    done.set()
    await asyncio.wait_for(follower, 30)

    r = await http.get(f"{cluster.a.url}/events", params={"limit": 500}, headers=events_reader)
    everything = r.json()["events"]
    assert len(everything) == STORES
    assert [e["id"] for e in followed] == [e["id"] for e in everything], "the follower skipped"
    assert sorted(e["data"]["store_id"] for e in followed) == [f"F{n:03}" for n in range(STORES)]


async def test_each_event_is_delivered_once_by_one_of_two_replicas(
    cluster: Cluster, http: httpx.AsyncClient, admin: dict[str, str], receiver: Receiver,
) -> None:  # fmt: skip
    r = await http.post(f"{cluster.a.url}/webhooks", json={"url": receiver.url}, headers=admin)
    assert r.status_code == 201, r.text
    hook = r.json()
    bases = [cluster.a.url, cluster.b.url]
    committed = {}
    for n in range(STORES):  # paced, so latency is measured per event, not per burst
        sid = f"D{n:03}"
        committed[sid] = await register(http, bases[n % 2], admin, sid)
        await asyncio.sleep(0.05)
    got = await receiver.wait_for(STORES, 30)
    await asyncio.sleep(1.5)  # anything delivered twice would arrive by now
    ids = [g.headers["webhook-id"] for g in receiver.received]
    assert len(ids) == len(set(ids)) == STORES, "an event was delivered twice"
    latency = sorted(g.at - committed[g.event["data"]["store_id"]] for g in got)
    p50, p95 = statistics.median(latency), latency[int(len(latency) * 0.95) - 1]
    print(f"\n[{cluster.backend}] commit -> webhook delivered: p50 {p50 * 1000:.0f} ms, "
          f"p95 {p95 * 1000:.0f} ms, max {latency[-1] * 1000:.0f} ms")  # fmt: skip
    r = await http.get(f"{cluster.b.url}/webhooks/{hook['id']}/deliveries",
                       params={"limit": 200}, headers=admin)  # fmt: skip
    attempts = r.json()["items"]
    assert len(attempts) == STORES and {a["attempt"] for a in attempts} == {1}
    if cluster.backend == "postgresql":
        assert p50 <= 1.0


async def test_long_poll_on_one_replica_wakes_on_a_commit_on_the_other(
    cluster: Cluster, http: httpx.AsyncClient, admin: dict[str, str],
    events_reader: dict[str, str],
) -> None:  # fmt: skip
    wakes = []
    for n in range(5):
        r = await http.get(f"{cluster.b.url}/events", params={"limit": 500}, headers=events_reader)
        cursor = r.json()["next_cursor"]
        waiting = asyncio.create_task(http.get(
            f"{cluster.b.url}/events", params={"after": cursor, "wait": 10},
            headers=events_reader,
        ))  # fmt: skip
        await asyncio.sleep(0.3)
        committed = await register(http, cluster.a.url, admin, f"L{n}")
        answer = await asyncio.wait_for(waiting, 12)
        wakes.append(time.monotonic() - committed)
        assert [e["data"]["store_id"] for e in answer.json()["events"]] == [f"L{n}"]
    median = statistics.median(wakes)
    print(f"\n[{cluster.backend}] feed wake-up after a commit on the other replica: "
          f"max {max(wakes) * 1000:.0f} ms, median {median * 1000:.0f} ms")  # fmt: skip
    bound = 1.0 if cluster.backend == "postgresql" else 1.5  # SQLite: the 1 s poll
    assert max(wakes) < bound
