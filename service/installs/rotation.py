"""Encryption keys in use: which keys the stored data needs, and rotation to the primary.

`installs.key_id` names the key that sealed a row's three sealed columns, so both
questions are answered from that column without opening anything.

Rotation runs beside live traffic on any number of replicas:
- each batch is read in one short transaction, re-sealed in memory, and written in
  another, so no lock is held while values are being re-sealed;
- each row is written with a compare-and-set on the exact values that were read: a row
  revoked or reinstalled in between is left as its writer left it (a reinstall is already
  sealed under the primary key; a revoked row still under the old key is picked up by the
  next pass);
- batches are keyset-paged on (key_id, store_id), which the index
  `ix_installs_key_id_store_id` serves, so only rows still to do are read and a second run
  finds nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import ColumnElement, Table, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.db import run_transaction
from service.installs.models import Install
from service.installs.sealing import Binding, reseal
from service.security.crypto import KeyRing, SealError

DEFAULT_BATCH_SIZE = 200
# Passes over the rows still under old keys; another pass runs only when rows were
# changed concurrently during the previous one.
MAX_PASSES = 5

# Core columns: this module works on plain rows, never on ORM objects.
INSTALLS = cast(Table, Install.__table__)  # type: ignore[attr-defined]
C = INSTALLS.c
SEALED = (C.secret_sealed, C.user_sealed, C.billing_sealed)


def _holds_sealed() -> ColumnElement[bool]:
    return or_(*(column.is_not(None) for column in SEALED))


@dataclass(frozen=True)
class KeyUsage:
    """How many installs hold values sealed under each key id (None: no key id)."""

    primary: str
    configured: tuple[str, ...]
    counts: dict[str | None, int]

    @property
    def unknown(self) -> dict[str | None, int]:
        """Data the configured keys cannot open."""
        return {k: n for k, n in self.counts.items() if k not in self.configured}

    @property
    def unused(self) -> list[str]:
        """Configured keys that seal nothing and are not the primary: safe to remove."""
        return [k for k in self.configured if k != self.primary and not self.counts.get(k)]

    @property
    def ok(self) -> bool:
        return not self.unknown and not self.unused


async def key_usage(sessionmaker: async_sessionmaker[AsyncSession], keyring: KeyRing) -> KeyUsage:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(C.key_id, func.count()).where(_holds_sealed()).group_by(C.key_id)
        )
        counts = {kid: int(n) for kid, n in rows}
    return KeyUsage(primary=keyring.primary, configured=keyring.kids, counts=counts)


@dataclass
class RotationReport:
    primary: str
    total: int = 0  # installs under other keys when the rotation started
    rotated: int = 0
    cleared: int = 0  # nothing sealed any more: the key id was dropped
    changed_concurrently: int = 0  # changed by a writer between read and write
    missing_keys: dict[str, int] = field(default_factory=dict)  # key id -> installs
    damaged: set[str] = field(default_factory=set)  # store ids whose values do not open

    @property
    def ok(self) -> bool:
        return not self.missing_keys and not self.damaged


Progress = Callable[[int, int], None]  # (installs done, installs to do)


@dataclass(frozen=True)
class _Resealed:
    binding: Binding
    old_key_id: str
    old: tuple[str | None, str | None, str | None]
    new: tuple[str | None, str | None, str | None]


async def _old_key_ids(session: AsyncSession, primary: str) -> list[str]:
    rows = await session.execute(
        select(C.key_id).where(C.key_id.is_not(None), C.key_id != primary).distinct()
    )
    return sorted(kid for kid in rows.scalars() if kid is not None)


async def _count_under(session: AsyncSession, key_ids: list[str]) -> int:
    if not key_ids:
        return 0
    result = await session.execute(select(func.count()).where(C.key_id.in_(key_ids)))
    return int(result.scalar_one())


async def _read_batch(
    sessionmaker: async_sessionmaker[AsyncSession], key_id: str, after: str, limit: int
) -> list[tuple[Binding, str | None, str | None, str | None]]:
    async with sessionmaker() as session:
        rows = await session.execute(
            select(C.store_id, C.store_domain, C.auth_method, *SEALED)
            .where(C.key_id == key_id, C.store_id > after)
            .order_by(C.store_id)
            .limit(limit)
        )
        return [(Binding(row[0], row[1], row[2]), row[3], row[4], row[5]) for row in rows]


async def _write_batch(
    session: AsyncSession, primary: str, batch: list[_Resealed]
) -> list[_Resealed]:
    """Compare-and-set each row; returns the rows that were still as read (and written)."""
    written = []
    for row in batch:
        conditions = [
            column.is_not_distinct_from(value)
            for column, value in zip(SEALED, row.old, strict=True)
        ]
        binding = row.binding
        result = await session.execute(
            update(INSTALLS)
            .where(
                C.store_id == binding.store_id,
                # What the values were re-sealed for: a row changed since is left alone.
                C.store_domain == binding.store_domain,
                C.auth_method == binding.auth_method,
                C.key_id == row.old_key_id,
                *conditions,
            )
            .values(
                secret_sealed=row.new[0],
                user_sealed=row.new[1],
                billing_sealed=row.new[2],
                key_id=primary if any(v is not None for v in row.new) else None,
            )
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            written.append(row)
    return written


async def rotate(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Progress | None = None,
) -> RotationReport:
    """Re-seal every install under the primary key. Idempotent; see the module docstring."""
    primary = keyring.primary
    report = RotationReport(primary=primary)
    async with sessionmaker() as session:
        report.total = await _count_under(session, await _old_key_ids(session, primary))
    if progress:
        progress(0, report.total)

    for _ in range(MAX_PASSES):
        conflicts_before = report.changed_concurrently
        async with sessionmaker() as session:
            old_key_ids = await _old_key_ids(session, primary)
            report.missing_keys = {}
            for kid in old_key_ids:
                if kid not in keyring.kids:
                    report.missing_keys[kid] = await _count_under(session, [kid])
        for kid in old_key_ids:
            if kid not in report.missing_keys:
                await _rotate_key(sessionmaker, keyring, kid, batch_size, report, progress)
        if report.changed_concurrently == conflicts_before:
            break
    return report


async def _rotate_key(
    sessionmaker: async_sessionmaker[AsyncSession],
    keyring: KeyRing,
    kid: str,
    batch_size: int,
    report: RotationReport,
    progress: Progress | None,
) -> None:
    after = ""
    while rows := await _read_batch(sessionmaker, kid, after, batch_size):
        after = rows[-1][0].store_id
        batch: list[_Resealed] = []
        for binding, *old in rows:
            try:
                secret, user, billing = (
                    reseal(keyring, binding, column.key, value)
                    for column, value in zip(SEALED, old, strict=True)
                )
            except SealError:
                report.damaged.add(binding.store_id)
                continue
            batch.append(_Resealed(binding, kid, (old[0], old[1], old[2]), (secret, user, billing)))

        async def write(session: AsyncSession, batch: list[_Resealed] = batch) -> list[_Resealed]:
            return await _write_batch(session, keyring.primary, batch)

        written = await run_transaction(sessionmaker, write)
        cleared = sum(1 for row in written if all(v is None for v in row.new))
        report.changed_concurrently += len(batch) - len(written)
        report.cleared += cleared
        report.rotated += len(written) - cleared
        if progress:
            progress(min(report.rotated + report.cleared, report.total), report.total)
