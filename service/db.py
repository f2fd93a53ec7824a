"""Engine, session factory, transactions with retries, and the column types.

Engines are created in the app's lifespan, never at import. Repository code only
flushes; a transaction is committed by `run_transaction` or the request's session
(`service/web/deps.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from sqlalchemy import BigInteger, Column, Integer, MetaData, event
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import SQLModel

from service.config import Settings
from service.errors import ServiceUnavailable

# Stable constraint names, so Alembic batch mode on SQLite and PostgreSQL agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING_CONVENTION)
# Every table model (installs, oauth, audit) registers on this one metadata.
SQLModel.metadata = metadata

T = TypeVar("T")

# Every id that only grows is 64-bit: retention deletes rows but never rewinds a sequence,
# and a 32-bit one runs out after 2**31 rows (eight months of 100 bundles a second). On
# SQLite the same column is INTEGER, its 64-bit rowid.
BIGINT = BigInteger().with_variant(Integer(), "sqlite")


def growing_id() -> Column[int]:
    """A 64-bit, database-numbered primary key."""
    return Column(BIGINT, primary_key=True, autoincrement=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(settings: Settings) -> AsyncEngine:
    """The broker's engine. `hide_parameters`: a database error's message (logged at
    ERROR) would otherwise print the bound values: sealed secrets, caller names, states."""
    url = settings.database_url
    if settings.is_sqlite:
        engine = create_async_engine(url, connect_args={"timeout": 15}, hide_parameters=True)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _: Any) -> None:
            # WAL lets readers run beside the one writer; busy_timeout waits for the lock
            # instead of failing at once with "database is locked".
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=15000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # JIT compilation only slows the short OLTP queries this service makes (and asyncpg's
    # type introspection), so it is off for the broker's sessions.
    server_settings = {"application_name": "neto-token-broker", "jit": "off"}
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
        server_settings["idle_in_transaction_session_timeout"] = str(
            max(settings.db_statement_timeout_ms * 4, 10_000)
        )
    engine = create_async_engine(
        url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_recycle=1800,
        pool_timeout=10,
        connect_args={"server_settings": server_settings, "timeout": 10},
        hide_parameters=True,
    )
    _ping_idle_connections(engine)
    return engine


# A connection is checked before use only when it has been idle in the pool this long.
# SQLAlchemy's pool_pre_ping checks every checkout, which on asyncpg is three round trips
# (BEGIN, ";", ROLLBACK): in a burst of Neto's notifications a third of the broker's
# time went there. One returned a moment ago was working a moment ago; one that died
# since anyway fails its first statement, and SQLAlchemy then drops the whole pool.
PING_AFTER_IDLE_SECONDS = 1.0


def _ping_idle_connections(engine: AsyncEngine) -> None:
    pool, dialect = engine.sync_engine.pool, engine.sync_engine.dialect

    @event.listens_for(pool, "connect")
    @event.listens_for(pool, "checkin")
    def _fresh(_: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(pool, "checkout")
    def _ping(dbapi_connection: Any, record: Any, _: Any) -> None:
        idle_since = record.info.get("idle_since", 0.0)
        if time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:  # the pool replaces it (up to three times), as pre_ping
            raise DisconnectionError("a pooled connection did not answer") from exc


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def _sqlstate(exc: DBAPIError) -> str:
    orig = exc.orig
    return str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def is_transient(exc: BaseException) -> bool:
    """Lock contention and serialization failures: the same transaction may succeed again."""
    if not isinstance(exc, DBAPIError):
        return False
    text = str(exc.orig).lower() if exc.orig is not None else ""
    return (
        "database is locked" in text
        or "database table is locked" in text
        or _sqlstate(exc) in {"40001", "40P01"}  # serialization failure, deadlock
        or "could not serialize access" in text
        or "deadlock detected" in text
    )


# PostgreSQL SQLSTATE classes meaning "the database cannot serve this now", not "the query
# is wrong": connection exceptions (08), insufficient resources such as too many
# connections (53), operator intervention incl. statement timeout and shutdown (57),
# lock_timeout (55P03) and idle-in-transaction timeout (25P03).
_UNAVAILABLE_CLASSES = ("08", "53", "57")
_UNAVAILABLE_STATES = {"55P03", "25P03"}


def is_unavailable(exc: BaseException) -> bool:
    """The database cannot be reached, is overloaded, or timed the statement out."""
    if isinstance(exc, PoolTimeout):  # every pooled connection is busy
        return True
    if isinstance(exc, DBAPIError):
        if is_transient(exc):
            return False
        state = _sqlstate(exc)
        if state[:2] in _UNAVAILABLE_CLASSES or state in _UNAVAILABLE_STATES:
            return True
        return isinstance(exc, (OperationalError, InterfaceError)) or exc.connection_invalidated
    return isinstance(exc, (OSError, ConnectionError, asyncio.TimeoutError))


async def run_transaction(
    sessionmaker: async_sessionmaker[AsyncSession],
    work: Callable[[AsyncSession], Awaitable[T]],
    *,
    attempts: int = 5,
) -> T:
    """Run `work` in its own transaction, retrying lock contention and serialization
    failures with jittered backoff. Other database failures become 503."""

    writers = _sqlite_writers(sessionmaker)

    async def once() -> T:
        async with writers, sessionmaker() as session, session.begin():
            return await work(session)

    return await retrying(once, attempts=attempts)


# SQLite has one writer at a time. Left to SQLite, this process's concurrent transactions
# wait in its busy handler, which polls with sleeps of up to 100 ms: in a burst of Neto's
# notifications beside their webhook records, 3 ms transactions took 70-250 ms. Queued on
# one asyncio lock per engine instead, each starts as the previous one ends. (Other
# processes sharing the file, and a request's own session, still meet the busy handler.)
_WRITERS: WeakKeyDictionary[AsyncEngine, asyncio.Lock] = WeakKeyDictionary()


def _sqlite_writers(
    sessionmaker: async_sessionmaker[AsyncSession],
) -> contextlib.AbstractAsyncContextManager[Any]:
    bind = sessionmaker.kw.get("bind")
    if not isinstance(bind, AsyncEngine) or bind.dialect.name != "sqlite":
        return contextlib.nullcontext()
    lock = _WRITERS.get(bind)
    if lock is None:
        lock = _WRITERS[bind] = asyncio.Lock()
    return lock


async def retrying(transaction: Callable[[], Awaitable[T]], *, attempts: int = 5) -> T:
    """Run a whole transaction, again after lock contention or a serialization failure
    (jittered backoff); an unavailable database becomes 503."""
    for attempt in range(1, attempts + 1):
        try:
            return await transaction()
        except DBAPIError as exc:
            if is_transient(exc) and attempt < attempts:
                await asyncio.sleep(min(0.5, 0.02 * 2**attempt) * random.uniform(0.5, 1.5))  # noqa: S311
                continue
            if is_transient(exc) or is_unavailable(exc):
                raise ServiceUnavailable() from exc
            raise
        except (OSError, ConnectionError, PoolTimeout) as exc:
            raise ServiceUnavailable() from exc
    raise AssertionError("unreachable")
