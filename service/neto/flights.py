"""Coalesced reads: identical read calls in flight at the same moment on this replica share
one upstream call (issue 22, item 2).

Many services read the same hot item at once, and each read costs the merchant's shared
budget. A read whose key (store, lane, action, the body bytes sent, content type and
Accept: `pipeline.forward` builds it) matches a flight already out under the same
credentials joins it and gets the same answer,
or the same error; it spends nothing of the store's budget. Nothing is kept past the
flight: the key goes the moment the answer is in, so a later read goes upstream again.

The callers' own checks (token, store and action grants, `fields`) all run before a call
gets here; writes never come here (each write is its caller's own, and an idempotency key
already decides whether it is sent).

The first caller sends the call itself, in its own request's task: a read nobody joins
costs a dict entry, never a task or a future. Joiners wait on a future made when the
first one joins. If the first caller goes away before an answer (it left while queued
for the store's budget, or its task was cancelled), that is no answer for the joiners:
each starts again.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from starlette.requests import ClientDisconnect

from service.errors import BrokerError
from service.web import metrics

T = TypeVar("T")


class _FirstCallerLeft(Exception):
    """The flight's first caller went away before an answer: joiners start again."""


class _Flight(Generic[T]):
    __slots__ = ("joined", "owner")

    def __init__(self, owner: object) -> None:
        self.owner = owner  # the credentials the call is sent with: only the same join
        self.joined: asyncio.Future[T] | None = None


class Flights(Generic[T]):
    """The reads in flight on this replica, by key."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}

    def __len__(self) -> int:
        return len(self._flights)

    async def share(self, key: Hashable, owner: object, start: Callable[[], Awaitable[T]]) -> T:
        """The answer of the flight under `key`: joined if one is out under the same
        `owner` (the store's credentials), else sent now with `start`."""
        while True:
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, owner, start)
            if flight.owner != owner:
                # A flight under other credentials (a reinstall or a rotation overlapping
                # it): this read goes by itself, and nobody joins it.
                return await start()
            if flight.joined is None:
                flight.joined = asyncio.get_running_loop().create_future()
            metrics.COALESCED_READS.inc()
            try:
                # Shielded: a joiner that goes away must not cancel the others' answer.
                return await asyncio.shield(flight.joined)
            except _FirstCallerLeft:
                continue
            except BrokerError as exc:
                # Each caller gets its own error: `answer` adds the caller's lane's
                # RateLimit headers to it, and lanes differ between joiners.
                own = copy.copy(exc)
                own.headers = dict(exc.headers)
                raise own from None

    async def _lead(self, key: Hashable, owner: object, start: Callable[[], Awaitable[T]]) -> T:
        flight: _Flight[T] = _Flight(owner)
        self._flights[key] = flight
        try:
            result = await start()
        except BaseException as exc:
            del self._flights[key]
            joined = flight.joined
            if joined is not None and not joined.done():
                left = isinstance(exc, ClientDisconnect) or not isinstance(exc, Exception)
                joined.set_exception(_FirstCallerLeft() if left else exc)
                joined.exception()  # retrieved here: no "never retrieved" warning if none waits
            raise
        del self._flights[key]
        if flight.joined is not None and not flight.joined.done():
            flight.joined.set_result(result)
        return result
