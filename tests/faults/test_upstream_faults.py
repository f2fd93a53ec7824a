"""The store's Neto API misbehaving under the broker, at the socket level: reset mid-body,
garbage instead of HTTP, an endless chunked body, no answer at all, a close right after
the headers. Each gives its documented code for a read and for a write, a write is never
sent twice, no secret appears in the error."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.main import create_app
from tests.conftest import truncate
from tests.fakes import bad_upstream as bad
from tests.support import LiveBroker, assert_error

API_KEY = "apikey-" + "q" * 40
USERNAME = "api-user"
DEADLINE = 0.4


@pytest.fixture(scope="session")
def bad_server() -> Iterator[bad.BadUpstream]:
    server = bad.BadUpstream().start()
    yield server
    server.stop()


@pytest.fixture
def upstream(bad_server: bad.BadUpstream) -> Iterator[bad.BadUpstream]:
    bad_server.reset()
    yield bad_server
    bad_server.reset()


def broker_settings(settings_factory: Any, upstream: bad.BadUpstream, **overrides: Any) -> Any:
    values: dict[str, Any] = {
        "neto_api_url_template": upstream.url + "/{store_domain}/do/WS/NetoAPI",
        "upstream_deadline_seconds": DEADLINE,
        "max_response_bytes": 64 * 1024,
    }
    return settings_factory(**{**values, **overrides})


async def register(client: Any, auth: Any, store_id: str, domain: str) -> None:
    r = await client.post(
        "/installs/api-key",
        json={"store_id": store_id, "store_domain": domain, "username": USERNAME,
              "api_key": API_KEY},
        headers=auth("installs:admin"),
    )  # fmt: skip
    assert r.status_code == 201, r.text


# behaviour -> (status, code, whether a read is retried after it)
EXPECTED = {
    bad.RESET_MID_BODY: (502, "upstream_unreachable", True),
    bad.GARBAGE: (502, "upstream_unreachable", True),
    bad.ENDLESS_CHUNKED: (502, "upstream_response_too_large", False),
    bad.NEVER_ANSWER: (504, "upstream_timeout", False),
    bad.CLOSE_AFTER_HEADERS: (502, "upstream_unreachable", True),
}


@pytest.mark.parametrize("behaviour", bad.BEHAVIOURS)
async def test_each_misbehaviour_gives_its_code_and_a_write_is_sent_once(
    app_factory, settings_factory, upstream, auth, behaviour
):
    app = await app_factory(broker_settings(settings_factory, upstream))
    domain = behaviour.replace("_", "-") + ".example.com"
    upstream.behaviours[domain] = behaviour
    status, code, retried = EXPECTED[behaviour]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        await register(client, auth, "B1", domain)
        invoker = auth("invoke", stores=["B1"], actions=["GetItem", "Add*"])
        for action, sends in (("GetItem", 3 if retried else 1), ("AddOrder", 1)):
            before = len(upstream.received_for(domain))
            r = await client.post(
                f"/invoke/B1/{action}", json={"Order": [{"OrderID": "x"}]}, headers=invoker
            )
            body = assert_error(r, status, code)
            assert API_KEY not in r.text and USERNAME not in body["detail"]
            seen = upstream.received_for(domain)[before:]
            assert [s.action for s in seen] == [action] * sends, (action, len(seen))
    assert await upstream.wait_closed(domain) == 0, "the broker let go of every connection"


# -- a burst of hung calls does not stall other stores --------------------------------


BURST = 30
PROBE_LIMIT = 0.5


async def test_a_burst_of_hung_calls_leaves_other_stores_at_full_speed(
    settings_factory, upstream, auth, database_url
):
    hung, healthy = "hung.example.com", "healthy.example.com"
    upstream.behaviours[hung] = bad.NEVER_ANSWER
    deadline = 1.0
    settings = broker_settings(
        settings_factory, upstream, upstream_deadline_seconds=deadline,
        store_max_in_flight=BURST + 2,
        store_rate_per_minute=100_000,  # the probers are many; the budget is not under test
    )  # fmt: skip
    try:
        async with LiveBroker(create_app(settings)) as broker:
            async with httpx.AsyncClient(base_url=broker.url, timeout=10) as client:
                await register(client, auth, "H1", hung)
                await register(client, auth, "OK1", healthy)
                probe = auth("invoke", stores=["OK1"])
                r = await client.post("/invoke/OK1/GetItem", json={}, headers=probe)
                assert r.status_code == 200, r.text
            tasks_before = await broker.tasks()

            async with httpx.AsyncClient(base_url=broker.url, timeout=10) as client:
                burst_auth = auth("invoke", stores=["H1"], actions=["GetItem", "Add*"])

                def hung_call(i: int) -> Any:
                    # Half reads, half writes: each holds a connection until the deadline.
                    action = "GetItem" if i % 2 else "AddOrder"
                    return client.post(f"/invoke/H1/{action}", json={"i": i}, headers=burst_auth)

                burst = [asyncio.create_task(hung_call(i)) for i in range(BURST)]
                async with asyncio.timeout(deadline):  # all of them reach upstream first
                    while len(upstream.received_for(hung)) < BURST:
                        await asyncio.sleep(0.01)
                assert broker.app.state.services.upstream.limits.in_flight("H1") == BURST

                latencies: list[float] = []

                async def prober() -> None:
                    while not all(task.done() for task in burst):
                        started = time.perf_counter()
                        r = await client.post("/invoke/OK1/GetItem", json={}, headers=probe)
                        latencies.append(time.perf_counter() - started)
                        assert r.status_code == 200, r.text

                await asyncio.gather(*(prober() for _ in range(4)))
                answers = [task.result() for task in burst]

            # Nothing is left behind: every slot released, every upstream connection
            # closed (the hung ones by the broker: they cannot be reused), none still
            # acquired in the aiohttp connector, and no task outlives its request.
            state = broker.app.state.services
            assert state.upstream.limits.in_flight("H1") == 0
            assert state.upstream.limits.in_flight("OK1") == 0
            assert await upstream.wait_closed(hung) == 0
            connector = state.http._transport.client.connector
            assert len(connector._acquired) == 0
            async with asyncio.timeout(2):  # closed connections take a moment to wind up
                while await broker.tasks() > tasks_before:
                    await asyncio.sleep(0.02)
    finally:
        await truncate(database_url)

    assert [r.status_code for r in answers] == [504] * BURST
    assert {r.json()["error"] for r in answers} == {"upstream_timeout"}
    assert len(upstream.received_for(hung)) == BURST, "no call was sent twice"
    assert len(latencies) >= 20, f"only {len(latencies)} probes ran during the burst"
    assert max(latencies) < PROBE_LIMIT, f"a probe took {max(latencies):.3f} s"
