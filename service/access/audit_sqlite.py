"""SQLite's side of the bundle audit batch: the batch's own connection to the database
file, used from one thread of its own, so a batch is one call there (`BEGIN IMMEDIATE`,
the fenced insert, `COMMIT`) instead of a thread hop per step.

Through SQLAlchemy's aiosqlite adapter a batch took five hops (begin, execute, fetch,
commit, the pool's reset), and under load each hop waits for the event loop and the GIL:
the batch's latency, not its work, bounded bundles per second (docs/performance.md).
PostgreSQL needs none of this: asyncpg runs on the event loop.

The last-used stamp goes through this connection too, a chunk at a time between batches:
on a connection of its own it would contend with them for SQLite's one write lock, and
a writer that meets the lock taken sleeps (1, 2, 5, 10... ms), which cost bundles a fifth
of their throughput with 100,000 installs.

Errors come out as SQLAlchemy's (`DBAPIError.instance`), so the retry rules
(`db.retrying`) and the error handlers treat them as they treat every other statement's.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy.exc import DBAPIError


class SqliteBatchConnection:
    def __init__(self, path: str) -> None:
        if not path or path == ":memory:":
            raise ValueError("the audit batch needs a SQLite database file, not memory")
        self._path = path
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-sqlite")
        # Opened and used on that thread only; None until the file could be opened.
        self.connection: sqlite3.Connection | None = None

    async def start(self) -> None:
        # Opened now if the file can be; otherwise by the first batch (the broker starts
        # while the database is unavailable, and recovers when it appears).
        with contextlib.suppress(sqlite3.Error):
            await self._call(self._connection)

    async def close(self) -> None:
        if self.connection is not None:
            await self._call(self.connection.close)
            self.connection = None
        self._thread.shutdown(wait=False)

    async def run(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one statement in its own write transaction; its rows, once committed."""
        return await self._run(sql, params, many=False)

    async def run_many(self, sql: str, params: Sequence[Any]) -> None:
        """Run one statement once per parameter set (sequences or mappings), all in one
        write transaction."""
        await self._run(sql, params, many=True)

    async def _run(self, sql: str, params: Sequence[Any], *, many: bool) -> list[Any]:
        try:
            rows: list[Any] = await self._call(self._transaction, sql, params, many)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error, hide_parameters=True) from exc
        return rows

    async def _call(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _connection(self) -> sqlite3.Connection:
        if self.connection is None:
            # Autocommit mode: the transaction is begun and ended explicitly below. The
            # file's WAL mode is set by the engine's connections; these are per connection.
            conn = sqlite3.connect(
                self._path, timeout=15, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=15000")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            self.connection = conn
        return self.connection

    def _transaction(self, sql: str, params: Sequence[Any], many: bool) -> list[Any]:
        conn = self._connection()
        # IMMEDIATE: the write lock from the start, so the statement's read of the installs
        # and its insert happen under it, ordered against any revoke.
        conn.execute("BEGIN IMMEDIATE")
        try:
            if many:
                conn.executemany(sql, params)
                rows = []
            else:
                rows = conn.execute(sql, params).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return rows
