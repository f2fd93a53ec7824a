"""A store's in-flight slots: at most `size` calls at a time, first come first served.

This is `asyncio.Semaphore`'s job, done without what makes the semaphore costly on every
call on Python 3.11: its `locked()` walks its waiters through a generator expression, and
`acquire()` runs it again (about 2 % of `/invoke`'s CPU in a profile, docs/performance.md).
Here a call that finds a slot free and nobody waiting takes it with two comparisons and
no await; only a call that must wait pays for a future and a timer. A released slot goes
straight to the longest waiter, so a newcomer can never overtake one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Slots:
    __slots__ = ("_waiters", "free", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.free = size
        # Made when first needed: most stores never wait, and an empty deque per store
        # (600 bytes; the limits keep up to ~20,000 stores) would give the garbage
        # collector one more object per store to walk.
        self._waiters: deque[asyncio.Future[None]] | None = None

    @property
    def held(self) -> int:
        return self.size - self.free

    def idle(self) -> bool:
        """Nobody holds a slot and nobody waits for one."""
        return self.free == self.size and not self._waiters

    async def take(self, max_wait: float) -> None:
        """One slot, waiting up to `max_wait` seconds for it (TimeoutError if none frees)."""
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = deque()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(max_wait):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the wait ended: pass it on
            elif self._waiters is not None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        """Give a slot back: to the longest waiter still waiting, or to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1
