"""A per-replica cache of opened store credentials for the hot paths, kept honest by a
change feed, pushed invalidations, and a maximum age.

Every change to an install (install, reinstall, revoke, re-auth) takes a new
`installs.change_seq` from the database, never from a replica's clock, so replicas whose
clocks disagree still agree on what changed. Three ways a replica learns of a change:
- on PostgreSQL the install service NOTIFYs `CHANGES_CHANNEL` with the store id in the
  change's own transaction, delivered on commit: other replicas drop their copy at once;
- every BROKER_STORE_CACHE_SECONDS (default 1 s) each replica reads the rows whose change
  number is above what it had seen CHANGE_WINDOW ago (the fallback, and all SQLite has).
  Re-reading a window, not just "above the highest seen", matters on PostgreSQL: a
  change number is taken when the row is written and becomes visible at commit, so a
  lower number can appear after a higher one; the window is measured on this replica's
  monotonic clock, which skew between replicas does not affect;
- an entry older than BROKER_STORE_CACHE_MAX_AGE_SECONDS is read again, whatever the feed
  said: whatever slipped past both (a change that committed more than CHANGE_WINDOW after
  it was numbered, a replica started in the middle of one) is bounded by it.
If polling fails, the cache stops trusting itself after two intervals and every request
reads the database. The replica that served a change drops its copy itself at once.

The cache is bounded (BROKER_STORE_CACHE_MAX_ENTRIES) and filled in the background at
start-up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Mapping
from typing import Final

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import tracing
from service.background import cancel_and_wait
from service.errors import StoreSecretUnreadable
from service.installs import queries, repository
from service.installs.sealing import open_credentials
from service.neto.credentials import StoreCredentials
from service.security.crypto import KeyRing
from service.web import metrics

log = logging.getLogger("broker.store_cache")

# A cached store is a plain tuple of its credentials' fields (strings, numbers, None) and
# when they were read: the garbage collector stops tracking such a tuple, where 100,000
# cached objects would be walked by every full collection. `get` builds the
# StoreCredentials a caller uses.
Entry = tuple[str, str, str, str, int, str | None, str | None, str, float]
STATUS: Final = 3
CHANGE_SEQ: Final = 4
READ_AT: Final = 8


def _entry(creds: StoreCredentials) -> Entry:
    return (creds.store_id, creds.store_domain, creds.auth_method, creds.status,
            creds.change_seq, creds.who, creds.secret, creds.app, time.monotonic())  # fmt: skip


# PostgreSQL channel of the install service's change notifications (payload: store id).
CHANGES_CHANNEL = "broker_install_changes"
# Seconds of this replica's polls whose change numbers are read again: covers a change
# that commits a while after it took its number (transactions are killed well before).
CHANGE_WINDOW = 10.0
PRELOAD_BATCH = 1000
REVALIDATE_BATCH = 500
# Per-store change counts kept before they are folded into one base (bounds memory).
MAX_TRACKED_CHANGES = 100_000


class StoreCache:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: KeyRing,
        client_ids: Mapping[str, str],
        *,
        poll_seconds: float,
        max_entries: int,
        max_age_seconds: float = 60.0,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._keyring = keyring
        # App name -> its client id: an OAuth store's copy carries its own app's.
        self._client_ids = client_ids
        self._poll = poll_seconds
        self._max = max_entries
        self._max_age = max_age_seconds
        # Store id -> its credentials' fields and when they were read (`_entry`).
        self._entries: dict[str, Entry] = {}
        # (when, highest change number seen by then), for the feed's re-read window.
        self._marks: deque[tuple[float, int]] = deque()
        self._trusted_until = 0.0
        # Bumped by every invalidation. A read that overlapped one is served but not
        # cached: it may have seen the row before a revoke committed, and caching it would
        # hand out the revoked token after the revoke has answered.
        self._epoch = 0
        # Per store, how often this replica saw it change (plus every clear): an invoke
        # that read the store checks it before each attempt upstream (`version`).
        self._changes: dict[str, int] = {}
        self._clears = 0
        # Completed reads of the change feed: what tests (and a debugger) wait on to know
        # a poll has run, instead of sleeping and hoping one did.
        self.polls = 0
        # Set once the start-up preload is over (or at start without one).
        self.warm = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, *, preload: bool) -> None:
        if not preload:
            self.warm.set()
        if self._poll <= 0 or self._max <= 0:
            self.warm.set()
            return  # caching disabled: every request reads the database
        async with self._sessionmaker() as session:
            self._marks.append((time.monotonic(), await queries.last_change(session)))
        await self._refresh()
        self._tasks.append(asyncio.create_task(self._poll_loop(), name="store-cache-poll"))
        self._tasks.append(
            asyncio.create_task(self._revalidate_loop(), name="store-cache-revalidate")
        )
        if preload:
            self._tasks.append(asyncio.create_task(self._preload(), name="store-cache-preload"))

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        self._tasks.clear()

    # -- reads -------------------------------------------------------------------------
    async def get(self, store_id: str) -> StoreCredentials | None:
        now = time.monotonic()
        if now < self._trusted_until:
            hit = self._entries.get(store_id)
            if hit is not None and now - hit[READ_AT] < self._max_age:
                return StoreCredentials(*hit[:READ_AT])
        if tracing.ENABLED:
            with tracing.span("store_cache.miss", {"broker.store_id": store_id}):
                return await self._read(store_id)
        return await self._read(store_id)

    async def _read(self, store_id: str) -> StoreCredentials | None:
        """A miss: the store's row, opened, and cached unless an invalidation overlapped."""
        epoch = self._epoch
        async with self._sessionmaker() as session:
            install = await repository.get(session, store_id)
        if install is None:
            self._entries.pop(store_id, None)
            return None
        creds = open_credentials(self._keyring, install, self._client_ids.get(install.app))
        if epoch == self._epoch:
            self._put(creds)
        return creds

    def version(self, store_id: str) -> int:
        """Grows whenever this replica learns the store changed (a revoke or reinstall
        here, or the change feed): a caller holding credentials read at an older version
        must read them again before using them."""
        return self._clears + self._changes.get(store_id, 0)

    def invalidate(self, store_id: str) -> None:
        self._epoch += 1
        self._entries.pop(store_id, None)
        self._note_change(store_id)

    def _note_change(self, store_id: str) -> None:
        self._changes[store_id] = self._changes.get(store_id, 0) + 1
        if len(self._changes) > MAX_TRACKED_CHANGES:
            # Fold every store's count into the shared base, past the largest, so each
            # version still only grows, and the table starts over empty.
            self._clears += max(self._changes.values()) + 1
            self._changes.clear()

    def clear(self) -> None:
        self._epoch += 1
        self._clears += 1
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    # -- internals ---------------------------------------------------------------------
    def _put(self, creds: StoreCredentials) -> None:
        if self._max <= 0 or self._poll <= 0:
            return
        if len(self._entries) >= self._max:
            # Drop the oldest tenth (insertion order): cheap, and keeps hot stores cycling in.
            for key in list(self._entries)[: max(1, self._max // 10)]:
                del self._entries[key]
        self._entries.pop(creds.store_id, None)  # re-inserted last: the oldest go first
        self._entries[creds.store_id] = _entry(creds)

    async def _refresh(self) -> None:
        floor = self._marks[0][1]
        async with self._sessionmaker() as session:
            changed = await queries.changed_since(session, floor)
        # Every poll re-reads the whole window; a cached copy is dropped only if it
        # predates the change, so a mass change (an import) empties the cache once rather
        # than on every poll for the next few seconds. In-flight invokes see the store's
        # version move and re-read it before they send.
        moved = False
        highest = self._marks[-1][1]
        for store_id, seq in changed:
            highest = max(highest, seq)
            entry = self._entries.get(store_id)
            if entry is not None and entry[CHANGE_SEQ] >= seq:
                continue  # this copy was read after the change
            self._entries.pop(store_id, None)
            self._note_change(store_id)
            moved = True
        if moved:
            self._epoch += 1
        now = time.monotonic()
        self._marks.append((now, highest))
        # Keep the newest mark that is at least CHANGE_WINDOW old as the next floor.
        while len(self._marks) > 1 and self._marks[1][0] <= now - CHANGE_WINDOW:
            self._marks.popleft()
        self._trusted_until = now + 2 * self._poll
        self.polls += 1

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll)
            metrics.STORE_CACHE_ENTRIES.set(len(self._entries))
            try:
                await self._refresh()
            except Exception as exc:  # the cache lapses on its own; requests read the DB
                log.warning(
                    "store cache poll failed", extra={"fields": {"error_type": type(exc).__name__}}
                )

    async def _preload(self) -> None:
        """Warm the cache with active installs, a batch at a time, up to its bound."""
        after = ""
        try:
            while len(self._entries) < self._max:
                epoch = self._epoch
                async with self._sessionmaker() as session:
                    rows = await queries.active_page(session, after=after, limit=PRELOAD_BATCH)
                if not rows:
                    break
                if epoch != self._epoch:  # something changed meanwhile: re-read this batch
                    await asyncio.sleep(self._poll / 4)
                    continue
                for install in rows:
                    if install.store_id in self._entries or len(self._entries) >= self._max:
                        continue
                    try:
                        creds = open_credentials(
                            self._keyring, install, self._client_ids.get(install.app)
                        )
                    except StoreSecretUnreadable:
                        continue  # logged at ERROR; requests for it answer the same error
                    self._entries[install.store_id] = _entry(creds)
                after = rows[-1].store_id
                await asyncio.sleep(0)  # let requests run between batches
        except Exception as exc:
            log.warning(
                "store cache preload stopped", extra={"fields": {"error_type": type(exc).__name__}}
            )
        finally:
            self.warm.set()

    async def _revalidate_loop(self) -> None:
        """Keep copies from reaching their maximum age by checking them against their rows
        (change number and status) instead of reading and opening the rows again on a
        caller's request: with 100,000 installs most copies would otherwise expire
        between two requests for their store, and each expired one cost a caller a read
        and an AES-GCM open on its own path. A copy that no longer matches is dropped; one
        that matches counts as read when the check began. The maximum age is still
        enforced on every read, should this fall behind."""
        while True:
            await asyncio.sleep(self._max_age / 4)
            try:
                await self._revalidate()
            except Exception as exc:  # copies then expire by age, as without this
                log.warning(
                    "store cache revalidation failed",
                    extra={"fields": {"error_type": type(exc).__name__}},
                )

    async def _revalidate(self) -> None:
        due = time.monotonic() - self._max_age / 2
        stale = [sid for sid, entry in self._entries.items() if entry[READ_AT] < due]
        for first in range(0, len(stale), REVALIDATE_BATCH):
            chunk = stale[first : first + REVALIDATE_BATCH]
            checked = {sid: self._entries.get(sid) for sid in chunk}
            began = time.monotonic()
            async with self._sessionmaker() as session:
                rows = await queries.versions(session, chunk)
            for sid, entry in checked.items():
                if entry is None or self._entries.get(sid) is not entry:
                    continue  # dropped or replaced meanwhile: nothing to vouch for
                if rows.get(sid) == (entry[CHANGE_SEQ], entry[STATUS]):
                    self._entries[sid] = (*entry[:READ_AT], began)
                else:
                    self.invalidate(sid)
