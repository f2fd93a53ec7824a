"""What a verify read tells about a store's credentials, and how often a refused call may
be confirmed with one. The install service applies the verdicts (`service.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.installs.models import InstallStatus
from service.neto.refusals import REFUSED_STATUSES, neto_refused

# A refused call is confirmed with a verify read at most this often per store (replica).
CONFIRM_INTERVAL_SECONDS = 10.0
MAX_TRACKED_CONFIRMATIONS = 10_000


@dataclass(frozen=True, slots=True)
class VerifyOutcome:
    ok: bool
    status: str
    upstream_status: int | None
    detail: str
    changed: bool
    refused: bool = False  # Neto itself refused the credentials (its envelope, 401/403)


def verdict(upstream_status: int, body: bytes) -> tuple[bool, InstallStatus | None, str]:
    """What Neto's answer to the verify read says about the stored credentials: ok, the
    status the install should have (None: leave it), and a sentence for the operator.
    Only a refusal in Neto's envelope flags the store; a firewall's or CDN's 401/403 page
    in front of it is an error like any other (service/neto/refusals.py)."""
    if neto_refused(upstream_status, body):
        detail = f"Neto refused the stored credentials (HTTP {upstream_status})."
        return False, InstallStatus.reauth_required, detail
    if upstream_status in REFUSED_STATUSES:
        detail = (
            f"HTTP {upstream_status} without Neto's error envelope (a firewall or CDN in "
            "front of the store?); status left unchanged."
        )
        return False, None, detail
    if 200 <= upstream_status < 300:
        return True, InstallStatus.active, "Neto accepted the stored credentials."
    return False, None, f"Neto answered HTTP {upstream_status}; status left unchanged."


class ConfirmationGate:
    """At most one confirming read per store per CONFIRM_INTERVAL_SECONDS, so no caller
    can turn its refused requests into a stream of reads. Bounded: once the table is
    full, entries older than the interval are dropped."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._confirmed_at: dict[str, float] = {}

    def admit(self, store_id: str) -> bool:
        now = self._clock()
        last = self._confirmed_at.get(store_id)
        if last is not None and now - last < CONFIRM_INTERVAL_SECONDS:
            return False
        if len(self._confirmed_at) >= MAX_TRACKED_CONFIRMATIONS:
            cutoff = now - CONFIRM_INTERVAL_SECONDS
            self._confirmed_at = {k: t for k, t in self._confirmed_at.items() if t > cutoff}
        self._confirmed_at[store_id] = now
        return True
