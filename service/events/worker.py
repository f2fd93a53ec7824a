"""The delivery worker: one per replica, every replica runs it.

It claims due deliveries (`deliveries.claim`: each attempt by exactly one replica), POSTs
each event signed per Standard Webhooks, and records every attempt. A failed attempt is
retried with exponential backoff and jitter; once a delivery has failed for the whole
retry window the subscription is marked failing. Idle, it sleeps until the next retry
falls due, a new event is announced (LISTEN/NOTIFY on PostgreSQL), or the poll interval
passes (the fallback, and SQLite's only way).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import datetime, timedelta

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import tracing
from service.background import cancel_and_wait
from service.batching import Batcher
from service.config import Settings
from service.db import run_transaction, utcnow
from service.events import deliveries, repository, subscriptions
from service.events.deliveries import Claim, Outcome
from service.events.models import Event, Webhook
from service.events.signing import body_of, signed_headers
from service.security.crypto import KeyRing, SealError
from service.security.egress import is_refusal

log = logging.getLogger("broker.webhooks")

BATCH = 32
# Neto's notifications are answered before they are fanned out: while the receiver is
# working on some, a round waits for it, at most this long (so a steady stream of them
# still gets its deliveries, a round at least this often).
DEFER_SECONDS = 0.5
# An attempt that ended: what it claimed, the event, when it was sent, how it went.
Finished = tuple[Claim, str, datetime, Outcome]


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before the next try: base * 2^(attempt-1), capped, jittered to 50-100 %
    so receivers that come back are not hit by every replica's retries at once."""
    delay = min(cap, base * 2 ** min(attempt - 1, 40))
    return float(delay * random.uniform(0.5, 1.0))  # noqa: S311


class DeliveryWorker:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: KeyRing,
        settings: Settings,
        session: aiohttp.ClientSession,
        private_session: aiohttp.ClientSession | None,
        *,
        busy: Callable[[], bool] = lambda: False,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._busy = busy  # the receiver is answering notifications
        self._keyring = keyring
        self._settings = settings
        self._session = session  # under the egress rules
        self._private = private_session  # for allow-listed hosts only
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._records: Batcher[Finished, None] = Batcher("webhook-records", self._record_many)
        self._stopping = False
        # The database's clock minus this replica's, measured at each claim: every time
        # the worker compares or schedules is the database's (`deliveries.database_now`).
        self._clock_offset = timedelta(0)

    def _now(self) -> datetime:
        return utcnow() + self._clock_offset

    def wake(self, _payload: str = "") -> None:
        self._wake.set()

    def start(self) -> None:
        self._records.start()
        self._task = asyncio.create_task(self._run(), name="webhook-delivery")

    async def stop(self) -> None:
        """Let the round in flight finish (its attempts are bounded by the timeout), so
        no transaction is cut in half; cancel only if it overruns."""
        if self._task is not None:
            self._stopping = True
            self._wake.set()
            grace = self._settings.webhook_timeout_seconds + 2
            with contextlib.suppress(TimeoutError):
                await asyncio.wait({self._task}, timeout=grace)
            await cancel_and_wait(self._task)
            self._task = None
        await self._records.stop()  # after the round: its attempts wait for their records
        if self._private is not None:
            await self._private.close()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                await self._defer()
                if await self.tick() and not self._stopping:
                    continue
                pause = await self._idle_seconds()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery round failed; retrying")
                pause = self._settings.events_poll_seconds
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._wake.wait()

    async def _defer(self) -> None:
        """Let the receiver answer what it is working on first (at most DEFER_SECONDS):
        in a burst, a delivery round beside it doubled the time Neto waited for each
        answer."""
        deadline = time.monotonic() + DEFER_SECONDS
        # Polled: the receiver keeps a count, touched twice per notification, and this
        # loop runs only while it is busy.
        while self._busy() and not self._stopping and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    async def _idle_seconds(self) -> float:
        poll = self._settings.events_poll_seconds
        async with self._sessionmaker() as session:
            due = await deliveries.next_due(session)
        if due is None:
            return poll
        return max(0.01, min(poll, (due - self._now()).total_seconds()))

    async def tick(self) -> int:
        """One round: claim what is due and attempt it all. The number attempted."""
        lease = timedelta(seconds=self._settings.webhook_timeout_seconds * 2 + 5)

        async def take(session: AsyncSession) -> list[tuple[Claim, Webhook, Event | None]]:
            now = await deliveries.database_now(session)
            self._clock_offset = now - utcnow()
            claims = await deliveries.claim(session, now, lease, BATCH)
            events = await repository.get_many(session, [c.seq for c in claims])
            hooks = {w.id: w for w in await subscriptions.listing(session)}
            return [(c, hooks[c.webhook_id], events.get(c.seq)) for c in claims]

        claimed = await run_transaction(self._sessionmaker, take)
        await asyncio.gather(*(self._attempt(c, w, e) for c, w, e in claimed))
        return len(claimed)

    async def _attempt(self, claim: Claim, webhook: Webhook, event: Event | None) -> None:
        if event is None:  # pruned by retention before it could be delivered
            await run_transaction(
                self._sessionmaker, lambda s: deliveries.dropped(s, claim.delivery_id)
            )
            return
        at = self._now()
        if tracing.ENABLED:  # a trace of its own: the event's origin is not kept
            attributes = {
                "broker.webhook_id": webhook.id,
                "broker.event_id": event.event_id,
                "broker.event_type": event.type,
                "broker.retry": claim.attempt - 1,
            }
            with tracing.span("webhook.deliver", attributes, tracing.SpanKind.PRODUCER) as span:
                outcome = await self._post(webhook, event, at)
                if outcome.status_code is not None:
                    span.set_attribute("http.response.status_code", outcome.status_code)
                if not outcome.ok:
                    span.set_status(tracing.StatusCode.ERROR)
        else:
            outcome = await self._post(webhook, event, at)
        await self._records.submit((claim, event.event_id, at, outcome))
        if not outcome.ok:
            log.info(
                "webhook attempt failed",
                extra={"fields": {"webhook_id": webhook.id, "event_id": event.event_id,
                                  "attempt": claim.attempt, "status": outcome.status_code,
                                  "error": outcome.error}},
            )  # fmt: skip

    async def _record_many(self, finished: list[Finished]) -> list[None]:
        """The attempts that ended together, recorded in one transaction: a burst's
        deliveries are a few commits, not one each beside the receiver's writes."""
        settings = self._settings

        async def record(session: AsyncSession) -> list[None]:
            now = self._now()
            await deliveries.record_attempts(session, finished)
            await deliveries.delivered(
                session, [claim.delivery_id for claim, *_, outcome in finished if outcome.ok], now
            )
            for claim, *_, outcome in finished:
                if outcome.ok:
                    continue
                waited = (now - claim.first_attempt_at).total_seconds()
                if waited >= settings.webhook_retry_window_seconds:
                    await deliveries.mark_failing(session, claim.webhook_id, claim.delivery_id,
                                                  now)  # fmt: skip
                else:
                    delay = backoff(claim.attempt, settings.webhook_retry_base_seconds,
                                    settings.webhook_retry_max_seconds)  # fmt: skip
                    await deliveries.retry_at(
                        session, claim.delivery_id, now + timedelta(seconds=delay)
                    )
            return [None] * len(finished)

        return await run_transaction(self._sessionmaker, record)

    async def _post(self, webhook: Webhook, event: Event, at: datetime) -> Outcome:
        """One POST: no redirects followed, the answer read up to a small cap, a hard
        timeout. The error names what went wrong, never the URL's or answer's content."""
        try:
            secret = subscriptions.open_secret(self._keyring, webhook)
            previous = subscriptions.open_previous(self._keyring, webhook, at)
        except SealError:
            log.error(
                "a webhook secret cannot be opened", extra={"fields": {"webhook_id": webhook.id}}
            )
            return Outcome(None, 0, "signing secret unreadable")
        body = body_of(event, raw=webhook.include_raw)
        headers = signed_headers(secret, event.event_id, body, at, also=previous)
        listed = subscriptions.allow_listed(webhook.url, self._settings.webhook_hosts)
        session = self._private if self._private and listed else self._session
        timeout = aiohttp.ClientTimeout(total=self._settings.webhook_timeout_seconds)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with session.post(
                webhook.url, data=body, headers=headers, allow_redirects=False, timeout=timeout,
            ) as answer:  # fmt: skip
                status = answer.status
                await answer.content.read(self._settings.webhook_response_max_bytes)
        except TimeoutError:
            error = "timeout"
        except aiohttp.ClientConnectorError as exc:
            error = "egress refused" if is_refusal(exc.os_error) else "connection failed"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"no answer ({type(exc).__name__})"
        latency = int((time.monotonic() - started) * 1000)
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        return Outcome(status, latency, error)
