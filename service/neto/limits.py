"""Per-store limits on the calls the broker makes to Neto.

Neto allows 500 requests a minute per store, shared by every integration of that store,
and answers 429 ("wait a minute") past it. BROKER_STORE_RATE_PER_MINUTE is the store's
budget across *all* replicas: no 60 s span ever holds more calls to one store, however
many replicas send them.

Each replica holds a share of it (`Share`: the budget divided by the live replicas, which
`neto/replicas.py` counts from the heartbeat table and re-sizes within seconds) as a token
bucket per store: it refills at `rate` a second and holds at most `capacity` tokens (a
tenth of the share, at least one). Token buckets add up where sliding windows do not: the
calls of all replicas in any 60 s span are at most what their buckets held at its start
(the capacities, a tenth of the budget) plus what refilled during it (the rates, nine
tenths), so the budget holds even while the replica count changes, provided the rates
never sum above it: a smaller share is taken at once, and a newcomer spends nothing until
every other replica has seen it (`Share.active_in`). A hammered store is therefore held at
90% of its budget, with bursts of up to 10%. No call costs a database round trip.

After an upstream 429 the store is paused for BROKER_RATE_LIMIT_PAUSE_SECONDS: calls
during the pause are answered 429 at once without going upstream. The pause is published
(`on_pause`) so the other replicas pause the store too (`pause_from_elsewhere`). At most
BROKER_STORE_MAX_IN_FLIGHT calls per store run at the same time on a replica; a call over
that waits up to QUEUE_WAIT_SECONDS for a slot, then gets 429.

A call that finds the bucket empty waits for its token (`take`) up to
BROKER_STORE_QUEUE_SECONDS (never past its deadline), first come first served in its lane
and round-robin among the lane's callers (`neto/queue.py`); only then 429, with the wait
its turn would have taken as `Retry-After`. Interactive calls are served before batch
calls, and batch never spends the last (1 - BROKER_BATCH_SHARE) of a bucket's burst: an
interactive call arriving into a batch flood finds tokens at once, and while interactive
calls wait batch gets no token at all. With no interactive call about, batch has the whole
refill rate.

Neto's 500 a minute is shared with the merchant's other add-ons, so after a 429 the store
does not resume at the configured budget (into the next 429): it resumes at a *learned*
budget, what the broker sent to the store in the minute before the 429 (what the others
left over) less MARGIN, and probes upward by PROBE_PER_MINUTE for every minute Neto stays
quiet, until it is back at the configured budget and forgotten. A further 429 learns
again from the lower of the two. The learned budget travels with the pause to the other
replicas (`on_pause`, the heartbeat's `store_pauses`), each taking its share of it.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

from starlette.requests import ClientDisconnect

from service.errors import BrokerError, RateLimited
from service.neto.queue import BATCH, INTERACTIVE, StoreQueue
from service.neto.slots import Slots
from service.web import metrics

WINDOW_SECONDS = 60.0
# The part of a share that may be spent at once; the rest refills over the minute.
BURST_FRACTION = 0.1
# A short queue absorbs bursts; a long one would only move the wait into callers' timeouts.
QUEUE_WAIT_SECONDS = 1.0
# How many stores' state is kept before idle ones are swept out.
SWEEP_EVERY = 10_000
# After a 429: resume this much below what was sent in the minute before it...
MARGIN = 0.05
# ...and grow by this share for every minute without another 429 (compounding: from a
# tenth of the budget back to all of it in about 80 minutes).
PROBE_PER_MINUTE = 0.03
# A learned budget never goes below this share of the configured one (a store whose other
# add-ons use everything is still called, slowly).
FLOOR_FRACTION = 0.02
# What was sent to a store is counted in buckets of this many seconds, a minute of them.
SENT_BUCKET_SECONDS = 10.0
SENT_BUCKETS = int(WINDOW_SECONDS / SENT_BUCKET_SECONDS)


def rate_limited(retry_after: float, detail: str) -> BrokerError:
    return RateLimited(detail, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


@dataclass(frozen=True, slots=True)
class Share:
    """One replica's part of a store's budget: a bucket of `capacity` refilling at `rate`
    tokens a second."""

    capacity: float
    rate: float

    @classmethod
    def of(cls, budget_per_minute: float, replicas: int) -> Share:
        share = budget_per_minute / max(1, replicas)
        # A bucket needs a whole token to send at all; with a share under ten calls a
        # minute the burst is that one token, and under two the share can no longer
        # hold exactly (the refill stays at half the share rather than none).
        capacity = max(1.0, share * BURST_FRACTION)
        refill = max(share - capacity, share / 2)
        return cls(capacity=capacity, rate=refill / WINDOW_SECONDS)


@dataclass(frozen=True, slots=True)
class Learned:
    """A store's budget (calls a minute, all replicas) as Neto's 429 showed it: `per_minute`
    from `since` (monotonic: when the pause ends), growing while Neto stays quiet."""

    per_minute: float
    since: float

    def at(self, now: float) -> float:
        quiet = max(0.0, now - self.since) / WINDOW_SECONDS
        return float(self.per_minute * (1.0 + PROBE_PER_MINUTE) ** quiet)


def probed(per_minute: float, quiet_seconds: float, budget: float) -> float:
    """The learned budget `quiet_seconds` after its pause ended (the installs view and the
    heartbeat compute it from the database's row the same way)."""
    return min(budget, Learned(per_minute, 0.0).at(max(0.0, quiet_seconds)))


def recovery_seconds(per_minute: float, budget: float) -> float:
    """How long after its pause a learned budget is back at the configured one."""
    if per_minute >= budget:
        return 0.0
    return WINDOW_SECONDS * math.log(budget / per_minute) / math.log(1.0 + PROBE_PER_MINUTE)


@dataclass(slots=True)
class _StoreState:
    slots: Slots
    tokens: float
    at: float  # when `tokens` was last brought up to date
    paused_until: float = 0.0
    exhausted: bool = False
    learned: Learned | None = None  # None: the configured budget
    share: Share | None = None  # this replica's part of `learned`, as of `share_at`
    share_at: float = -math.inf
    # Calls sent, per SENT_BUCKET_SECONDS, the last minute of them (made on the first 429
    # risk: most stores never need it); `sent_slot` is the bucket last counted into.
    sent: list[int] | None = None
    sent_slot: int = 0
    queue: StoreQueue | None = None  # calls waiting for a token (made when one must)
    # Tokens each caller took while the store was short of them (neto/queue.py's turns).
    served: dict[str, int] | None = None


class StoreLimits:
    def __init__(
        self,
        *,
        max_in_flight: int,
        rate_per_minute: int,
        pause_seconds: float,
        batch_share: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_in_flight = max_in_flight
        self._batch_share = batch_share
        self.budget = rate_per_minute
        self.pause_seconds = pause_seconds
        self._clock = clock
        self.live = 1  # replicas sharing the budget, as the heartbeat counts them
        self.share = Share.of(rate_per_minute, 1)  # alone until the heartbeat says more
        # Spending (and refilling) is allowed from here on; alone at start, buckets begin
        # full. A newcomer among others is held (`hold`) and its buckets begin empty.
        self._held_until = -math.inf
        # Called with (store_id, seconds, learned per minute) when Neto pauses a store
        # here, to tell the others.
        self.on_pause: Callable[[str, float, float], None] | None = None
        # One entry per store called recently (idle ones are swept out as the table
        # grows), so memory follows recent traffic, not the number of installs.
        self._stores: dict[str, _StoreState] = {}
        self._sweep_at = SWEEP_EVERY

    def set_replicas(self, live: int) -> None:
        """`live` replicas share the budget now. Every bucket is first brought up to date
        at the old rate, so a larger share never refills time that passed under a smaller
        one."""
        share = Share.of(self.budget, live)
        if share == self.share and live == self.live:
            return
        now = self._clock()
        for state in self._stores.values():
            self._refill(state, now)
        self.live = live
        self.share = share
        for state in self._stores.values():
            state.share_at = -math.inf  # a learned share is re-divided at its next use
            state.tokens = min(state.tokens, self._share(state, now).capacity)

    def hold(self, seconds: float) -> None:
        """Spend nothing for `seconds` (a newcomer the others have not yet counted, or a
        replica whose heartbeat fails and may no longer be counted)."""
        self._held_until = max(self._held_until, self._clock() + seconds)

    def held_for(self) -> float:
        """Seconds until this replica may spend again (0 when it may now): until the hold
        lapses and then, since nothing refills while held, until a bucket that starts at
        its end holds a whole token. /readyz waits for this, so a caller routed here the
        moment it is ready is never refused for a first call to a store."""
        first_token = 1.0 / self.share.rate if self.share.rate > 0 else 0.0
        return max(0.0, self._held_until + first_token - self._clock())

    def _state(self, store_id: str) -> _StoreState:
        state = self._stores.get(store_id)
        if state is None:
            if len(self._stores) >= self._sweep_at:
                self._sweep()
            # A new bucket holds what it would have refilled since spending was last
            # allowed here: a newcomer's does not start full, which would add a burst
            # the others' buckets do not leave room for.
            now = self._clock()
            filled = max(0.0, now - self._held_until) * self.share.rate
            state = _StoreState(
                slots=Slots(self._max_in_flight),
                tokens=min(self.share.capacity, filled),
                at=now,
            )
            self._stores[store_id] = state
        return state

    def _share(self, state: _StoreState, now: float) -> Share:
        """This replica's part of the store's budget: of the configured one, or of what
        was learned, re-computed at most once a second as the learned budget grows."""
        if state.learned is None:
            return self.share
        if state.share is None or now - state.share_at >= 1.0:
            per_minute = state.learned.at(now)
            if per_minute >= self.budget:  # probed all the way back: forget it
                state.learned = state.share = None
                return self.share
            state.share = Share.of(per_minute, self.live)
            state.share_at = now
        return state.share

    def _refill(self, state: _StoreState, now: float) -> None:
        since = max(state.at, self._held_until)  # nothing refills while held
        if now > since:
            share = self._share(state, now)
            state.tokens = min(share.capacity, state.tokens + (now - since) * share.rate)
        state.at = max(state.at, now)

    def _count_sent(self, state: _StoreState, now: float, calls: int) -> int:
        """Add `calls` to what was sent to the store; what was sent in the last minute."""
        slot = int(now // SENT_BUCKET_SECONDS)
        if state.sent is None:
            state.sent = [0] * SENT_BUCKETS
            state.sent_slot = slot
        for passed in range(min(slot - state.sent_slot, SENT_BUCKETS)):
            state.sent[(slot - passed) % SENT_BUCKETS] = 0  # buckets a minute old
        state.sent_slot = max(state.sent_slot, slot)
        state.sent[slot % SENT_BUCKETS] += calls
        return sum(state.sent)

    def _sweep(self) -> None:
        """Forget stores with nothing to remember: a full bucket, no pause, no call in
        flight. Amortised: the next sweep waits until the table doubles."""
        now = self._clock()
        idle = []
        for store_id, state in self._stores.items():
            self._refill(state, now)
            if (
                state.paused_until <= now
                and state.learned is None
                and state.queue is None
                and state.tokens >= self.share.capacity
                and state.slots.idle()
            ):
                idle.append(store_id)
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

    def _spendable(self, store_id: str) -> tuple[_StoreState, float]:
        """The store's state and the time, when it may spend now: 429 while Neto's pause
        runs or this replica is held."""
        self.check_paused(store_id)
        state = self._state(store_id)
        now = self._clock()
        if now < self._held_until:
            raise rate_limited(
                self._held_until - now, "This store's request budget is used up; retry later."
            )
        return state, now

    def admit(self, store_id: str) -> None:
        """`take` without waiting, in the interactive lane: spend one request of the
        store's budget, or raise 429 saying how long to wait."""
        if not self.take_now(store_id):
            raise self._refusal(self._state(store_id), INTERACTIVE, self._clock())

    def try_take(self, store_id: str) -> bool:
        """Spend one request of the budget if there is one and no pause (for retries)."""
        state = self._state(store_id)
        now = self._clock()
        return state.paused_until <= now and now >= self._held_until and self._spend(state, now)

    def take_now(self, store_id: str, lane: str = INTERACTIVE, caller: str = "") -> bool:
        """`take` without waiting: True when a token was spent, False when the call must
        queue; 429 while paused or held. Plain, not a coroutine: the call that finds its
        token (nearly every call) pays for no await."""
        state, now = self._spendable(store_id)
        queue = state.queue
        if lane == INTERACTIVE:
            granted = (queue is None or not queue.waiting(INTERACTIVE)) and self._spend(state, now)
        else:
            granted = not queue and self._spend(state, now, keep=self._reserve(state, now))
        if granted and (queue is not None or state.tokens < self._share(state, now).capacity / 2):
            served = state.served if state.served is not None else {}
            served[caller] = served.get(caller, 0) + 1
            state.served = served
        return granted

    async def take(
        self,
        store_id: str,
        *,
        lane: str = INTERACTIVE,
        caller: str = "",
        max_wait: float = 0.0,
        disconnected: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """Spend one request of the store's budget, waiting up to `max_wait` seconds for
        it in `lane` (fair among its callers); 429 saying how long to wait when it does
        not come, ClientDisconnect when `disconnected` returns first."""
        if self.take_now(store_id, lane, caller):
            return
        state = self._state(store_id)
        now = self._clock()
        queue = state.queue
        if max_wait <= 0:
            raise self._refusal(state, lane, now)
        if queue is None:
            queue = state.queue = StoreQueue()
        waiter = queue.add(lane, caller)
        self._schedule(state, now)
        watch = asyncio.ensure_future(disconnected()) if disconnected is not None else None
        try:
            done, _ = await asyncio.wait(
                (waiter,) if watch is None else (waiter, watch),
                timeout=max_wait,
                return_when=asyncio.FIRST_COMPLETED,
            )
        except BaseException:
            self._give_up(state, lane, caller, waiter)
            raise
        finally:
            if watch is not None:
                watch.cancel()
        if waiter in done:
            return
        self._give_up(state, lane, caller, waiter)
        if watch is not None and watch in done:
            raise ClientDisconnect()
        raise self._refusal(state, lane, self._clock())

    def _give_up(
        self, state: _StoreState, lane: str, caller: str, waiter: asyncio.Future[None]
    ) -> None:
        """A waiting call stops waiting: out of the queue, or, handed its token as it gave
        up, the token back for the next."""
        if waiter.done() and not waiter.cancelled():
            state.tokens += 1.0
            self._count_sent(state, self._clock(), -1)
            self._dispatch(state)
            return
        waiter.cancel()
        if state.queue is not None:
            state.queue.remove(lane, caller, waiter)
            if not state.queue:
                self._drop_queue(state)

    def _reserve(self, state: _StoreState, now: float) -> float:
        """Tokens a batch call leaves in the bucket for interactive ones."""
        return self._reserve_of(self._share(state, now))

    def _reserve_of(self, share: Share) -> float:
        return (1.0 - self._batch_share) * share.capacity

    def _refusal(self, state: _StoreState, lane: str, now: float) -> BrokerError:
        """429 with how long this call's turn would take: the calls ahead of it in its lane
        (and, for batch, every interactive one and the reserve) at the refill rate."""
        queue = state.queue
        ahead = 0.0 if queue is None else float(queue.waiting(INTERACTIVE))
        if lane == BATCH:
            ahead += (0.0 if queue is None else queue.waiting(BATCH)) + self._reserve(state, now)
        rate = self._share(state, now).rate
        wait = (ahead + 1.0 - state.tokens) / rate if rate > 0 else WINDOW_SECONDS
        return rate_limited(
            max(wait, state.paused_until - now),
            "This store's request budget is used up; retry later.",
        )

    def _schedule(self, state: _StoreState, now: float) -> None:
        """Wake the queue when its next call's token will have refilled (or the store's
        pause or this replica's hold ends)."""
        queue = state.queue
        if queue is None:
            return
        if queue.timer is not None:  # an interactive call may be owed a token sooner
            queue.timer.cancel()
        need = 1.0 if queue.waiting(INTERACTIVE) else 1.0 + self._reserve(state, now)
        rate = self._share(state, now).rate
        delay = (need - state.tokens) / rate if rate > 0 else WINDOW_SECONDS
        delay = max(delay, state.paused_until - now, self._held_until - now, 0.001)
        queue.timer = asyncio.get_running_loop().call_later(delay, self._dispatch, state)

    def _dispatch(self, state: _StoreState) -> None:
        """Hand refilled tokens to waiting calls: interactive first, then batch above the
        reserve; round-robin among a lane's callers (`StoreQueue.next`)."""
        queue = state.queue
        if queue is None:
            return
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        now = self._clock()
        self._refill(state, now)
        while queue and state.paused_until <= now and now >= self._held_until:
            lane = INTERACTIVE if queue.waiting(INTERACTIVE) else BATCH
            keep = 0.0 if lane == INTERACTIVE else self._reserve(state, now)
            if state.tokens < 1.0 + keep:
                break
            if state.served is None:
                state.served = {}
            waiter = queue.next(lane, state.served)
            if waiter is None:
                continue
            state.tokens -= 1.0
            self._count_sent(state, now, 1)
            waiter.set_result(None)
        if queue:
            self._schedule(state, now)
        else:
            self._drop_queue(state)

    @staticmethod
    def _drop_queue(state: _StoreState) -> None:
        """Nobody waits any more: the turns start afresh when the store runs short again."""
        if state.queue is not None and state.queue.timer is not None:
            state.queue.timer.cancel()
        state.queue = None
        state.served = None

    def _spend(self, state: _StoreState, now: float, keep: float = 0.0) -> bool:
        self._refill(state, now)
        if state.tokens < 1.0 + keep:
            if not state.exhausted:  # count each time a store runs dry, not each refusal
                state.exhausted = True
                metrics.RATE_LIMIT_PAUSES.labels("budget").inc()
            return False
        state.exhausted = False
        state.tokens -= 1.0
        self._count_sent(state, now, 1)
        return True

    def has_headroom(self, store_id: str, fraction: float) -> bool:
        """True when the store is not paused or held, at least `fraction` of its bucket is
        left (and a whole token) and at least `fraction` of its slots are free (at least
        one): the health sweep spends a request only then, so it stays behind callers'
        requests. Spends nothing."""
        now = self._clock()
        if now < self._held_until:
            return False
        state = self._stores.get(store_id)
        if state is None:  # untouched recently: a full bucket, every slot free
            return True
        self._refill(state, now)
        return (
            state.paused_until <= now
            and state.tokens >= max(1.0, fraction * self._share(state, now).capacity)
            and state.slots.free >= max(1.0, fraction * self._max_in_flight)
        )

    def pause(self, store_id: str) -> float:
        """Neto answered 429: stop calling this store for the pause, here and (through
        `on_pause`) on every other replica, and resume at a learned budget; returns the
        pause's length."""
        state = self._state(store_id)
        now = self._clock()
        if state.paused_until > now:
            # Another call in flight when the pause began: the same 429, learned once.
            return state.paused_until - now
        # What this replica sent in the last minute, as a part of all replicas' (they
        # share a store's callers evenly behind the Service): what the other add-ons left.
        sent = self._count_sent(state, now, 0) * self.live
        current = self.budget if state.learned is None else min(self.budget, state.learned.at(now))
        per_minute = max(self.budget * FLOOR_FRACTION, min(sent, current) * (1.0 - MARGIN))
        self._pause(store_id, self.pause_seconds)
        self._learn(state, per_minute, now + self.pause_seconds)
        metrics.RATE_LIMIT_PAUSES.labels("upstream_429").inc()
        if self.on_pause is not None:
            self.on_pause(store_id, self.pause_seconds, per_minute)
        return self.pause_seconds

    def pause_from_elsewhere(
        self, store_id: str, remaining: float, per_minute: float | None
    ) -> None:
        """Another replica was told 429 for this store: pause it here too for the
        `remaining` seconds of its pause (negative: it ended that long ago), and take the
        budget it learned (None: a replica of a release that learns none)."""
        if remaining > 0:
            self._pause(store_id, remaining)
        if per_minute is not None:
            self._learn(self._state(store_id), per_minute, self._clock() + remaining)

    def learned(self, store_id: str) -> float | None:
        """The store's learned budget (calls a minute, all replicas) now; None when it
        runs at the configured one."""
        state = self._stores.get(store_id)
        if state is None or state.learned is None:
            return None
        rate = state.learned.at(self._clock())
        return None if rate >= self.budget else rate

    def rate_headers(self, store_id: str, lane: str) -> dict[str, str]:
        """The IETF RateLimit fields for the store and lane: the policy (`q` calls a `w`
        of 60 s: the configured or learned budget, all replicas) and what is left now (`r`,
        this replica's tokens times the live replicas, less the interactive reserve for
        batch) with `t`, the seconds until that is whole again (or the pause ends)."""
        now = self._clock()
        state = self._stores.get(store_id)
        if state is None:  # untouched recently: a full bucket
            share, tokens, paused = self.share, self.share.capacity, 0.0
        else:
            self._refill(state, now)
            share, tokens = self._share(state, now), state.tokens
            paused = state.paused_until - now
        quota = self.budget if state is None else self.learned(store_id) or self.budget
        spendable = tokens - (self._reserve_of(share) if lane == BATCH else 0.0)
        if paused > 0 or now < self._held_until:
            left, reset = 0, max(paused, self._held_until - now)
        else:
            left = max(0, math.floor(spendable * self.live))
            reset = (share.capacity - tokens) / share.rate if share.rate > 0 else WINDOW_SECONDS
        return {
            "RateLimit-Policy": f'"{lane}";q={math.floor(quota)};w={WINDOW_SECONDS:.0f}',
            "RateLimit": f'"{lane}";r={left};t={max(0, math.ceil(reset))}',
        }

    def states(self) -> dict[str, int]:
        """How many stores are paused, and how many run at a learned budget (not paused)."""
        now = self._clock()
        paused = learned = 0
        for state in self._stores.values():
            if state.paused_until > now:
                paused += 1
            elif state.learned is not None and state.learned.at(now) < self.budget:
                learned += 1
        return {"paused": paused, "learned": learned}

    def _learn(self, state: _StoreState, per_minute: float, since: float) -> None:
        now = self._clock()
        self._refill(state, now)
        # Between the floor and the budget whoever says it (a row holding 0 would never
        # grow back: 0 times anything stays 0).
        per_minute = min(max(per_minute, self.budget * FLOOR_FRACTION), self.budget)
        state.learned = Learned(per_minute, since)
        state.share_at = -math.inf
        state.tokens = min(state.tokens, self._share(state, now).capacity)

    def _pause(self, store_id: str, seconds: float) -> None:
        state = self._state(store_id)
        state.paused_until = max(state.paused_until, self._clock() + seconds)

    def in_flight(self, store_id: str) -> int:
        """How many of the store's slots are held now (0 once every call has let go)."""
        state = self._stores.get(store_id)
        return 0 if state is None else state.slots.held

    def slot(self, store_id: str) -> _Slot:
        """One of the store's in-flight slots (`async with`), waiting briefly for one to
        free up."""
        return _Slot(self._state(store_id).slots)


class _Slot:
    # A plain class, not `asynccontextmanager`: this is entered on every call to Neto,
    # and a generator-based manager costs two more coroutines each time.
    __slots__ = ("_slots",)

    def __init__(self, slots: Slots) -> None:
        self._slots = slots

    async def __aenter__(self) -> None:
        try:
            await self._slots.take(QUEUE_WAIT_SECONDS)
        except TimeoutError:
            raise rate_limited(
                1, "Too many requests to this store are in flight; retry shortly."
            ) from None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._slots.release()
