"""Neto's notifications (issue 24): a burst of 1,000 for 100 stores against a real broker
process, with one webhook subscription taking every event. Bar: every notification is in
the outbox exactly once (a resent tenth adds nothing), and the endpoint's p99 stays under
50 ms. The latency is the endpoint's: timed from sending to the full answer, on one of
CONNECTIONS connections (the burst queues in the client, not in the measurement).

Standalone: `python -m bench.notify` (SQLite under bench/.work/, or
BROKER_BENCH_DATABASE_URL); `make bench` runs it last (bench/run.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web

from bench.run import (
    BIN,
    ENC_KEY,
    WORK,
    broker_env,
    free_port,
    median,
    process,
    reset_database,
    seed,
    wait_http,
)

STORES = 100
PER_STORE = 10
CONNECTIONS = int(os.environ.get("BENCH_NOTIFY_CONNECTIONS", "32"))
RESENT_SHARE = 10  # every tenth notification is sent again after the burst
P99_BAR_MS = 50.0


@dataclass(frozen=True)
class NotifyResult:
    backend: str
    notifications: int
    resent: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    in_outbox: int
    distinct_in_outbox: int
    delivered: int
    delivered_seconds: float
    passed: bool


def body(store: int, n: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="utf-8"?><Event>'
        "<CurrentTime>2026-12-07 14:03:09</CurrentTime>"
        f"<EventID>{store * 1000 + n}</EventID><EventType>Order</EventType>"
        f"<Order><OrderID>N{store:03d}{n:04d}</OrderID><OrderStatus>Pick</OrderStatus></Order>"
        "</Event>"
    ).encode()


async def prepare(database_url: str, receiver_url: str) -> dict[str, str]:
    """Each store's notification URL path, issued through the service's own code, and one
    subscription to `receiver_url`."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from service.config import normalize_database_url
    from service.db import create_sessionmaker
    from service.events import subscriptions
    from service.inbound import tokens
    from service.security.crypto import KeyRing

    engine = create_async_engine(normalize_database_url(database_url))
    maker = create_sessionmaker(engine)
    paths = {}
    async with maker() as session, session.begin():
        for n in range(STORES):
            store_id = f"S{n:06d}"
            _, token = await tokens.issue(session, store_id, actor="bench")
            paths[store_id] = f"/neto-notify/{store_id}/{token}"
        await subscriptions.create(
            session, KeyRing.parse(ENC_KEY), url=receiver_url, event_types=[],
            description="bench", actor="bench",
        )  # fmt: skip
    await engine.dispose()
    return paths


async def outbox(database_url: str) -> tuple[int, int]:
    """(neto events in the outbox, distinct (store, EventID) among them)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    from service.config import normalize_database_url

    engine = create_async_engine(normalize_database_url(database_url))
    async with engine.connect() as conn:
        rows = (
            await conn.execute(text("SELECT store_id, data FROM events WHERE type LIKE 'neto.%'"))
        ).all()
    await engine.dispose()
    keys = {
        (store, (data if isinstance(data, dict) else json.loads(data))["neto_event_id"])
        for store, data in rows
    }
    return len(rows), len(keys)


async def burst(port: int, sends: list[tuple[str, bytes]]) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    slots = asyncio.Semaphore(CONNECTIONS)
    headers = {"Content-Type": "text/xml", "NETO_NOTIFICATION": "Order", "NETOAPI_KEY": "neto"}
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector) as http:

        async def one(path: str, data: bytes) -> None:
            nonlocal errors
            async with slots:
                started = time.perf_counter()
                async with http.post(path, data=data, headers=headers) as answer:
                    await answer.read()
                    ok = answer.status == 200
                latencies.append((time.perf_counter() - started) * 1000)
            errors += not ok

        await asyncio.gather(*(one(path, data) for path, data in sends))
    return latencies, errors


def serve_receiver(port: int) -> None:
    """The subscriber, in a process of its own (`python -m bench.notify receive PORT`): in
    the load generator's process its work would delay the answers being timed. It counts
    the deliveries (`GET /count`)."""
    delivered = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal delivered
        await request.read()
        delivered += 1
        return web.Response(text="ok")

    async def count(_: web.Request) -> web.Response:
        return web.Response(text=str(delivered))

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    receiver.router.add_get("/count", count)
    web.run_app(receiver, host="127.0.0.1", port=port, access_log=None, print=None)


async def delivered_count(port: int) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/count") as r:
        return int(await r.text())


async def run(database_url: str) -> NotifyResult:
    backend = "postgresql" if database_url.startswith("postgres") else "sqlite"
    await asyncio.to_thread(reset_database, database_url)  # it runs its own loop
    await seed(database_url, 0, STORES)
    receiver_port = free_port()
    paths = await prepare(database_url, f"http://127.0.0.1:{receiver_port}/hook")
    port = free_port()
    env = broker_env(database_url, upstream_port=9)
    env["BROKER_WEBHOOK_ALLOWED_HOSTS"] = "127.0.0.1"
    receiver_args = [sys.executable, "-m", "bench.notify", "receive", str(receiver_port)]
    with (
        process(receiver_args, dict(os.environ), WORK / "receiver-notify.log"),
        process([str(BIN / "broker"), "serve", "--port", str(port)], env,
                WORK / "broker-notify.log"),
    ):  # fmt: skip
        await asyncio.to_thread(wait_http, receiver_port, "/count")
        await asyncio.to_thread(wait_http, port)
        # Warm the route (imports, the first connections): one each for 20 stores.
        warm = [(paths[f"S{n:06d}"], body(9999, n)) for n in range(20)]
        _, warm_errors = await burst(port, warm)
        sends = [(paths[f"S{s:06d}"], body(s, n)) for s in range(STORES) for n in range(PER_STORE)]
        random.Random(24).shuffle(sends)
        started = time.perf_counter()
        latencies, errors = await burst(port, sends)
        seconds = time.perf_counter() - started
        resent_latencies, resent_errors = await burst(port, sends[::RESENT_SHARE])
        deadline = time.monotonic() + 30
        delivered = await delivered_count(receiver_port)
        while delivered < len(sends) + len(warm) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            delivered = await delivered_count(receiver_port)
        # The fan-out waits for the receiver's answers: how long until all of it was out.
        delivered_seconds = time.perf_counter() - started
    in_outbox, distinct = await outbox(database_url)
    in_outbox -= len(warm)
    distinct -= len(warm)
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    result = NotifyResult(
        backend=backend, notifications=len(sends), resent=len(resent_latencies),
        seconds=round(seconds, 2), rps=round(len(sends) / seconds, 1),
        p50_ms=round(median(ordered), 2), p99_ms=round(p99, 2), max_ms=round(ordered[-1], 2),
        errors=errors + resent_errors + warm_errors,
        in_outbox=in_outbox, distinct_in_outbox=distinct,
        delivered=delivered - len(warm), delivered_seconds=round(delivered_seconds, 2),
        passed=p99 < P99_BAR_MS and in_outbox == distinct == len(sends)
        and not errors + resent_errors + warm_errors,
    )  # fmt: skip
    return result


def main(database_url: str | None = None) -> dict[str, Any]:
    WORK.mkdir(parents=True, exist_ok=True)
    url = (
        database_url
        or os.environ.get("BROKER_BENCH_DATABASE_URL")
        or (f"sqlite+aiosqlite:///{WORK}/notify.db")
    )
    result = asyncio.run(run(url))
    print(
        f"neto notifications ({result.backend}): {result.notifications} for {STORES} stores in "
        f"{result.seconds:.2f} s ({result.rps:.0f}/s), p50 {result.p50_ms:.2f} ms, p99 "
        f"{result.p99_ms:.2f} ms (bar < {P99_BAR_MS:.0f}), max {result.max_ms:.2f} ms; in the "
        f"outbox {result.in_outbox} ({result.distinct_in_outbox} distinct) after "
        f"{result.resent} resent; webhook deliveries {result.delivered} (all out "
        f"{result.delivered_seconds:.2f} s after the burst began); errors "
        f"{result.errors}: {'PASS' if result.passed else 'FAIL'}",
        flush=True,
    )
    return asdict(result)


if __name__ == "__main__":
    if sys.argv[1:2] == ["receive"]:
        serve_receiver(int(sys.argv[2]))
    else:
        sys.exit(0 if main()["passed"] else 1)
