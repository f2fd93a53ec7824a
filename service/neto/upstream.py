"""The client for a store's Neto API: one POST per call, with the broker's limits.

Built once per app on the shared aiohttp session (`neto/http.py`: egress rules at
connect time, no cookies, no proxies). It calls aiohttp directly: httpx's client layer on
top measured more CPU per request than the whole aiohttp request (docs/performance.md).
What it guarantees:

* The request carries only `NETOAPI_ACTION`, `Content-Type`/`Accept` (JSON unless the
  door passes the caller's: the Neto-compatible endpoint does, so Neto answers XML to an
  XML client), `Accept-Encoding: identity` (so the size cap measures the real body and
  callers get bytes they can read), the store's auth headers, the request id and the
  broker's `User-Agent`.
* One overall deadline (BROKER_UPSTREAM_DEADLINE_SECONDS) covers every attempt, the
  backoff between them and the reading of the body, so a slow-drip answer cannot
  outlive it: 504 `upstream_timeout`.
* The answer is read into memory up to BROKER_MAX_RESPONSE_BYTES (refused by its
  Content-Length up front, or as soon as the count passes it): 502
  `upstream_response_too_large`.
* Read actions are retried on connection failures and 500/502/503/504 with capped
  exponential backoff and jitter, inside the deadline and the store's budget. A write is
  retried only when the connection could not be opened (aiohttp's connector error or
  connect timeout: not one byte was sent); a failure after that is never retried, since
  Neto may have applied it.
* Redirects are never followed: a 3xx becomes 502 `upstream_unreachable`, naming it.
* An upstream 429 pauses the store (see `limits.py`) and answers 429 `rate_limited`.
* With a `fence`, the store's credentials are re-checked right before every attempt (after
  any wait for a slot or a backoff), and once more when the request has its connection
  (`http.HANDOFF`), so a store revoked meanwhile is not called again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
import yarl

from service import tracing
from service.config import Settings
from service.errors import (
    UpstreamResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from service.neto.actions import is_write
from service.neto.credentials import StoreCredentials
from service.neto.flights import Flights
from service.neto.http import HANDOFF
from service.neto.limits import StoreLimits, rate_limited
from service.neto.memory import ByteBudget, Reservation
from service.neto.queue import INTERACTIVE
from service.neto.urls import ApiUrlBuilder
from service.security.egress import is_refusal
from service.web import metrics

log = logging.getLogger("broker.upstream")

RETRY_STATUSES = frozenset({500, 502, 503, 504})
READ_CHUNK = 64 * 1024
BACKOFF_BASE_SECONDS = 0.1
BACKOFF_CAP_SECONDS = 2.0


class StoreChanged(Exception):
    """The store changed (a revoke, a reinstall) since its fence last read it: raised at
    the hand-off, before anything is sent; the fence reads the store again."""


class Fence(Protocol):
    """The store's credentials as a call may use them, checked at two moments."""

    async def __call__(self) -> StoreCredentials:
        """Before each attempt: the credentials as they are now, or raises why the store
        may not be called."""

    def check(self) -> None:
        """At the hand-off to the socket: StoreChanged if the store changed since the
        last call; cheap (no I/O), since nothing may wait there."""


# The media headers of a call: what the body is and what answer is wanted. Only
# `Content-Type` and `Accept` belong here; the store's auth headers always win.
JSON_MEDIA: Mapping[str, str] = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str | None
    replayed: bool = False  # kept from a first try of an idempotent write (idempotency/)


class _TooLarge(Exception):
    pass


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception and what it wraps (a connector error carries the OS error)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(chain) < 8:
        chain.append(current)
        if isinstance(current, aiohttp.ClientConnectorError):
            chain.append(current.os_error)
        current = current.__cause__
    return chain


def nothing_sent(exc: BaseException) -> bool:
    """True only when the connection was never opened, so no byte of the request left.
    A dropped pooled connection or a reset mid-request is not known to be unsent and
    counts as sent."""
    return any(
        isinstance(e, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
        for e in _causes(exc)
    )


def egress_refused(exc: BaseException) -> bool:
    return any(is_refusal(e) for e in _causes(exc))


class UpstreamClient:
    def __init__(
        self, session: aiohttp.ClientSession, api_urls: ApiUrlBuilder, settings: Settings
    ) -> None:
        self._session = session
        self._api_urls = api_urls
        # The deadline is enforced around the whole call; aiohttp only bounds the connect.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.upstream_connect_timeout_seconds
        )
        self._deadline = settings.upstream_deadline_seconds
        self._max_retries = settings.upstream_max_retries
        self._max_response = settings.max_response_bytes
        self._queue_seconds = settings.store_queue_seconds
        # Bytes of answers being read, across the replica (neto/memory.py).
        self.buffer = ByteBudget(settings.upstream_buffer_bytes)
        # Identical reads in flight share one call (neto/flights.py; pipeline.forward).
        self.reads: Flights[UpstreamResponse] = Flights()
        self.limits = StoreLimits(
            max_in_flight=settings.store_max_in_flight,
            rate_per_minute=settings.store_rate_per_minute,
            pause_seconds=settings.rate_limit_pause_seconds,
            batch_share=settings.batch_share,
        )

    async def call(
        self,
        creds: StoreCredentials,
        action: str,
        body: bytes,
        *,
        request_id: str | None,
        fence: Fence | None = None,
        media: Mapping[str, str] = JSON_MEDIA,
        lane: str = INTERACTIVE,
        caller: str = "",
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> UpstreamResponse:
        """Send one action to the store's API under its limits, waiting in `lane` for the
        store's budget; Neto's answer, or a BrokerError saying why there is none."""
        store_id = creds.store_id
        deadline = asyncio.get_running_loop().time() + self._deadline
        if not self.limits.take_now(store_id, lane, caller):
            wait = self.limits.take(
                store_id, lane=lane, caller=caller, disconnected=disconnected,
                max_wait=min(self._queue_seconds, self._deadline / 2),
            )  # fmt: skip
            if tracing.ENABLED:
                waiting = {"broker.store_id": store_id, "broker.lane": lane}
                with tracing.span("budget.wait", waiting):
                    await wait
            else:
                await wait
        async with self.limits.slot(store_id):
            # A pause may have begun while this call waited for its slot.
            self.limits.check_paused(store_id)
            response = await self._exchange(creds, action, body, request_id, fence, media, deadline)
        if response.status == 429:
            pause = self.limits.pause(store_id)
            fields = {"store_id": store_id, "pause_seconds": pause}
            log.warning("store paused after Neto 429", extra={"fields": fields})
            raise rate_limited(pause, "Neto rate-limited this store; retry after the pause.")
        if 300 <= response.status < 400:
            raise UpstreamUnreachable(
                f"The store's Neto API answered with a redirect (HTTP {response.status}), "
                "which the broker does not follow; check the store's domain."
            )
        return response

    async def _exchange(
        self,
        creds: StoreCredentials,
        action: str,
        body: bytes,
        request_id: str | None,
        fence: Fence | None,
        media: Mapping[str, str],
        deadline: float,
    ) -> UpstreamResponse:
        headers = self._headers(creds, action, request_id, media)
        url = yarl.URL(self._api_urls.url_for(creds.store_domain), encoded=True)
        retry_reads = not is_write(action)
        last: UpstreamResponse | None = None
        attempt = 0
        maybe_sent = False
        handoff = HANDOFF.set(fence.check) if fence is not None else None
        try:
            async with asyncio.timeout_at(deadline):
                while True:
                    attempt += 1
                    if fence is not None:
                        current = await fence()  # raises if the store was revoked
                        if current is not creds:  # reinstalled or rotated meanwhile
                            creds = current
                            headers = self._headers(creds, action, request_id, media)
                            url = yarl.URL(self._api_urls.url_for(creds.store_domain), encoded=True)
                    try:
                        if tracing.ENABLED:
                            last = await self._traced_attempt(url, headers, body, creds, action,
                                                              attempt)  # fmt: skip
                        else:
                            last = await self._attempt(url, headers, body)
                    except StoreChanged:
                        # Changed while the connection was being got: nothing was sent,
                        # so no attempt spent; the fence reads the store again.
                        attempt -= 1
                        continue
                    except (aiohttp.ClientError, OSError) as exc:
                        last = None
                        unsent = nothing_sent(exc)
                        maybe_sent = maybe_sent or not unsent
                        self._connection_failed(exc, creds, action, unsent)
                        retryable = retry_reads or unsent
                    else:
                        metrics.count_upstream(action, str(last.status))
                        retryable = retry_reads and last.status in RETRY_STATUSES
                        if not retryable:
                            return last
                    if not (retryable and self._may_retry(attempt, deadline, creds)):
                        break
                    await asyncio.sleep(self._backoff(attempt))
        except _TooLarge:
            metrics.count_upstream(action, "too_large")
            raise UpstreamResponseTooLarge() from None
        except TimeoutError:
            metrics.count_upstream(action, "timeout")
            raise UpstreamTimeout() from None
        finally:
            if handoff is not None:
                HANDOFF.reset(handoff)
        if last is not None:  # a read that kept failing with 5xx: Neto's last answer
            return last
        unreachable = UpstreamUnreachable()
        unreachable.maybe_sent = maybe_sent
        raise unreachable

    @staticmethod
    def _headers(
        creds: StoreCredentials, action: str, request_id: str | None, media: Mapping[str, str]
    ) -> dict[str, str]:
        headers = {
            "NETOAPI_ACTION": action,
            **media,
            "Accept-Encoding": "identity",
            **creds.headers,
        }
        if request_id:
            headers["X-Request-ID"] = request_id
        return headers

    async def _traced_attempt(
        self, url: yarl.URL, headers: dict[str, str], body: bytes, creds: StoreCredentials,
        action: str, attempt: int,
    ) -> UpstreamResponse:  # fmt: skip
        """`_attempt` in a span of its own: the action, the store, the retry number and
        Neto's status. No `traceparent` goes to Neto (a third party): the headers are
        the ones `_headers` built, and nothing instruments the session."""
        attributes = {"neto.action": action, "broker.store_id": creds.store_id,
                      "broker.retry": attempt - 1}  # fmt: skip
        with tracing.span(f"neto {action}", attributes, tracing.SpanKind.CLIENT) as current:
            response = await self._attempt(url, headers, body)
            current.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                current.set_status(tracing.StatusCode.ERROR)
            return response

    async def _attempt(
        self, url: yarl.URL, headers: dict[str, str], body: bytes
    ) -> UpstreamResponse:
        async with self._session.post(
            url, data=body, headers=headers, allow_redirects=False, timeout=self._timeout
        ) as response:
            # Released when the aiohttp response is done; the body then lives on in the
            # caller's answer until sent, outside the budget (neto/memory.py).
            held = Reservation(self.buffer)
            try:
                length = response.content_length
                if length is not None:
                    if length > self._max_response:
                        raise _TooLarge()
                    # Before the body is read: while this waits, the answer stays in the
                    # socket. The length is within the cap, and aiohttp reads no more.
                    await held.add(length)
                    body = await response.read()
                    return UpstreamResponse(
                        response.status, body, response.headers.get("Content-Type")
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_chunked(READ_CHUNK):
                    size += len(chunk)
                    if size > self._max_response:
                        raise _TooLarge()
                    await held.add(len(chunk))
                    chunks.append(chunk)
                return UpstreamResponse(
                    response.status, b"".join(chunks), response.headers.get("Content-Type")
                )
            finally:
                held.close()

    def _connection_failed(
        self, exc: BaseException, creds: StoreCredentials, action: str, unsent: bool
    ) -> None:
        metrics.count_upstream(action, "connect_error" if unsent else "error")
        fields = {"store_id": creds.store_id, "action": action, "error_type": type(exc).__name__}
        if egress_refused(exc):  # permanent: never retried
            log.warning("upstream address refused by egress rules", extra={"fields": fields})
            raise UpstreamUnreachable(
                "The store's API address is not one the broker may connect to."
            ) from None
        log.warning("upstream connection failed", extra={"fields": {**fields, "sent": not unsent}})

    def _may_retry(self, attempt: int, deadline: float, creds: StoreCredentials) -> bool:
        if attempt > self._max_retries:
            return False
        # Only if the wait still leaves time for an answer; a retry spends budget too.
        if asyncio.get_running_loop().time() + self._backoff_cap(attempt) >= deadline:
            return False
        return self.limits.try_take(creds.store_id)

    @staticmethod
    def _backoff_cap(attempt: int) -> float:
        return min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2.0 ** (attempt - 1))

    def _backoff(self, attempt: int) -> float:
        cap = self._backoff_cap(attempt)
        return cap / 2 + random.uniform(0, cap / 2)  # noqa: S311 (jitter, not a secret)
