"""Idempotency keys for writes (the IETF `Idempotency-Key` draft), on both doors to Neto.

A write that carries `Idempotency-Key` is sent to Neto at most once per (store, caller,
key): its row is inserted *before* the write goes out (a unique constraint decides, on
every replica alike), and then holds Neto's answer, sealed. A repeat with the same
request gets that answer with `Idempotent-Replayed: true`; a repeat while the first is
still out waits for it (409 `idempotency_key_in_flight` past the wait); the same key with
another request is 422 `idempotency_key_reused` and is never sent. A write whose outcome
is unknown (the deadline passed, or the connection broke, after it may have been sent) is
recorded so, and its repeats answer 504 `upstream_outcome_unknown`, never a resend. A
write the broker refused before sending (rate limited, store revoked...) leaves no row:
its retry is a first try. Rows live BROKER_IDEMPOTENCY_TTL_HOURS, then the retention job
deletes them; an expired row no longer counts.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlmodel import col

from service.db import run_transaction, utcnow
from service.errors import (
    BadRequest,
    IdempotencyKeyInFlight,
    IdempotencyKeyReused,
    StoreSecretUnreadable,
    UpstreamOutcomeUnknown,
)
from service.idempotency.models import IdempotencyKey, KeyState
from service.keys.rotation import SealedTable
from service.neto.upstream import UpstreamResponse
from service.security.crypto import Context, KeyRing, SealError

HEADER = "idempotency-key"
REPLAYED = "Idempotent-Replayed"
# The draft's value is a Structured Field string ("..."); a bare token is taken too.
_CHARS = r"\x21\x23-\x5b\x5d-\x7e"  # visible ASCII but the quote and the backslash
_KEY = re.compile(rf'^(?:"([\x20{_CHARS}]{{1,255}})"|([{_CHARS}]{{1,255}}))$')
# How often a repeat looks whether the first try has been answered.
POLL_SECONDS = 0.1

BOUND = ("store_id", "caller", "key_digest", "request_digest", "status")


def parse_key(raw: str) -> str:
    match = _KEY.match(raw.strip())
    if match is None:
        raise BadRequest(
            "Idempotency-Key must be a quoted string or a token of 1 to 255 visible "
            'ASCII characters, e.g. Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324".'
        )
    return match[1] or match[2]


def request_digest(action: str, media: Mapping[str, str], body: bytes) -> str:
    """What makes two requests the same one: the action, the body's type, the answer's
    type asked for, and the body's bytes."""
    h = hashlib.sha256()
    for part in (action, media.get("Content-Type", ""), media.get("Accept", "")):
        h.update(part.encode() + b"\0")
    h.update(body)
    return h.hexdigest()


def _context(row_id: str, bound: tuple[object, ...], column: str) -> Context:
    return Context("idempotency_keys", column, row_id, tuple(str(v) for v in bound))


ROTATION = SealedTable.of(
    IdempotencyKey, "idempotent answers", row_id="id", sealed=("answer_sealed",),
    bound=BOUND, context=_context,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Ticket:
    """A first try: its row is in, the write may go out."""

    row_id: str
    store_id: str
    caller: str
    key_digest: str
    request_digest: str


class IdempotencyStore:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: KeyRing,
        *,
        ttl_hours: float,
        wait_seconds: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._keyring = keyring
        self._ttl = timedelta(hours=ttl_hours)
        # A repeat waits at most this long for the first try (its whole deadline); a row
        # in flight for longer than that was left by a replica that died sending it.
        self._wait = wait_seconds

    async def begin(
        self, store_id: str, caller: str, key: str, digest: str
    ) -> Ticket | UpstreamResponse:
        """A ticket to send the write, or the answer a first try already got."""
        key_digest = hashlib.sha256(key.encode()).hexdigest()
        ticket = Ticket(_new_id(), store_id, caller, key_digest, digest)
        deadline = time.monotonic() + self._wait
        while True:
            if await self._insert(ticket):
                return ticket
            row = await self._find(ticket)
            if row is None:  # gone since (abandoned, or pruned): try again
                continue
            if row.request_digest != digest:
                raise IdempotencyKeyReused()
            if row.state == KeyState.DONE:
                return self._answer_of(row)
            if row.state == KeyState.UNKNOWN:
                raise UpstreamOutcomeUnknown()
            if utcnow() - row.created_at > timedelta(seconds=self._wait + 30):
                await self._settle(row.id, KeyState.UNKNOWN)  # its replica died sending it
                raise UpstreamOutcomeUnknown()
            if time.monotonic() >= deadline:
                raise IdempotencyKeyInFlight()
            await asyncio.sleep(POLL_SECONDS)

    async def done(self, ticket: Ticket, answer: UpstreamResponse) -> None:
        """Neto answered: keep the answer, sealed, for the repeats."""
        plain = json.dumps(
            {"content_type": answer.content_type, "body": base64.b64encode(answer.body).decode()}
        ).encode()
        bound = (ticket.store_id, ticket.caller, ticket.key_digest, ticket.request_digest,
                 answer.status)  # fmt: skip
        sealed = self._keyring.seal(plain, _context(ticket.row_id, bound, "answer_sealed"))
        await self._settle(
            ticket.row_id, KeyState.DONE,
            status=answer.status, answer_sealed=sealed, key_id=self._keyring.primary,
        )  # fmt: skip

    async def unknown(self, ticket: Ticket) -> None:
        """The write may have reached Neto and no answer came: never send it again."""
        await self._settle(ticket.row_id, KeyState.UNKNOWN)

    async def abandon(self, ticket: Ticket) -> None:
        """Nothing was sent: the next try is a first try."""

        async def work(session: AsyncSession) -> None:
            await session.execute(
                delete(IdempotencyKey).where(col(IdempotencyKey.id) == ticket.row_id)
            )

        await run_transaction(self._sessionmaker, work)

    async def _insert(self, ticket: Ticket) -> bool:
        now = utcnow()

        async def work(session: AsyncSession) -> None:
            # An expired row no longer counts (retention deletes it later).
            await session.execute(
                delete(IdempotencyKey).where(
                    col(IdempotencyKey.store_id) == ticket.store_id,
                    col(IdempotencyKey.caller) == ticket.caller,
                    col(IdempotencyKey.key_digest) == ticket.key_digest,
                    col(IdempotencyKey.created_at) < now - self._ttl,
                )
            )
            session.add(
                IdempotencyKey(
                    id=ticket.row_id,
                    store_id=ticket.store_id,
                    caller=ticket.caller,
                    key_digest=ticket.key_digest,
                    request_digest=ticket.request_digest,
                    state=KeyState.IN_FLIGHT,
                    created_at=now,
                )
            )

        try:
            await run_transaction(self._sessionmaker, work)
        except IntegrityError:
            return False
        return True

    async def _find(self, ticket: Ticket) -> IdempotencyKey | None:
        async with self._sessionmaker() as session:
            found = await session.execute(
                select(IdempotencyKey).where(
                    col(IdempotencyKey.store_id) == ticket.store_id,
                    col(IdempotencyKey.caller) == ticket.caller,
                    col(IdempotencyKey.key_digest) == ticket.key_digest,
                )
            )
            return found.scalars().first()

    async def _settle(self, row_id: str, state: str, **values: object) -> None:
        async def work(session: AsyncSession) -> None:
            await session.execute(
                update(IdempotencyKey)
                .where(col(IdempotencyKey.id) == row_id)
                .values(state=state, **values)
            )

        await run_transaction(self._sessionmaker, work)

    def _answer_of(self, row: IdempotencyKey) -> UpstreamResponse:
        bound = (row.store_id, row.caller, row.key_digest, row.request_digest, row.status)
        try:
            plain = self._keyring.open(
                row.answer_sealed or "", _context(row.id, bound, "answer_sealed")
            )
        except SealError:
            raise StoreSecretUnreadable(
                "The answer kept for this Idempotency-Key cannot be opened with the "
                "configured keys."
            ) from None
        stored = json.loads(plain)
        return UpstreamResponse(
            int(row.status or 0), base64.b64decode(stored["body"]), stored["content_type"],
            replayed=True,
        )  # fmt: skip


def _new_id() -> str:
    """Creation milliseconds, then randomness: unique, and ordered by time for retention."""
    return f"{int(time.time() * 1000):013x}{secrets.token_hex(8)}"
