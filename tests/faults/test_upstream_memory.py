"""A flood of huge Neto answers against a real `broker serve` process: the replica's byte
budget for answers being read (BROKER_UPSTREAM_BUFFER_BYTES, service/neto/memory.py) keeps
its peak resident set under the chart's memory limit, the calls it cannot hold are refused
with 503 `service_unavailable` and `Retry-After`, and /healthz and small calls still answer
quickly meanwhile (issue 31, item 2).

The broker runs as its own process so that its peak (VmHWM) is its own: the fake Neto and
this test's clients live in the test process. The answers arrive at a pace (about 1.5 s
each), as from a real store, so they are in flight together; half declare a
Content-Length (reserved before reading), half are chunked (reserved chunk by chunk).
Without the budget (BROKER_UPSTREAM_BUFFER_BYTES far above the flood) the same flood peaks
well over the limit (docs/performance.md has the figures)."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from tests.conftest import truncate
from tests.fakes.neto import FakeNeto, FakeNetoServer, answer
from tests.replicas.conftest import Replica, start_replica, wait_ready
from tests.support import broker_env, register_api_key_store

MIB = 1024 * 1024
CHART_LIMIT_MIB = 512  # helm/neto-token-broker/values.yaml: resources.limits.memory
ANSWER_BYTES = 30 * MIB
PER_STORE = 8  # BROKER_STORE_MAX_IN_FLIGHT's default: all of them in flight at once
PACE_SECONDS = 0.05  # between the 1 MiB blocks of a huge answer
PROBE_LIMIT_SECONDS = 0.5
SIZED, CHUNKED, SMALL = "MEM1", "MEM2", "MEM3"
DOMAINS = {SIZED: "sized.example.com", CHUNKED: "chunked.example.com", SMALL: "small.example.com"}


def paced_huge(size: int, *, chunked: bool) -> Callable[[Request], Any]:
    """`size` bytes in 1 MiB blocks, one every PACE_SECONDS, with a Content-Length or
    without one. The block is shared: the fake holds next to nothing per answer."""
    block = b" " * MIB

    async def blocks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            await asyncio.sleep(PACE_SECONDS)
            piece = block[: size - sent]
            sent += len(piece)
            yield piece

    async def handler(request: Request) -> Response:
        headers = {} if chunked else {"content-length": str(size)}
        return StreamingResponse(blocks(), media_type="application/json", headers=headers)

    return handler


def by_store(request: Request) -> Any:
    """The fake's scripted answer for whichever store is called."""
    domain = request.path_params["store_domain"]
    if domain == DOMAINS[SIZED]:
        return paced_huge(ANSWER_BYTES, chunked=False)(request)
    if domain == DOMAINS[CHUNKED]:
        return paced_huge(ANSWER_BYTES, chunked=True)(request)
    return answer(200, {"Item": [{"ID": "1"}], "Ack": "Success"})(request)


def status_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.M)
    assert match, status
    return int(match.group(1))


@pytest.fixture
def broker(
    database_url: str, neto_server: FakeNetoServer, neto: FakeNeto, tmp_path: Path
) -> Iterator[Replica]:
    env = broker_env(
        database_url=database_url, neto_url=neto_server.url, BROKER_LOG_LEVEL="WARNING",
        BROKER_STORE_RATE_PER_MINUTE="100000", BROKER_UPSTREAM_DEADLINE_SECONDS="30",
    )  # fmt: skip
    for _ in range(2000):  # one per request the test makes, and to spare
        neto.api_responses.append(by_store)
    replica = start_replica("memory", env, tmp_path)
    try:
        wait_ready(replica)
        yield replica
    finally:
        replica.stop()
        asyncio.run(truncate(database_url))


SERIAL = itertools.count()


async def huge_call(http: httpx.AsyncClient, url: str, store: str, headers: Any) -> Any:
    """One call for a huge answer, read as it comes and dropped: (status, headers, size,
    the body if it is an error)."""
    # Its own SKU: identical reads in flight would share one answer (neto/flights.py).
    read = {"Filter": {"SKU": [f"sku-{next(SERIAL)}"]}}
    async with http.stream("POST", f"{url}/invoke/{store}/GetItem", json=read,
                           headers=headers) as r:  # fmt: skip
        size, first = 0, b""
        async for chunk in r.aiter_raw():
            if size < 4096:
                first += chunk[:4096]
            size += len(chunk)
        return r.status_code, r.headers, size, first


async def test_a_flood_of_huge_answers_stays_under_the_chart_limit(
    broker: Replica, auth: Callable[..., dict[str, str]]
) -> None:
    pid = broker.process.pid
    async with httpx.AsyncClient(timeout=60) as http:
        admin = auth("installs:admin")
        client = httpx.AsyncClient(base_url=broker.url, timeout=60)
        async with client:
            for store, domain in DOMAINS.items():
                await register_api_key_store(client, admin, store, domain)
        invoker = auth("invoke", stores=list(DOMAINS))
        r = await http.post(f"{broker.url}/invoke/{SMALL}/GetItem", json={}, headers=invoker)
        assert r.status_code == 200, r.text
        rss_before = status_kib(pid, "VmRSS")

        flood = [
            asyncio.create_task(huge_call(http, broker.url, store, invoker))
            for store in (SIZED, CHUNKED)
            for _ in range(PER_STORE)
        ]
        latencies: dict[str, list[float]] = {"healthz": [], "small": []}

        async def probe() -> None:
            while not all(task.done() for task in flood):
                started = time.perf_counter()
                r = await http.get(f"{broker.url}/healthz")
                latencies["healthz"].append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                started = time.perf_counter()
                r = await http.post(
                    f"{broker.url}/invoke/{SMALL}/GetItem", json={}, headers=invoker
                )
                latencies["small"].append(time.perf_counter() - started)
                assert r.status_code == 200, r.text
                assert r.json()["Ack"] == "Success"
                await asyncio.sleep(0.05)

        await probe()
        answers = [task.result() for task in flood]
        peak = status_kib(pid, "VmHWM")

        # The budget was given back in full: one more huge answer is read and sent.
        after = await huge_call(http, broker.url, CHUNKED, invoker)

    figures = (f"RSS before {rss_before // 1024} MiB, peak {peak // 1024} MiB; "
               f"statuses {sorted(a[0] for a in answers)}")  # fmt: skip
    print(figures, {k: round(max(v), 3) for k, v in latencies.items()})
    assert peak < CHART_LIMIT_MIB * 1024, figures
    served = [a for a in answers if a[0] == 200]
    refused = [a for a in answers if a[0] != 200]
    assert len(served) >= 3, figures  # the budget holds three at once and then more
    assert refused, f"the flood never filled the budget: {figures}"
    for _status, _headers, size, _body in served:
        assert size == ANSWER_BYTES
    for status, headers, _size, body in refused:
        assert status == 503, figures
        assert headers["x-broker-error"] == "service_unavailable"
        assert b"BROKER_UPSTREAM_BUFFER_BYTES" in body
        assert int(headers["retry-after"]) >= 1
    assert after[0] == 200 and after[2] == ANSWER_BYTES, after[:1]
    for name, values in latencies.items():
        assert len(values) >= 10, (name, len(values))
        assert max(values) < PROBE_LIMIT_SECONDS, (name, max(values), figures)
