"""The replica's byte budget for Neto answers being read (BROKER_UPSTREAM_BUFFER_BYTES).

Every answer is read whole into memory (the fields filter and idempotency need the whole
body), up to BROKER_MAX_RESPONSE_BYTES each; the per-store limits bound calls, not bytes,
so without this many stores answering large bodies at once could take the replica past
its memory limit. `UpstreamClient._attempt` reserves an answer's bytes here before it
keeps them: the declared Content-Length before reading the body, or each chunk as it
arrives for an answer without one. A reservation that does not fit waits up to
WAIT_SECONDS for bytes to come free (never past the call's deadline), then the call is
refused with 503 `service_unavailable` and `Retry-After`; Neto has answered, but its
answer is dropped unread.

What is and is not counted:
* The bytes are released when the aiohttp response is done (`_attempt` returns or
  fails). The body then lives on in the caller's answer until the server has sent it:
  outside the budget, briefly for a caller that reads as fast as Neto writes, as long as
  the caller takes for one that reads slowly. The budget bounds the reading, not the
  sending (docs/performance.md has the figures).
* Joining an answer's chunks copies it once more for a moment; the event loop joins one
  answer at a time, so that adds at most one answer to the peak.
* While a reservation waits, aiohttp stops reading the socket once its buffer holds about
  128 KiB, so a waiting answer costs next to nothing.
* Small answers (up to SMALL_ANSWER_BYTES in all) may use the last SMALL_SHARE of the
  budget, which larger ones leave free: a flood of huge answers does not hold up the
  small calls. An answer larger than the whole budget is read when nothing else is.

Streaming large answers through to the caller is not done: see the module's section in
docs/performance.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from service.errors import ServiceUnavailable

log = logging.getLogger("broker.upstream")

WAIT_SECONDS = 1.0
RETRY_AFTER_SECONDS = 1
SMALL_ANSWER_BYTES = 256 * 1024
SMALL_SHARE = 0.125


class ByteBudget:
    """An async semaphore counted in bytes, first come first served among waiters of a
    kind (large, small). Single event loop; not thread-safe."""

    def __init__(self, capacity: int, wait_seconds: float = WAIT_SECONDS) -> None:
        self.capacity = capacity
        self._large_limit = capacity - int(capacity * SMALL_SHARE)
        self._wait_seconds = wait_seconds
        self.in_use = 0
        self._waiters: deque[tuple[int, bool, asyncio.Future[None]]] = deque()

    def _fits(self, size: int, small: bool) -> bool:
        if self.in_use == 0:
            return True  # one answer over the whole budget is read alone
        limit = self.capacity if small else self._large_limit
        return self.in_use + size <= limit

    async def reserve(self, size: int, *, total: int) -> None:
        """Reserve `size` more bytes for an answer that then holds `total` in all; raises
        ServiceUnavailable (503) after WAIT_SECONDS without room."""
        small = total <= SMALL_ANSWER_BYTES
        # Waiters of the same kind keep their order: a large answer does not jump ahead of
        # one that waited longer; small ones never queue behind large ones.
        queued = any(s == small for _, s, _ in self._waiters)
        if not queued and self._fits(size, small):
            self.in_use += size
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, small, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(self._wait_seconds):
                await waiter
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # granted just as the wait ran out
            fields = {"needed": size, "in_use": self.in_use, "capacity": self.capacity}
            log.warning("upstream answer refused: buffer budget full", extra={"fields": fields})
            raise ServiceUnavailable(
                "The broker is holding as many Neto answers in memory as it may "
                "(BROKER_UPSTREAM_BUFFER_BYTES); retry shortly.",
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            ) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(size)  # cancelled after the grant (the caller left)
            raise
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._wake()

    def release(self, size: int) -> None:
        self.in_use -= size
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in order while they fit; the first of each kind that does not
        fit holds back the rest of its kind."""
        blocked = {True: False, False: False}
        for size, small, waiter in list(self._waiters):
            if waiter.done() or blocked[small]:
                continue
            if self._fits(size, small):
                self.in_use += size
                waiter.set_result(None)
                self._waiters.remove((size, small, waiter))
            else:
                blocked[small] = True


class Reservation:
    """The bytes one answer holds in the budget; `close()` gives them all back."""

    def __init__(self, budget: ByteBudget) -> None:
        self._budget = budget
        self.held = 0

    async def add(self, size: int) -> None:
        await self._budget.reserve(size, total=self.held + size)
        self.held += size

    def close(self) -> None:
        if self.held:
            self._budget.release(self.held)
            self.held = 0
