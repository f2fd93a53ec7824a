"""A short-lived, per-replica cache of opened store credentials for the hot paths.

Its lifetime (BROKER_STORE_CACHE_SECONDS, default 2 s) is the revocation bound: a revoke
drops the entry at once on the replica that served it, and every other replica re-reads
the install within that many seconds. Only found installs are cached.
"""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service import stores
from service.security.crypto import KeyRing

MAX_ENTRIES = 50_000


class StoreCache:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: KeyRing,
        client_id: str | None,
        ttl_seconds: float,
    ) -> None:
        self._sessionmaker = sessionmaker
        self._keyring = keyring
        self._client_id = client_id
        self._ttl = ttl_seconds
        self._entries: dict[str, tuple[float, stores.StoreCredentials]] = {}
        # Bumped by every invalidation. A read that overlapped one is served but not
        # cached: it may have seen the row before a revoke committed, and caching it would
        # hand out the revoked token for another TTL after the revoke has answered.
        self._epoch = 0

    async def get(self, store_id: str) -> stores.StoreCredentials | None:
        now = time.monotonic()
        hit = self._entries.get(store_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        epoch = self._epoch
        async with self._sessionmaker() as session:
            install = await stores.get(session, store_id)
        if install is None:
            self._entries.pop(store_id, None)
            return None
        creds = stores.open_credentials(self._keyring, install, self._client_id)
        if self._ttl > 0 and epoch == self._epoch:
            if len(self._entries) >= MAX_ENTRIES:
                self._evict(now)
            self._entries[store_id] = (now + self._ttl, creds)
        return creds

    def invalidate(self, store_id: str) -> None:
        self._epoch += 1
        self._entries.pop(store_id, None)

    def clear(self) -> None:
        self._epoch += 1
        self._entries.clear()

    def _evict(self, now: float) -> None:
        expired = [k for k, (exp, _) in self._entries.items() if exp <= now]
        for key in expired:
            del self._entries[key]
        if len(self._entries) >= MAX_ENTRIES:  # all fresh: drop the oldest tenth
            for key in list(self._entries)[: MAX_ENTRIES // 10]:
                del self._entries[key]
