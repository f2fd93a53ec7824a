"""The upstream client's retry rules, without a network: the backoff schedule, which
failures count as "nothing was sent", and when a retry may still be spent. The calls
themselves are tested against the fake Neto in tests/api/test_invoke.py; the rules that
need a store held mid-call (slots, pauses, fences, redirects) against a local store API
here."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.client_reqrep import ConnectionKey

from service.config import Settings
from service.errors import BrokerError, RateLimited, UpstreamUnreachable
from service.neto.credentials import StoreCredentials
from service.neto.upstream import (
    BACKOFF_CAP_SECONDS,
    UpstreamClient,
    egress_refused,
    nothing_sent,
)
from service.neto.urls import ApiUrlBuilder
from service.security.egress import EgressRefused

KEY = ConnectionKey("shop.example.com", 443, True, True, None, None, None)


def connector_error(os_error: OSError) -> aiohttp.ClientConnectorError:
    return aiohttp.ClientConnectorError(KEY, os_error)


@pytest.fixture
async def upstream():
    # A budget of 30 a minute: a bucket of 3 (its tenth), refilling 0.45 a second.
    settings = Settings(_env_file=None, env="development", store_rate_per_minute=30)  # type: ignore[call-arg]
    session = aiohttp.ClientSession()
    client = UpstreamClient(
        session, ApiUrlBuilder("https://{store_domain}/do/WS/NetoAPI"), settings
    )
    yield client
    await session.close()


@pytest.mark.parametrize(
    ("attempt", "cap"), [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (6, 2.0), (9, 2.0)]
)
def test_backoff_doubles_from_a_tenth_of_a_second_up_to_two(attempt, cap):
    assert UpstreamClient._backoff_cap(attempt) == pytest.approx(cap)
    assert BACKOFF_CAP_SECONDS == 2.0


@pytest.mark.parametrize("attempt", [1, 3, 6])
async def test_backoff_waits_between_half_the_cap_and_the_cap(upstream, attempt):
    cap = UpstreamClient._backoff_cap(attempt)
    waits = [upstream._backoff(attempt) for _ in range(400)]
    assert all(cap / 2 <= w <= cap for w in waits), (min(waits), max(waits))
    # Jitter: spread over the whole upper half, not one fixed value.
    assert min(waits) < cap * 0.6 and max(waits) > cap * 0.9, (min(waits), max(waits))


def test_a_connection_that_never_opened_sent_nothing():
    assert nothing_sent(connector_error(ConnectionRefusedError(111, "refused")))
    assert nothing_sent(aiohttp.ConnectionTimeoutError("connect timed out"))
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = connector_error(ConnectionRefusedError(111, "refused"))
    assert nothing_sent(wrapped), "the cause chain is followed"


@pytest.mark.parametrize(
    "exc",
    [
        aiohttp.ServerDisconnectedError(),
        aiohttp.ClientOSError(104, "reset by peer"),
        aiohttp.SocketTimeoutError("read timed out"),
        ConnectionResetError(104, "reset"),
    ],
    ids=["disconnected", "reset", "read-timeout", "os-reset"],
)
def test_a_failure_after_connecting_counts_as_sent(exc):
    assert not nothing_sent(exc)


def test_an_egress_refusal_is_found_inside_the_connector_error():
    refused = connector_error(EgressRefused("refusing to connect to non-public address ::1"))
    assert egress_refused(refused)
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = refused
    assert egress_refused(wrapped)
    assert not egress_refused(connector_error(ConnectionRefusedError(111, "refused")))


async def test_retries_stop_at_the_configured_count(upstream):
    deadline = asyncio.get_running_loop().time() + 60
    assert upstream._max_retries == 2
    assert upstream._may_retry(1, deadline, _creds("S1"))
    assert upstream._may_retry(2, deadline, _creds("S1"))
    assert not upstream._may_retry(3, deadline, _creds("S1"))


async def test_no_retry_whose_wait_would_outlast_the_deadline(upstream):
    now = asyncio.get_running_loop().time()
    cap = UpstreamClient._backoff_cap(1)
    assert not upstream._may_retry(1, now + cap / 2, _creds("S2"))
    assert upstream._may_retry(1, now + cap + 5, _creds("S2"))


async def test_a_retry_spends_the_stores_budget(upstream):
    deadline = asyncio.get_running_loop().time() + 60
    creds = _creds("S3")
    spent = [upstream._may_retry(1, deadline, creds) for _ in range(4)]
    assert spent == [True, True, True, False], "a bucket of 3 allows three retries"
    assert upstream._may_retry(1, deadline, _creds("S4")), "another store's budget is its own"


def _creds(store_id: str) -> Any:
    return SimpleNamespace(store_id=store_id)  # _may_retry reads the store id only


class StoreApi:
    """A local store API: records what each request carried; answers `status` (a 429
    or 3xx included), holding each answer until `release` is set when `hold` is."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        self.status = 200
        self.hold = False
        self.chunked = False  # answer without a Content-Length (the streamed read)
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.path, dict(request.headers)))
        self.arrived.set()
        if self.hold:
            await self.release.wait()
        if self.chunked:
            streamed = web.StreamResponse(status=self.status)
            streamed.content_type = "text/xml"
            streamed.charset = "utf-8"
            streamed.enable_chunked_encoding()
            await streamed.prepare(request)
            for part in (b"<Ack>", b"Success</Ack>"):
                await streamed.write(part)
            await streamed.write_eof()
            return streamed  # type: ignore[return-value]
        return web.json_response({"Ack": "Success"}, status=self.status)


@pytest.fixture
async def store_api():
    api = StoreApi()
    app = web.Application()
    app.router.add_post("/{domain}/do/WS/NetoAPI", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, env="development", store_max_in_flight=1, upstream_max_retries=0
    )
    session = aiohttp.ClientSession()
    template = f"http://127.0.0.1:{port}/{{store_domain}}/do/WS/NetoAPI"
    api.client = UpstreamClient(session, ApiUrlBuilder(template), settings)  # type: ignore[attr-defined]
    yield api
    api.release.set()
    await session.close()
    await runner.cleanup()


def _store(store_id: str = "N1", domain: str = "shop.example.com", secret: str = "tok-1"):
    return StoreCredentials(
        store_id=store_id, store_domain=domain, auth_method="oauth", status="active",
        change_seq=1, who="client-id", secret=secret,
    )  # fmt: skip


async def test_a_call_that_waited_for_its_slot_sees_a_pause_begun_meanwhile(store_api):
    # One slot: the first call holds it; the second waits. Neto answers the first with
    # 429, which pauses the store; the second must not be sent once it gets the slot.
    client, creds = store_api.client, _store()
    store_api.hold, store_api.status = True, 429
    first = asyncio.create_task(client.call(creds, "GetItem", b"{}", request_id=None))
    await store_api.arrived.wait()
    second = asyncio.create_task(client.call(creds, "GetItem", b"{}", request_id=None))
    await asyncio.sleep(0.05)  # the second is queued for the slot
    store_api.release.set()
    for task in (first, second):
        with pytest.raises(RateLimited) as refused:
            await task
        assert refused.value.detail == "Neto rate-limited this store; retry after the pause."
    assert len(store_api.seen) == 1, "the call that waited was sent into the pause"


async def test_one_store_at_its_in_flight_cap_does_not_hold_another(store_api):
    client = store_api.client
    store_api.hold = True
    busy = asyncio.create_task(client.call(_store("N1"), "GetItem", b"{}", request_id=None))
    await store_api.arrived.wait()
    other = asyncio.create_task(
        client.call(_store("N2", "other.example.com"), "GetItem", b"{}", request_id=None)
    )
    async with asyncio.timeout(0.5):
        while len(store_api.seen) < 2:
            await asyncio.sleep(0.01)
    store_api.release.set()
    assert (await busy).status == 200 and (await other).status == 200
    assert [path for path, _ in store_api.seen] == [
        "/shop.example.com/do/WS/NetoAPI",
        "/other.example.com/do/WS/NetoAPI",
    ]


async def test_the_fence_decides_whether_and_with_what_a_call_is_sent(store_api):
    client, old = store_api.client, _store()
    new = _store(domain="moved.example.com", secret="tok-2")

    class Fixed:
        """A fence that answers `read` before each attempt and never sees a change."""

        def __init__(self, read: Callable[[], Awaitable[StoreCredentials]]) -> None:
            self.read = read

        async def __call__(self) -> StoreCredentials:
            return await self.read()

        def check(self) -> None:
            pass

    async def gone() -> StoreCredentials:
        raise BrokerError("revoked meanwhile")

    async def moved() -> StoreCredentials:
        return new

    revoked = Fixed(gone)
    rotated = Fixed(moved)
    with pytest.raises(BrokerError, match="revoked meanwhile"):
        await client.call(old, "GetItem", b"{}", request_id=None, fence=revoked)
    assert store_api.seen == [], "a fenced-off store was called"

    media = {"Content-Type": "text/xml", "Accept": "text/xml"}
    response = await client.call(
        old, "GetOrder", b"<x/>", request_id="r-1", fence=rotated, media=media
    )
    assert response.status == 200
    path, headers = store_api.seen[0]
    assert path == "/moved.example.com/do/WS/NetoAPI", "sent to the old domain"
    assert headers["X_SECRET_KEY"] == "tok-2", "sent with the old secret"
    assert headers["NETOAPI_ACTION"] == "GetOrder"
    assert headers["Content-Type"] == "text/xml" and headers["Accept"] == "text/xml"
    assert headers["X-Request-ID"] == "r-1"
    assert headers["Accept-Encoding"] == "identity", "the size cap would measure compressed bytes"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_answer_keeps_its_body_and_content_type_however_it_is_framed(store_api, chunked):
    """An answer with a Content-Length is read in one call, one without it is streamed
    (counted against the cap): either way the caller gets Neto's body and content type."""
    store_api.chunked = chunked
    answer = await store_api.client.call(_store(), "GetItem", b"{}", request_id=None)
    assert answer.status == 200
    if chunked:
        assert (answer.body, answer.content_type) == (
            b"<Ack>Success</Ack>",
            "text/xml; charset=utf-8",
        )
    else:
        assert answer.body == b'{"Ack": "Success"}'
        assert answer.content_type == "application/json; charset=utf-8"


@pytest.mark.parametrize("status", [300, 301, 307, 399])
async def test_every_3xx_is_refused_naming_the_redirect(store_api, status):
    store_api.status = status
    with pytest.raises(UpstreamUnreachable) as refused:
        await store_api.client.call(_store(), "GetItem", b"{}", request_id=None)
    assert refused.value.detail == (
        f"The store's Neto API answered with a redirect (HTTP {status}), which the broker "
        "does not follow; check the store's domain."
    )


async def test_a_connect_that_hangs_is_given_up_at_the_connect_timeout():
    # A listener whose accept queue is full: the kernel drops further SYNs, so a new
    # connection neither opens nor fails. The connect timeout ends it (nothing was sent:
    # 502, not the 504 of the whole call's deadline).
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers: list[socket.socket] = []
    try:
        while True:
            filler = socket.socket()
            filler.settimeout(0.2)
            fillers.append(filler)
            try:
                filler.connect(listener.getsockname())
            except TimeoutError:
                break
        port = listener.getsockname()[1]
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, env="development", upstream_connect_timeout_seconds=0.3,
            upstream_deadline_seconds=5, upstream_max_retries=0,
        )  # fmt: skip
        async with aiohttp.ClientSession() as session:
            template = f"http://127.0.0.1:{port}/{{store_domain}}/do/WS/NetoAPI"
            client = UpstreamClient(session, ApiUrlBuilder(template), settings)
            started = asyncio.get_running_loop().time()
            with pytest.raises(UpstreamUnreachable):
                await client.call(_store(), "GetItem", b"{}", request_id=None)
            assert asyncio.get_running_loop().time() - started < 2
    finally:
        for sock in (*fillers, listener):
            sock.close()
