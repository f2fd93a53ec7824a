"""A revoke on a replica whose clock is 15 s behind, or ahead, of the others still stops
bundles and invokes on the other replica within a second: the change feed is ordered by
the database's change numbers, and on PostgreSQL the revoke is pushed with NOTIFY.

Replica A runs under Debian's `faketime` (a real second process with a shifted clock);
replica B runs on the machine's clock. Prints the figures (median and max seconds)."""

from __future__ import annotations

import asyncio
import os
import shutil
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.config import normalize_database_url
from service.installs.cache import CHANGE_WINDOW
from tests.conftest import truncate
from tests.fakes.neto import FakeNeto, FakeNetoServer
from tests.replicas.conftest import (
    Replica,
    broker_command,
    replica_env,
    start_replica,
    wait_ready,
)

pytestmark = pytest.mark.slow
ROUNDS = 5
POLL = {"sqlite": "0.5", "postgresql": "1"}
BOUND_SECONDS = 1.0


@dataclass
class Skewed:
    backend: str
    skew: str
    a: Replica  # the shifted clock: it revokes
    b: Replica  # the machine's clock: it must stop serving


@pytest.fixture(
    scope="module",
    params=[
        ("sqlite", "-15s"),
        ("sqlite", "+15s"),
        ("postgresql", "-15s"),
        ("postgresql", "+15s"),
    ],
    ids=lambda p: f"{p[0]}-clock{p[1]}",
)
def skewed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    neto_server: FakeNetoServer,
) -> Iterator[Skewed]:  # fmt: skip
    backend, skew = request.param
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is required (apt-get install faketime; .ci/run installs it)")
    workdir = tmp_path_factory.mktemp(f"skew-{backend}")
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir}/broker.db"
    else:
        if not os.environ.get("BROKER_TEST_DATABASE_URL"):
            pytest.skip("PostgreSQL replicas need BROKER_TEST_DATABASE_URL")
        url = normalize_database_url(os.environ["BROKER_TEST_DATABASE_URL"])
    # SQLite has no push: the poll interval is the bound there, so it polls every 0.5 s
    # to keep a margin under the second (at the default 1 s the worst case measured 1.02 s).
    env = replica_env(url, neto_server.url, BROKER_STORE_CACHE_SECONDS=POLL[backend])
    migrated = subprocess.run(
        broker_command("migrate"), env=env, cwd=workdir, capture_output=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    asyncio.run(truncate(url))
    a = start_replica("a", env, workdir, prefix=(faketime, "-f", skew))
    b = start_replica("b", env, workdir)
    try:
        wait_ready(a)
        wait_ready(b)
        yield Skewed(backend, skew, a, b)
    finally:
        a.stop()
        b.stop()
        asyncio.run(truncate(url))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def refused_after(http: httpx.AsyncClient, url: str, headers: dict[str, str],
                        start: float, *, post: bool) -> float:  # fmt: skip
    """Seconds from `start` until the request is refused with 410."""
    while True:
        if post:
            r = await http.post(url, json={}, headers=headers)
        else:
            r = await http.get(url, headers=headers)
        if r.status_code == 410:
            return time.monotonic() - start
        assert r.status_code == 200, r.text
        if time.monotonic() - start > 5 * BOUND_SECONDS:
            return time.monotonic() - start
        await asyncio.sleep(0.005)


async def test_a_revoke_by_a_replica_with_a_shifted_clock_is_seen_within_a_second(
    skewed: Skewed, neto: FakeNeto, http: httpx.AsyncClient, token: Any,
) -> None:  # fmt: skip
    admin = {"Authorization": f"Bearer {token('installs:admin')}"}
    user = {"Authorization": f"Bearer {token('credentials:read invoke', stores=['*'])}"}
    delays: list[float] = []
    for n in range(ROUNDS):
        sid, domain = f"SK{n}", f"sk{n}.example.com"
        neto.add_api_key_store(domain, "u", f"key-{sid}")
        body = {"store_id": sid, "store_domain": domain, "username": "u", "api_key": f"key-{sid}"}
        created = await http.post(f"{skewed.a.url}/installs/api-key", json=body, headers=admin)
        assert created.status_code == 201, created.text
        bundle_url = f"{skewed.b.url}/credentials/{sid}"
        invoke_url = f"{skewed.b.url}/invoke/{sid}/GetItem"
        for _ in range(2):  # B holds the store in its cache, read after the install
            assert (await http.get(bundle_url, headers=user)).status_code == 200
            assert (await http.post(invoke_url, json={}, headers=user)).status_code == 200
        await asyncio.sleep(0.3 * (n % 3))  # land at different points of B's poll

        revoked = await http.delete(f"{skewed.a.url}/installs/{sid}", headers=admin)
        start = time.monotonic()  # the answer is sent after the commit
        assert revoked.status_code == 200, revoked.text
        bundle, invoke = await asyncio.gather(
            refused_after(http, bundle_url, user, start, post=False),
            refused_after(http, invoke_url, user, start, post=True),
        )
        delays.append(max(bundle, invoke))
    median, worst = statistics.median(delays), max(delays)
    print(f"\nrevocation seen by the other replica, {skewed.backend}, revoker's clock "
          f"{skewed.skew}: median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms "
          f"over {ROUNDS}")  # fmt: skip
    assert worst <= BOUND_SECONDS, delays
    if skewed.backend == "postgresql":
        assert median < 0.1, f"NOTIFY should deliver the revoke at once: {delays}"


async def test_a_revoke_on_the_clock_behind_after_a_change_on_the_clock_ahead_is_seen(
    skewed: Skewed, neto: FakeNeto, http: httpx.AsyncClient, token: Any,
) -> None:  # fmt: skip
    """The replica whose clock is ahead installs a store and caches it; past the change
    look-back window (and well within the 15 s skew) the replica behind revokes it. A
    change number taken from either replica's clock would put the revoke below the
    install, and the replica ahead, having polled past it, would never see it (SQLite has
    no push): numbered by the database, it is seen within the bound. The invoke is what
    shows the cache (a bundle's audit row is fenced on the install's status as well)."""
    ahead, behind = (skewed.b, skewed.a) if skewed.skew.startswith("-") else (skewed.a, skewed.b)
    admin = {"Authorization": f"Bearer {token('installs:admin')}"}
    user = {"Authorization": f"Bearer {token('credentials:read invoke', stores=['*'])}"}
    sid, domain = "SKL", "skl.example.com"
    neto.add_api_key_store(domain, "u", f"key-{sid}")
    body = {"store_id": sid, "store_domain": domain, "username": "u", "api_key": f"key-{sid}"}
    created = await http.post(f"{ahead.url}/installs/api-key", json=body, headers=admin)
    assert created.status_code == 201, created.text
    bundle_url = f"{ahead.url}/credentials/{sid}"
    invoke_url = f"{ahead.url}/invoke/{sid}/GetItem"
    for _ in range(2):  # cached by the replica ahead
        assert (await http.get(bundle_url, headers=user)).status_code == 200
        assert (await http.post(invoke_url, json={}, headers=user)).status_code == 200
    await asyncio.sleep(CHANGE_WINDOW + 1.5)  # the install is behind every poll's floor now
    assert (await http.post(invoke_url, json={}, headers=user)).status_code == 200

    revoked = await http.delete(f"{behind.url}/installs/{sid}", headers=admin)
    start = time.monotonic()
    assert revoked.status_code == 200, revoked.text
    bundle, invoke = await asyncio.gather(
        refused_after(http, bundle_url, user, start, post=False),
        refused_after(http, invoke_url, user, start, post=True),
    )
    seen = max(bundle, invoke)
    print(f"\nrevoke on the clock behind seen by the clock ahead, {skewed.backend}, "
          f"skew {skewed.skew}: {seen * 1000:.0f} ms")  # fmt: skip
    assert seen <= BOUND_SECONDS, f"the revoke was seen after {seen:.2f} s"
