"""Encryption keys in use: which keys the stored data needs, and rotation to the primary.

Each table with sealed columns is described by its owner as a `SealedTable`: its row id,
the `key_id` column naming the key that sealed the row's values, the sealed columns, the
columns their associated data is bound to, and how to build a column's `Context`. Both
questions are answered from the key id written inside each sealed value ("v1:<kid>:...",
service/security/crypto.py), read without opening anything; rotation opens and re-seals.
The `key_id` column is only the writer's note: a database writer can change it without
changing the values, so trusting it would let a key still in use look removable, or
leave a value under an old key that the column says is new.

Rotation runs beside live traffic on any number of replicas:
- each batch is read in one short transaction, re-sealed in memory, and written in
  another, so no lock is held while values are being re-sealed;
- each row is written with a compare-and-set on the exact values that were read (and on
  what they are bound to): a row changed in between is left as its writer left it (a new
  write is already sealed under the primary key; a row still under the old key is picked
  up by the next pass);
- batches are keyset-paged on the row id over the rows still to do (a value, or the
  `key_id` column, not under the primary key), so a second run finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from sqlalchemy import Column, ColumnElement, Table, and_, case, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import run_transaction
from service.security.crypto import VERSION, Context, KeyRing, SealError, key_id_of

DEFAULT_BATCH_SIZE = 200
# Passes over the rows still under old keys; another pass runs only when rows were
# changed concurrently during the previous one.
MAX_PASSES = 5

# (row id, bound values, sealed column name) -> where the value lives.
ContextOf = Callable[[str, tuple[Any, ...], str], Context]
# The longest "v1:<kid>:" a sealed value starts with (a kid is at most 32 characters):
# enough of a value to read its key id without fetching the ciphertext.
HEAD_LENGTH = len(VERSION) + 1 + 32 + 1


def sealed_under(column: Column[Any], kid: str) -> ColumnElement[bool]:
    """The column's value was sealed under `kid`, by the id inside the value. `substr`
    and `=` rather than LIKE: SQLite's LIKE ignores case, and `_` in a kid is a
    wildcard."""
    prefix = f"{VERSION}:{kid}:"
    return func.substr(column, 1, len(prefix)) == prefix


def key_ids_in(values: Sequence[str | None]) -> set[str | None]:
    """The key ids inside a row's sealed values (None: a value of no known format)."""
    kids: set[str | None] = set()
    for value in values:
        if value is not None:
            try:
                kids.add(key_id_of(value))
            except SealError:
                kids.add(None)
    return kids


@dataclass(frozen=True)
class SealedTable:
    """A table's sealed columns as rotation sees them (plain Core rows, never ORM objects).

    `row_id` must be a unique string column (batches are paged on it); `key_id` names the
    key its writer sealed every non-null value of the row with, and is NULL when none is
    left (a note kept up to date, never trusted: see the module docstring).
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

    def holds_under(self, kid: str) -> ColumnElement[bool]:
        """Some value of the row is sealed under `kid`."""
        return or_(*(sealed_under(column, kid) for column in self.sealed))

    def holds_other_than(self, kids: Sequence[str]) -> ColumnElement[bool]:
        """Some value of the row is sealed under none of `kids` (or is of no format)."""
        return or_(
            *(
                and_(column.is_not(None), *(~sealed_under(column, kid) for kid in kids))
                for column in self.sealed
            )
        )

    def to_rotate(self, primary: str) -> ColumnElement[bool]:
        """Rows rotation must write: a value not under the primary key, or a `key_id`
        column that does not name it while the row holds values (or names an old key
        while it holds none: rotation clears it)."""
        return or_(
            self.holds_other_than([primary]),
            and_(self.key_id.is_not(None), self.key_id != primary),
            and_(self.key_id.is_(None), self.holds_sealed()),
        )


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
    """Counted from the key ids inside the values: the configured keys by one count each
    in the database; the rows holding any other key id (few, or none) are read, and only
    the head of each value."""
    kids = keyring.kids
    counts: dict[str, dict[str | None, int]] = {}
    async with sessionmaker() as session:
        for t in tables:
            configured = await session.execute(
                select(*(func.count(case((t.holds_under(kid), 1))) for kid in kids))
            )
            by_kid: dict[str | None, int] = dict(zip(kids, configured.one(), strict=True))
            others = await session.execute(
                select(*(func.substr(column, 1, HEAD_LENGTH) for column in t.sealed)).where(
                    t.holds_other_than(kids)
                )
            )
            for heads in others:
                for kid in key_ids_in(heads) - set(kids):
                    by_kid[kid] = by_kid.get(kid, 0) + 1
            counts[t.noun] = {kid: n for kid, n in by_kid.items() if n}
    return KeyUsage(primary=keyring.primary, configured=kids, counts=counts)


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
    old_key_id: str | None  # the `key_id` column as read (compared, never trusted)
    old: tuple[str | None, ...]
    new: tuple[str | None, ...]


# (row id, bound values, `key_id` column, sealed values) as read.
Row = tuple[str, tuple[Any, ...], str | None, tuple[str | None, ...]]


async def _count_to_rotate(session: AsyncSession, t: SealedTable, primary: str) -> int:
    result = await session.execute(
        select(func.count()).select_from(t.table).where(t.to_rotate(primary))
    )
    return int(result.scalar_one())


async def read_batch(
    sessionmaker: async_sessionmaker[AsyncSession],
    t: SealedTable,
    primary: str,
    after: str,
    limit: int,
) -> list[Row]:
    """The next rows after `after` that are not wholly under `primary`."""
    async with sessionmaker() as session:
        rows = await session.execute(
            select(t.row_id, *t.bound, t.key_id, *t.sealed)
            .where(t.to_rotate(primary), t.row_id > after)
            .order_by(t.row_id)
            .limit(limit)
        )
        width = len(t.bound)
        return [
            (row[0], tuple(row[1 : 1 + width]), row[1 + width], tuple(row[2 + width :]))
            for row in rows
        ]


def reseal(
    keyring: KeyRing,
    t: SealedTable,
    row_id: str,
    bound: tuple[Any, ...],
    key_id: str | None,
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
                t.key_id.is_not_distinct_from(row.old_key_id),
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
    report = RotationReport(primary=keyring.primary, noun=t.noun)
    async with sessionmaker() as session:
        report.total = await _count_to_rotate(session, t, keyring.primary)
    if progress:
        progress(0, report.total)

    for _ in range(MAX_PASSES):
        conflicts_before = report.changed_concurrently
        report.missing_keys = {}  # counted again by each pass
        await _rotate_pass(sessionmaker, keyring, t, batch_size, report, progress)
        if report.changed_concurrently == conflicts_before:
            break
    return report


async def _rotate_pass(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    t: SealedTable,
    batch_size: int,
    report: RotationReport,
    progress: Progress | None,
) -> None:
    after = ""
    while rows := await read_batch(sessionmaker, t, keyring.primary, after, batch_size):
        after = rows[-1][0]
        batch: list[Resealed] = []
        for row_id, bound, key_id, old in rows:
            missing = [k for k in key_ids_in(old) if k is not None and k not in keyring.kids]
            for kid in missing:  # left as it is until that key is configured
                report.missing_keys[kid] = report.missing_keys.get(kid, 0) + 1
            if missing:
                continue
            try:
                batch.append(reseal(keyring, t, row_id, bound, key_id, old))
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
