"""`AsyncBrokerClient`: the broker from asyncio code (httpx.AsyncClient). Same calls,
retries and answers as `BrokerClient`."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

from neto_broker_client import _core
from neto_broker_client._core import Call, Retries
from neto_broker_client.models import Bundle, Event, EventPage, InvokeResult

AsyncTokenSource = str | Callable[[], str] | Callable[[], Awaitable[str]]


class AsyncBrokerClient:
    """Calls the broker as one internal service. `token_source`: the caller JWT, or a
    function (plain or async) returning it, called before every request so a service
    can refresh its token. `http`: an httpx.AsyncClient of your own; it is not closed by
    `aclose()`. Transport failures that outlast the retries raise httpx's errors."""

    def __init__(
        self,
        base_url: str,
        token_source: AsyncTokenSource,
        *,
        timeout: float = 10.0,
        retries: Retries = Retries(),
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token_source
        self._timeout = timeout
        self.retries = retries
        self._owns_http = http is None
        self._http = http if http is not None else httpx.AsyncClient()

    async def __aenter__(self) -> AsyncBrokerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def credentials(self, store_id: str) -> Bundle:
        """A credential bundle for the store (token scope `credentials:read`)."""
        return _core.bundle_of(await self._send(_core.credentials_call(store_id)))

    async def invoke(
        self,
        store_id: str,
        action: str,
        body: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> InvokeResult:
        """Calls a Neto action for the store through the broker (scope `invoke`). Reads
        are retried; a write only with `idempotency_key`, which the broker uses to send it
        to Neto at most once (a repeat answers `replayed=True`)."""
        call = _core.invoke_call(store_id, action, body, idempotency_key)
        return _core.result_of(await self._send(call))

    async def events_page(
        self, after: str | None = None, wait: float = 0, limit: int = 100
    ) -> EventPage:
        """One answer of the feed (scope `events:read`): events after the cursor `after`;
        with `wait` seconds (at most 30), an empty answer is held until one commits."""
        return _core.page_of(await self._send(_core.events_call(after, wait, limit)))

    def events(
        self, after: str | None = None, wait: float = 30, limit: int = 100
    ) -> AsyncEventStream:
        """Every event after `after`, in commit order, long polling `wait` seconds at a
        time (`async for`); with `wait=0` the iteration ends once it has caught up."""
        return AsyncEventStream(self, after, wait, limit)

    async def _headers(self, call: Call) -> dict[str, str]:
        if isinstance(self._token, str):
            token = self._token
        else:
            got = self._token()
            token = await got if inspect.isawaitable(got) else got
        return {"Authorization": f"Bearer {token}", "User-Agent": _core.USER_AGENT,
                **(call.headers or {})}  # fmt: skip

    async def _send(self, call: Call) -> httpx.Response:
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self._http.request(
                    call.method,
                    self.base_url + call.path,
                    params=call.params,
                    json=call.json,
                    headers=await self._headers(call),
                    timeout=self._timeout + call.extra_timeout,
                )
            except httpx.TransportError as error:
                delay = _core.retry_delay(self.retries, call, attempt, error=error)
                if delay is None:
                    raise
            else:
                delay = _core.retry_delay(self.retries, call, attempt, response=response)
                if delay is None:
                    return response
                await response.aclose()
            await asyncio.sleep(delay)


class AsyncEventStream(AsyncIterator[Event]):
    """The feed as an async iterator. `cursor` is where the page being read began:
    resuming from it may repeat that page's events (at least once; dedupe by `Event.id`),
    never skips one."""

    def __init__(self, client: AsyncBrokerClient, after: str | None, wait: float, limit: int):
        self.cursor = after
        self._client = client
        self._wait = wait
        self._limit = limit
        self._next = after
        self._buffer: deque[Event] = deque()

    def __aiter__(self) -> AsyncEventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._buffer:
            self.cursor = self._next
            page = await self._client.events_page(self.cursor, self._wait, self._limit)
            self._buffer.extend(page.events)
            self._next = page.next_cursor
            if not page.events and self._wait == 0:
                self.cursor = self._next
                raise StopAsyncIteration
        return self._buffer.popleft()
