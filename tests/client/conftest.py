"""The client against a real broker: the app under uvicorn on a loopback port (its real
lifespan, on SQLite and on PostgreSQL), the fake Neto behind it. Each test runs every
flavour through `Flavour`, so sync and async are held to the same behaviour."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from neto_broker_client import AsyncBrokerClient, BrokerClient, Event, Retries

from service.main import create_app
from tests.conftest import truncate
from tests.faults.injector import DatabaseFaults
from tests.support import LiveBroker

# Fast enough that a test waits fractions of a second: the feed's wake-up, the webhook
# worker's retries. The broker sends each upstream call once, so a retry the test sees
# is the client's own.
SETTINGS = {
    "events_poll_seconds": 0.1,
    "webhook_retry_base_seconds": 0.05,
    "webhook_retry_max_seconds": 0.4,
    "webhook_timeout_seconds": 1,
    "upstream_max_retries": 0,
}
# Retries quick enough for tests, the default policy otherwise.
FAST_RETRIES = Retries(attempts=3, backoff=0.05, max_delay=2.0)


@pytest.fixture
async def live(settings_factory: Any, database_url: str, neto: Any) -> AsyncIterator[LiveBroker]:
    try:
        async with LiveBroker(create_app(settings_factory(**SETTINGS))) as broker:
            yield broker
    finally:
        await truncate(database_url)


@pytest.fixture
def db_faults(live: LiveBroker) -> Iterator[DatabaseFaults]:
    services = live.app.state.services
    audit = services.audit_writer.sqlite
    faults = DatabaseFaults(services.engine, audit.connection if audit else None)
    yield faults
    faults.close()


class CountingToken:
    """A token source that counts its calls: the client asks for the token before every
    request, so the count is the number of requests it sent."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls = 0

    def __call__(self) -> str:
        self.calls += 1
        return self.token


class Flavour:
    """One client flavour behind awaitable calls. The sync client runs in a worker thread,
    so the test's loop (where the webhook receiver lives) keeps running meanwhile."""

    def __init__(self, kind: str, base_url: str) -> None:
        self.kind = kind
        self.base_url = base_url
        self._open: list[Any] = []

    def client(self, token: Any, retries: Retries = FAST_RETRIES, **kwargs: Any) -> Any:
        cls = BrokerClient if self.kind == "sync" else AsyncBrokerClient
        made = cls(kwargs.pop("base_url", self.base_url), token, retries=retries, **kwargs)
        self._open.append(made)
        return made

    async def call(self, client: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.kind == "sync":
            return await asyncio.to_thread(getattr(client, method), *args, **kwargs)
        return await getattr(client, method)(*args, **kwargs)

    async def take(self, stream: Any, count: int) -> list[Event]:
        """The first `count` events of an events stream (all of it when it ends first)."""
        if self.kind == "sync":
            return await asyncio.to_thread(lambda: list(itertools.islice(stream, count)))
        taken: list[Event] = []
        async for event in stream:
            taken.append(event)
            if len(taken) == count:
                break
        return taken

    async def close(self) -> None:
        for made in self._open:
            if isinstance(made, BrokerClient):
                made.close()
            else:
                await made.aclose()


@pytest.fixture(params=["sync", "async"])
async def flavour(request: pytest.FixtureRequest, live: LiveBroker) -> AsyncIterator[Flavour]:
    made = Flavour(request.param, live.url)
    yield made
    await made.close()


@pytest.fixture
def counting(token: Callable[..., str]) -> Callable[..., CountingToken]:
    def build(scope: str, **claims: Any) -> CountingToken:
        return CountingToken(token(scope, **claims))

    return build
