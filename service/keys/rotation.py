"""Encryption keys in use: which keys the stored data needs, and rotation to the primary.

Each table with sealed columns is described by its owner as a `SealedTable`: its row id,
the `key_id` column naming the key that sealed the row's values, the sealed columns, the
columns their associated data is bound to, and how to build a column's `Context`. Both
questions are answered from the `key_id` column without opening anything; rotation opens
and re-seals.

Rotation runs beside live traffic on any number of replicas:
- each batch is read in one short transaction, re-sealed in memory, and written in
  another, so no lock is held while values are being re-sealed;
- each row is written with a compare-and-set on the exact values that were read (and on
  what they are bound to): a row changed in between is left as its writer left it (a new
  write is already sealed under the primary key; a row still under the old key is picked
  up by the next pass);
- batches are keyset-paged on (key_id, row id), so only rows still to do are read and a
  second run finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Column, ColumnElement, Table, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import run_transaction
from service.security.crypto import Context, KeyRing, SealError

DEFAULT_BATCH_SIZE = 200
# Passes over the rows still under old keys; another pass runs only when rows were
# changed concurrently during the previous one.
MAX_PASSES = 5

# (row id, bound values, sealed column name) -> where the value lives.
ContextOf = Callable[[str, tuple[Any, ...], str], Context]


@dataclass(frozen=True)
class SealedTable:
    """A table's sealed columns as rotation sees them (plain Core rows, never ORM objects).

    `row_id` must be a unique string column (batches are paged on it); `key_id` names the
    key that sealed every non-null value of the row, and is NULL when none is left.
    """

    noun: str  # what the reports count: "installs", "webhook secrets"
    table: Table
    row_id: Column[Any]
    key_id: Column[Any]
    sealed: tuple[Column[Any], ...]
    bound: tuple[Column[Any], ...]
    context: ContextOf

    @classmethod
    def of(
        cls, model: Any, noun: str, *, row_id: str, sealed: tuple[str, ...],
        bound: tuple[str, ...], context: ContextOf,
    ) -> SealedTable:  # fmt: skip
        """From a table model's column names; its key id column is `key_id`."""
        table = cast(Table, model.__table__)
        c = table.c
        return cls(noun, table, c[row_id], c.key_id, tuple(c[n] for n in sealed),
                   tuple(c[n] for n in bound), context)  # fmt: skip

    def holds_sealed(self) -> ColumnElement[bool]:
        return or_(*(column.is_not(None) for column in self.sealed))


@dataclass(frozen=True)
class KeyUsage:
    """How many rows of each table hold values sealed under each key id (None: no id)."""

    primary: str
    configured: tuple[str, ...]
    counts: dict[str, dict[str | None, int]]  # noun -> key id -> rows

    def sealed_by(self, kid: str) -> dict[str, int]:
        return {noun: by_kid.get(kid, 0) for noun, by_kid in self.counts.items()}

    @property
    def unknown(self) -> dict[tuple[str, str | None], int]:
        """Data the configured keys cannot open: (noun, key id) -> rows."""
        return {
            (noun, kid): n
            for noun, by_kid in self.counts.items()
            for kid, n in by_kid.items()
            if kid not in self.configured
        }

    @property
    def unused(self) -> list[str]:
        """Configured keys that seal nothing and are not the primary: safe to remove."""
        return [
            kid
            for kid in self.configured
            if kid != self.primary and not any(self.sealed_by(kid).values())
        ]

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.unused


async def key_usage(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    tables: Sequence[SealedTable],
) -> KeyUsage:
    counts: dict[str, dict[str | None, int]] = {}
    async with sessionmaker() as session:
        for t in tables:
            rows = await session.execute(
                select(t.key_id, func.count()).where(t.holds_sealed()).group_by(t.key_id)
            )
            counts[t.noun] = {kid: int(n) for kid, n in rows}
    return KeyUsage(primary=keyring.primary, configured=keyring.kids, counts=counts)


@dataclass
class RotationReport:
    primary: str
    noun: str
    total: int = 0  # rows under other keys when the rotation started
    rotated: int = 0
    cleared: int = 0  # nothing sealed any more: the key id was dropped
    changed_concurrently: int = 0  # changed by a writer between read and write
    missing_keys: dict[str, int] = field(default_factory=dict)  # key id -> rows
    damaged: set[str] = field(default_factory=set)  # row ids whose values do not open

    @property
    def ok(self) -> bool:
        return not self.missing_keys and not self.damaged


Progress = Callable[[int, int], None]  # (rows done, rows to do)


@dataclass(frozen=True)
class Resealed:
    row_id: str
    bound: tuple[Any, ...]
    old_key_id: str
    old: tuple[str | None, ...]
    new: tuple[str | None, ...]


async def _old_key_ids(session: AsyncSession, t: SealedTable, primary: str) -> list[str]:
    rows = await session.execute(
        select(t.key_id).where(t.key_id.is_not(None), t.key_id != primary).distinct()
    )
    return sorted(kid for kid in rows.scalars() if kid is not None)


async def _count_under(session: AsyncSession, t: SealedTable, key_ids: list[str]) -> int:
    if not key_ids:
        return 0
    result = await session.execute(
        select(func.count()).select_from(t.table).where(t.key_id.in_(key_ids))
    )
    return int(result.scalar_one())


async def read_batch(
    sessionmaker: async_sessionmaker[AsyncSession],
    t: SealedTable,
    key_id: str,
    after: str,
    limit: int,
) -> list[tuple[str, tuple[Any, ...], tuple[str | None, ...]]]:
    """(row id, bound values, sealed values) of the next rows under `key_id`."""
    async with sessionmaker() as session:
        rows = await session.execute(
            select(t.row_id, *t.bound, *t.sealed)
            .where(t.key_id == key_id, t.row_id > after)
            .order_by(t.row_id)
            .limit(limit)
        )
        width = len(t.bound)
        return [(row[0], tuple(row[1 : 1 + width]), tuple(row[1 + width :])) for row in rows]


def reseal(
    keyring: KeyRing,
    t: SealedTable,
    row_id: str,
    bound: tuple[Any, ...],
    key_id: str,
    old: tuple[str | None, ...],
) -> Resealed:
    """Every sealed value of a row sealed again under the primary key; SealError if one
    does not open."""
    new: list[str | None] = []
    for column, value in zip(t.sealed, old, strict=True):
        if value is None:
            new.append(None)
            continue
        ctx = t.context(row_id, bound, column.key)
        new.append(keyring.seal(keyring.open(value, ctx), ctx))
    return Resealed(row_id, bound, key_id, old, tuple(new))


async def write_batch(
    session: AsyncSession, t: SealedTable, primary: str, batch: list[Resealed]
) -> list[Resealed]:
    """Compare-and-set each row; returns the rows that were still as read (and written)."""
    written = []
    for row in batch:
        result = await session.execute(
            update(t.table)
            .where(
                t.row_id == row.row_id,
                # What the values were re-sealed for: a row changed since is left alone.
                *(column == value for column, value in zip(t.bound, row.bound, strict=True)),
                t.key_id == row.old_key_id,
                *(
                    column.is_not_distinct_from(value)
                    for column, value in zip(t.sealed, row.old, strict=True)
                ),
            )
            .values(
                {
                    **dict(zip(t.sealed, row.new, strict=True)),
                    t.key_id: primary if any(v is not None for v in row.new) else None,
                }
            )
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            written.append(row)
    return written


async def rotate(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    t: SealedTable,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> RotationReport:
    """Re-seal every row of `t` under the primary key. Idempotent; see the module
    docstring."""
    primary = keyring.primary
    report = RotationReport(primary=primary, noun=t.noun)
    async with sessionmaker() as session:
        report.total = await _count_under(session, t, await _old_key_ids(session, t, primary))
    if progress:
        progress(0, report.total)

    for _ in range(MAX_PASSES):
        conflicts_before = report.changed_concurrently
        async with sessionmaker() as session:
            old_key_ids = await _old_key_ids(session, t, primary)
            report.missing_keys = {}
            for kid in old_key_ids:
                if kid not in keyring.kids:
                    report.missing_keys[kid] = await _count_under(session, t, [kid])
        for kid in old_key_ids:
            if kid not in report.missing_keys:
                await _rotate_key(sessionmaker, keyring, t, kid, batch_size, report, progress)
        if report.changed_concurrently == conflicts_before:
            break
    return report


async def _rotate_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    t: SealedTable,
    kid: str,
    batch_size: int,
    report: RotationReport,
    progress: Progress | None,
) -> None:
    after = ""
    while rows := await read_batch(sessionmaker, t, kid, after, batch_size):
        after = rows[-1][0]
        batch: list[Resealed] = []
        for row_id, bound, old in rows:
            try:
                batch.append(reseal(keyring, t, row_id, bound, kid, old))
            except SealError:
                report.damaged.add(row_id)

        async def write(session: AsyncSession, batch: list[Resealed] = batch) -> list[Resealed]:
            return await write_batch(session, t, keyring.primary, batch)

        written = await run_transaction(sessionmaker, write)
        cleared = sum(1 for row in written if all(v is None for v in row.new))
        report.changed_concurrently += len(batch) - len(written)
        report.cleared += cleared
        report.rotated += len(written) - cleared
        if progress:
            progress(min(report.rotated + report.cleared, report.total), report.total)
