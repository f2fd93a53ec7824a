"""Two real replicas on one PostgreSQL database, one under `faketime` with its clock 30 s
ahead or behind (more than the delivery lease): every event still reaches the receiver
exactly once, each in a single attempt. Delivery claims and leases are compared with the
database's clock, so the shifted replica can neither take a delivery that the other one
leased and is still sending (a duplicate, and out of order with the store's next event)
nor hold one back for its skew.

SQLite is not run: it lives inside each replica's process, so its clock is that process's
clock, and replicas sharing one SQLite file share one machine (and its clock)."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from service.config import normalize_database_url
from tests.conftest import truncate
from tests.fakes.neto import FakeNetoServer
from tests.fakes.receiver import Receiver
from tests.replicas.conftest import Replica, broker_command, replica_env, start_replica, wait_ready

pytestmark = pytest.mark.slow
STORES = 16
TIMEOUT = 2  # the lease is twice the timeout plus 5 s: 9 s, under the 30 s skew
SKEWS = ["+30s", "-30s"]


@dataclass
class Pair:
    skew: str
    shifted: Replica
    normal: Replica

    @property
    def bases(self) -> list[str]:
        return [self.shifted.url, self.normal.url]


@pytest.fixture(scope="module", params=SKEWS, ids=lambda skew: f"postgresql-clock{skew}")
def pair(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
    neto_server: FakeNetoServer,
) -> Iterator[Pair]:  # fmt: skip
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.fail("faketime is required (apt-get install faketime; .ci/run installs it)")
    if not os.environ.get("BROKER_TEST_DATABASE_URL"):
        pytest.skip("PostgreSQL replicas need BROKER_TEST_DATABASE_URL")
    url = normalize_database_url(os.environ["BROKER_TEST_DATABASE_URL"])
    workdir = tmp_path_factory.mktemp("webhook-clocks")
    env = replica_env(url, neto_server.url, BROKER_WEBHOOK_TIMEOUT_SECONDS=str(TIMEOUT),
                      BROKER_EVENTS_POLL_SECONDS="0.5")  # fmt: skip
    migrated = subprocess.run(
        broker_command("migrate"), env=env, cwd=workdir, capture_output=True, timeout=60
    )
    assert migrated.returncode == 0, migrated.stderr.decode()
    asyncio.run(truncate(url))
    shifted = start_replica("shifted", env, workdir, prefix=(faketime, "-f", request.param))
    normal = start_replica("normal", env, workdir)
    try:
        wait_ready(shifted)
        wait_ready(normal)
        yield Pair(request.param, shifted, normal)
    finally:
        shifted.stop()
        normal.stop()
        asyncio.run(truncate(url))


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


async def test_a_replica_with_a_shifted_clock_delivers_nothing_twice(
    pair: Pair, http: httpx.AsyncClient, receiver: Receiver, token: Any
) -> None:
    admin = {"Authorization": f"Bearer {token('installs:admin')}"}
    # Each POST is still being answered when the other replica looks again for due work.
    receiver.delay = 1.0
    r = await http.post(f"{pair.normal.url}/webhooks", json={"url": receiver.url}, headers=admin)
    assert r.status_code == 201, r.text
    hook = r.json()
    for n in range(STORES):  # installs on both replicas: each one's clock dates some events
        body = {"store_id": f"CK{n}", "store_domain": f"ck{n}.example.com", "username": "u",
                "api_key": "k" * 24}  # fmt: skip
        r = await http.post(f"{pair.bases[n % 2]}/installs/api-key", json=body, headers=admin)
        assert r.status_code == 201, r.text

    await receiver.wait_for(STORES, 20)  # not held back by the shifted replica's skew
    await asyncio.sleep(3 * receiver.delay)  # a second copy would be sent by now
    copies = Counter(got.headers["webhook-id"] for got in receiver.received)
    twice = {event: n for event, n in copies.items() if n > 1}
    assert not twice, f"clock {pair.skew}: delivered more than once: {twice}"
    assert len(copies) == STORES
    r = await http.get(f"{pair.normal.url}/webhooks/{hook['id']}/deliveries",
                       params={"limit": 200}, headers=admin)  # fmt: skip
    assert [a["attempt"] for a in r.json()["items"]] == [1] * STORES
