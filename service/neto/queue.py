"""Calls waiting for a store's budget (`neto/limits.py`): two lanes, each fair among its
callers.

A caller token's `priority` claim puts its calls in the `interactive` lane (the default:
a person is waiting) or the `batch` lane (a sync that can wait). Inside a lane the next
token goes to the waiting caller (`sub`) served least while the store is short of tokens
(`served`, counted from when its bucket drops below half), the longest waiting first
among equals: callers take turns, and one that just spent the store's burst waits behind
one that spent nothing, so a caller sending ten times as many calls as another waits ten
times as long, not the other. Made only for a store whose bucket ran dry: most stores
never queue.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

INTERACTIVE = "interactive"
BATCH = "batch"
LANES = (INTERACTIVE, BATCH)


class StoreQueue:
    __slots__ = ("lanes", "timer")

    def __init__(self) -> None:
        # lane -> caller -> that caller's waiting calls, oldest first; the caller first in
        # a lane's order is the next served, then moves to the end.
        self.lanes: dict[str, OrderedDict[str, deque[asyncio.Future[None]]]] = {
            lane: OrderedDict() for lane in LANES
        }
        self.timer: asyncio.TimerHandle | None = None

    def waiting(self, lane: str) -> int:
        return sum(len(calls) for calls in self.lanes[lane].values())

    def __bool__(self) -> bool:
        return any(self.lanes[lane] for lane in LANES)

    def add(self, lane: str, caller: str) -> asyncio.Future[None]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lanes[lane].setdefault(caller, deque()).append(waiter)
        return waiter

    def remove(self, lane: str, caller: str, waiter: asyncio.Future[None]) -> None:
        calls = self.lanes[lane].get(caller)
        if calls is not None and waiter in calls:
            calls.remove(waiter)
            if not calls:
                del self.lanes[lane][caller]

    def next(self, lane: str, served: dict[str, int]) -> asyncio.Future[None] | None:
        """The next call to serve in `lane`: the oldest of the caller served least (counted
        in `served`), the earliest to have waited among equals."""
        callers = self.lanes[lane]
        while callers:
            caller = min(callers, key=lambda name: served.get(name, 0))  # stable: by arrival
            calls = callers[caller]
            waiter = calls.popleft()
            if not calls:
                del callers[caller]
            if not waiter.done():
                served[caller] = served.get(caller, 0) + 1
                return waiter
        return None
