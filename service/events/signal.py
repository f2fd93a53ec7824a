"""Wakes this replica's waiting feed requests when an event may have been appended
(a notification from any replica, or a reconnect of the listener)."""

from __future__ import annotations

import asyncio
import contextlib


class EventSignal:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def fire(self, _payload: str = "") -> None:
        self._event.set()
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        """Take this before reading the outbox, then wait on it: a commit between the read
        and the wait has already set it, so no wake-up is lost."""
        return self._event

    @staticmethod
    async def wait(event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
