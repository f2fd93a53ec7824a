"""Per-store limits on the calls the broker makes to Neto, kept per replica.

Neto allows 500 requests a minute per store, shared by every integration of that store,
and answers 429 ("wait a minute") past it. The broker keeps each store under its own
budget (BROKER_STORE_RATE_PER_MINUTE, a sliding 60 s window, so no 60 s span ever holds
more) and, after an upstream 429, pauses the store for BROKER_RATE_LIMIT_PAUSE_SECONDS:
calls during the pause are answered 429 at once without going upstream. At most
BROKER_STORE_MAX_IN_FLIGHT calls per store run at the same time; a call over that waits
up to QUEUE_WAIT_SECONDS for a slot, then gets 429.

The state lives in this process: with N replicas a store can see up to N times the
budget, so set BROKER_STORE_RATE_PER_MINUTE to 500 / N when running several replicas.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from service.errors import BrokerError, RateLimited
from service.web import metrics

WINDOW_SECONDS = 60.0
# A short queue absorbs bursts; a long one would only move the wait into callers' timeouts.
QUEUE_WAIT_SECONDS = 1.0
# How many stores' state is kept before idle ones are swept out.
SWEEP_EVERY = 10_000


def rate_limited(retry_after: float, detail: str) -> BrokerError:
    return RateLimited(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


@dataclass(slots=True)
class _StoreState:
    slots: asyncio.Semaphore
    sent: deque[float] = field(default_factory=deque)  # send times inside the window
    paused_until: float = 0.0
    exhausted: bool = False


class StoreLimits:
    def __init__(
        self,
        *,
        max_in_flight: int,
        rate_per_minute: int,
        pause_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_in_flight = max_in_flight
        self._rate = rate_per_minute
        self._pause_seconds = pause_seconds
        self._clock = clock
        # One entry per store called within the last window (idle ones are swept out as
        # the table grows), so memory follows recent traffic, not the number of installs.
        self._stores: dict[str, _StoreState] = {}
        self._sweep_at = SWEEP_EVERY

    def _state(self, store_id: str) -> _StoreState:
        state = self._stores.get(store_id)
        if state is None:
            if len(self._stores) >= self._sweep_at:
                self._sweep()
            state = _StoreState(slots=asyncio.Semaphore(self._max_in_flight))
            self._stores[store_id] = state
        return state

    def _sweep(self) -> None:
        """Forget stores with nothing to remember: no send in the window, no pause, no
        call in flight. Amortised: the next sweep waits until the table doubles."""
        now = self._clock()
        idle = [
            store_id
            for store_id, state in self._stores.items()
            if state.paused_until <= now
            and (not state.sent or state.sent[-1] <= now - WINDOW_SECONDS)
            and not state.slots.locked()
            and state.slots._value == self._max_in_flight
        ]
        for store_id in idle:
            del self._stores[store_id]
        self._sweep_at = max(SWEEP_EVERY, 2 * len(self._stores))

    def __len__(self) -> int:
        return len(self._stores)

    def check_paused(self, store_id: str) -> None:
        """Raise 429 while the store is paused after an upstream 429."""
        state = self._state(store_id)
        remaining = state.paused_until - self._clock()
        if remaining > 0:
            raise rate_limited(remaining, "Neto rate-limited this store; retry after the pause.")

    def admit(self, store_id: str) -> None:
        """Spend one request of the store's budget, or raise 429 saying how long to wait."""
        self.check_paused(store_id)
        state = self._state(store_id)
        now = self._clock()
        if not self._spend(state, now):
            wait = state.sent[0] + WINDOW_SECONDS - now
            raise rate_limited(wait, "This store's request budget is used up; retry later.")

    def try_take(self, store_id: str) -> bool:
        """Spend one request of the budget if there is one and no pause (for retries)."""
        state = self._state(store_id)
        now = self._clock()
        return state.paused_until <= now and self._spend(state, now)

    def _spend(self, state: _StoreState, now: float) -> bool:
        while state.sent and state.sent[0] <= now - WINDOW_SECONDS:
            state.sent.popleft()
        if len(state.sent) >= self._rate:
            if not state.exhausted:  # count each time a store runs dry, not each refusal
                state.exhausted = True
                metrics.RATE_LIMIT_PAUSES.labels("budget").inc()
            return False
        state.exhausted = False
        state.sent.append(now)
        return True

    def has_headroom(self, store_id: str, fraction: float) -> bool:
        """True when the store is not paused, at least `fraction` of its budget is left
        in the window and at least `fraction` of its slots are free (at least one): the
        health sweep spends a request only then, so it stays behind callers' requests.
        Spends nothing."""
        state = self._stores.get(store_id)
        if state is None:  # nothing sent in the window, nothing in flight
            return True
        now = self._clock()
        recent = sum(1 for sent in state.sent if sent > now - WINDOW_SECONDS)
        free_slots = state.slots._value
        return (
            state.paused_until <= now
            and self._rate - recent >= fraction * self._rate
            and free_slots >= max(1.0, fraction * self._max_in_flight)
        )

    def pause(self, store_id: str) -> float:
        """Neto answered 429: stop calling this store for the pause; returns its length."""
        state = self._state(store_id)
        state.paused_until = self._clock() + self._pause_seconds
        metrics.RATE_LIMIT_PAUSES.labels("upstream_429").inc()
        return self._pause_seconds

    def in_flight(self, store_id: str) -> int:
        """How many of the store's slots are held now (0 once every call has let go)."""
        state = self._stores.get(store_id)
        return 0 if state is None else self._max_in_flight - state.slots._value

    @asynccontextmanager
    async def slot(self, store_id: str) -> AsyncIterator[None]:
        """One of the store's in-flight slots, waiting briefly for one to free up."""
        slots = self._state(store_id).slots
        try:
            if slots.locked():  # only a full store pays for the timer
                async with asyncio.timeout(QUEUE_WAIT_SECONDS):
                    await slots.acquire()
            else:
                await slots.acquire()
        except TimeoutError:
            raise rate_limited(
                1, "Too many requests to this store are in flight; retry shortly."
            ) from None
        try:
            yield
        finally:
            slots.release()
