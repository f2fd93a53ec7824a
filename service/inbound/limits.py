"""Bounds on what the anonymous internet, and one store's URL, can make the receiver do.

Neto sends every store's notifications from its own few addresses, so a bound per
address alone would let one store's flood (or one merchant's stale URL, refused again
and again) hold back every other store's. Three bounds, each in this replica's memory:
- every request from an address prefix (IPv4 address, IPv6 /64), a generous rate: the
  most one sender can make the database do;
- refusals (wrong token, malformed or oversized body) per address prefix *and store*: a
  sender guessing one store's URL is stopped without touching another store's traffic;
- accepted notifications per store, by rate and by how many are being written at once:
  a flood on one store's URL (a leaked one, or a merchant's bulk update) waits its turn
  with 429 while other stores' notifications are written as they come.
Token buckets (O(1) per key), the keys swept once there are many (amortised O(1)).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager

from service.errors import RateLimited

MAX_KEYS = 100_000


class Buckets:
    """A token bucket per key: `per_minute` a minute, a burst of as many."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = per_minute / 60.0
        self._burst = float(per_minute)
        self._clock = clock
        self._tokens: dict[Hashable, tuple[float, float]] = {}  # key -> (tokens, at)

    def _level(self, key: Hashable, now: float) -> float:
        tokens, at = self._tokens.get(key, (self._burst, now))
        return min(self._burst, tokens + (now - at) * self._rate)

    def wait(self, key: Hashable) -> float:
        """Seconds until `key` has a token (0: it has one now); takes nothing."""
        level = self._level(key, self._clock())
        return 0.0 if level >= 1 else (1 - level) / self._rate

    def take(self, key: Hashable) -> None:
        now = self._clock()
        if key not in self._tokens and len(self._tokens) >= MAX_KEYS:
            self._sweep(now)
        self._tokens[key] = (self._level(key, now) - 1, now)

    def _sweep(self, now: float) -> None:
        """Forget full buckets (they are what a new key starts with), then the oldest,
        down to nine tenths of MAX_KEYS: a sweep reads every key, so one that freed a
        single slot would run again for each new key (40 ms each at 100,000 drained
        buckets, which a sender cycling addresses or store ids can make)."""
        for key in [k for k in self._tokens if self._level(k, now) >= self._burst]:
            del self._tokens[key]
        while len(self._tokens) >= MAX_KEYS * 9 // 10:
            del self._tokens[next(iter(self._tokens))]


def _refuse(seconds: float, detail: str) -> RateLimited:
    return RateLimited(detail, headers={"Retry-After": str(max(1, int(seconds + 0.999)))})


class NotifyGate:
    def __init__(
        self,
        *,
        address_per_minute: int,
        refusals_per_minute: int,
        store_per_minute: int,
        store_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._addresses = Buckets(address_per_minute, clock)
        self._refusals = Buckets(refusals_per_minute, clock)
        self._stores = Buckets(store_per_minute, clock)
        self._max_in_flight = store_in_flight
        self._in_flight: dict[str, int] = {}

    def arrive(self, prefix: str, store_id: str) -> None:
        """Before anything is read: 429 for a sender over its rate, or one refused too
        often for this store."""
        for buckets, key, detail in (
            (self._addresses, prefix, "Too many notifications from this address"),
            (self._refusals, (prefix, store_id),
             "Too many refused notifications for this store's URL from this address"),
        ):  # fmt: skip
            wait = buckets.wait(key)
            if wait:
                raise _refuse(wait, f"{detail}; retry later.")
        self._addresses.take(prefix)

    def refused(self, prefix: str, store_id: str) -> None:
        self._refusals.take((prefix, store_id))

    @contextmanager
    def store(self, store_id: str) -> Iterator[None]:
        """Held while one accepted notification of the store is written: 429 when the
        store is over its rate or has as many being written as it may."""
        wait = self._stores.wait(store_id)
        if wait:
            raise _refuse(wait, "Too many notifications for this store; retry later.")
        held = self._in_flight.get(store_id, 0)
        if held >= self._max_in_flight:
            raise _refuse(1, "Too many notifications for this store at once; retry shortly.")
        self._stores.take(store_id)
        self._in_flight[store_id] = held + 1
        try:
            yield
        finally:
            left = self._in_flight[store_id] - 1
            if left:
                self._in_flight[store_id] = left
            else:
                del self._in_flight[store_id]
