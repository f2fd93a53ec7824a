"""The upstream client's retry rules, without a network: the backoff schedule, which
failures count as "nothing was sent", and when a retry may still be spent. (The calls
themselves are tested against the fake Neto in tests/api/test_invoke.py.)"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey

from service.config import Settings
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
