"""The bar for one store budget across replicas: three real `broker serve` processes on
PostgreSQL, callers hammering one store through all of them, and the third replica joining
a third of the way in. In every 60 s window the Neto fake sees no more than the budget and
at least 80 % of it. PostgreSQL only: SQLite serves one host, where one replica is the
deployment."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.config import normalize_database_url
from tests.conftest import truncate
from tests.fakes.neto import FakeNeto, FakeNetoServer
from tests.replicas.conftest import (
    Replica,
    broker_command,
    replica_env,
    start_replica,
    wait_ready,
)
from tests.support import query_of

pytestmark = pytest.mark.slow

BUDGET = 120
RUN_SECONDS = 65.0
JOIN_AT = 15.0  # the third process starts here; it is serving a few seconds later
STORE, DOMAIN = "X900", "budget.example.com"


@pytest.fixture
def pg_env(neto_server: FakeNetoServer, tmp_path: Path) -> Iterator[dict[str, str]]:
    if not os.environ.get("BROKER_TEST_DATABASE_URL"):
        pytest.skip("replicas sharing a budget need PostgreSQL (BROKER_TEST_DATABASE_URL)")
    url = normalize_database_url(os.environ["BROKER_TEST_DATABASE_URL"])
    env = replica_env(url, neto_server.url, BROKER_STORE_RATE_PER_MINUTE=str(BUDGET))
    migrated = subprocess.run(
        broker_command("migrate"), env=env, cwd=tmp_path, capture_output=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    asyncio.run(truncate(url))
    yield env
    asyncio.run(truncate(url))


SERIAL = itertools.count()


async def hammer(
    http: httpx.AsyncClient, replica: Replica, headers: dict[str, str], until: float
) -> int:
    """Call the store as fast as the broker lets us: a refusal waits 50 ms."""
    refused = 0
    while time.monotonic() < until:
        # Each call its own SKU: identical reads in flight share one call (neto/flights.py).
        read = {"Filter": {"SKU": [f"sku-{next(SERIAL)}"]}}
        r = await http.post(f"{replica.url}/invoke/{STORE}/GetItem", json=read, headers=headers)
        if r.status_code == 429:
            refused += 1
            await asyncio.sleep(0.05)
        else:
            assert r.status_code == 200, r.text
    return refused


def windows(times: list[float], start: float, end: float) -> list[int]:
    """Requests in every 60 s window [s, s + 60) inside the run, s every 0.25 s."""
    counts = []
    s = start
    while s + 60 <= end:
        counts.append(sum(1 for t in times if s <= t < s + 60))
        s += 0.25
    return counts


async def test_three_replicas_share_one_store_budget_while_one_joins(
    pg_env: dict[str, str], neto: FakeNeto, token: Callable[..., str], tmp_path: Path
) -> None:
    a, b = start_replica("a", pg_env, tmp_path), start_replica("b", pg_env, tmp_path)
    c: Replica | None = None
    try:
        wait_ready(a)
        wait_ready(b)
        async with httpx.AsyncClient(timeout=10) as http:
            started = await http.get(f"{a.url}/oauth/install", params={"store_domain": DOMAIN})
            state = query_of(started.headers["location"])["state"]
            code = neto.authorize(DOMAIN, store_id=STORE)
            done = await http.get(f"{b.url}/oauth/callback", params={"code": code, "state": state})
            assert done.status_code == 200, done.text
            await asyncio.sleep(5)  # a and b have counted each other
            headers = {"Authorization": f"Bearer {token('invoke', stores=[STORE])}"}
            del neto.api_requests[:]
            t0 = time.monotonic()
            end = t0 + RUN_SECONDS
            callers = [asyncio.create_task(hammer(http, r, headers, end)) for r in (a, b)]
            await asyncio.sleep(JOIN_AT)
            c = start_replica("c", pg_env, tmp_path)
            await asyncio.to_thread(wait_ready, c)
            joined = time.monotonic() - t0
            callers.append(asyncio.create_task(hammer(http, c, headers, end)))
            await asyncio.gather(*callers)
        times = [seen.at for seen in neto.api_requests]
        counts = windows(times, t0, end)
        print(
            f"\nbudget {BUDGET}/min, c serving at {joined:.1f}s; Neto saw {len(times)} in "
            f"{RUN_SECONDS:.0f}s; 60 s windows: max {max(counts)}, min {min(counts)}; "
            f"first 20 s (2 replicas): {sum(1 for t in times if t < t0 + 20)}, "
            f"last 20 s (3 replicas): {sum(1 for t in times if t >= end - 20)}"
        )
        assert max(counts) <= BUDGET
        assert min(counts) >= 0.8 * BUDGET
    finally:
        for replica in (a, b, c):
            if replica is not None:
                replica.stop()
