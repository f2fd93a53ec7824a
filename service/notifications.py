"""Change notifications between replicas: PostgreSQL's LISTEN/NOTIFY.

A writer calls `notify(session, channel, payload)` inside its transaction; PostgreSQL
delivers the notification to every listening replica when (and only if) the transaction
commits. Each replica keeps one `Listener`: a dedicated connection that LISTENs on the
channels its consumers subscribed to and calls them with each payload.

Notifications are a fast path, never the only one: a listener that was disconnected may
have missed some, so consumers keep their poll as the fallback and are told through
`on_reconnect` to re-read what they might have missed. SQLite (one process, no
LISTEN/NOTIFY) has only the poll: `notify` does nothing and the listener never starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from service.background import cancel_and_wait

log = logging.getLogger("broker.notifications")

RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0

Handler = Callable[[str], None]


async def notify(session: AsyncSession, channel: str, payload: str = "") -> None:
    """Queue a notification on the session's transaction (PostgreSQL only)."""
    if session.get_bind().dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_notify(:channel, :payload)"), {"channel": channel, "payload": payload}
        )


def asyncpg_dsn(database_url: str) -> str | None:
    """The plain libpq URL of a PostgreSQL SQLAlchemy URL; None for other databases."""
    prefix = "postgresql+asyncpg://"
    if not database_url.startswith(prefix):
        return None
    return "postgresql://" + database_url[len(prefix) :]


class Listener:
    """One LISTEN connection per replica, reconnected with backoff when it drops."""

    def __init__(self, database_url: str) -> None:
        self._dsn = asyncpg_dsn(database_url)
        self._handlers: dict[str, list[Handler]] = {}
        self._reconnect_hooks: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self._dsn is not None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def subscribe(self, channel: str, handler: Handler) -> None:
        """Call `handler(payload)` for every notification on `channel` (before `start`)."""
        self._handlers.setdefault(channel, []).append(handler)

    def on_reconnect(self, hook: Callable[[], None]) -> None:
        """Call `hook()` after every (re)connection: notifications may have been missed."""
        self._reconnect_hooks.append(hook)

    async def start(self) -> None:
        if self._dsn is not None and self._handlers and self._task is None:
            self._task = asyncio.create_task(self._run(), name="notification-listener")

    async def wait_connected(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._connected.wait()
        return self.connected

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def _dispatch(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        for handler in self._handlers.get(channel, ()):
            try:
                handler(payload)
            except Exception:
                log.exception("notification handler failed", extra={"fields": {"channel": channel}})

    async def _run(self) -> None:
        import asyncpg

        delay = RECONNECT_MIN_SECONDS
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                for channel in self._handlers:
                    await conn.add_listener(channel, self._dispatch)
                self._connected.set()
                delay = RECONNECT_MIN_SECONDS
                for hook in self._reconnect_hooks:
                    hook()
                await lost.wait()
                log.warning("notification listener lost its connection; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "notification listener cannot connect; consumers fall back to polling",
                    extra={"fields": {"error_type": type(exc).__name__}},
                )
            finally:
                self._connected.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(conn.close(timeout=2))
            await asyncio.sleep(delay)
            delay = min(RECONNECT_MAX_SECONDS, delay * 2)
