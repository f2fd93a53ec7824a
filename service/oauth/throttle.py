"""Bounds on what the anonymous internet can make the broker do on the merchant routes.

`GET /oauth/install` and `GET /oauth/callback` need no credentials, and the first writes a
pending row. Each client address gets BROKER_INSTALL_RATE_PER_MINUTE requests a minute
across both (a sliding minute, kept in this replica's memory: with N replicas an address
may get N times as many, which the cap on live pending installs bounds in the database).

The client address is the ASGI peer, or, behind BROKER_TRUSTED_PROXIES proxies that each
append the address they saw to X-Forwarded-For, the N-th entry from the right: entries to
its left were written by the client and prove nothing. `broker serve` runs uvicorn with
proxy headers off, so nothing upstream of this has rewritten the peer address.

Requests are counted by *address prefix*: an IPv4 address as it is, an IPv6 address by
its /64. One subscriber, or one cloud instance, is routinely handed a whole /64, so
counting every /128 on its own would give an attacker 2^64 fresh budgets. The same prefix
is what the pending-install shares count (oauth/flow.py).
"""

from __future__ import annotations

import ipaddress
import time
from collections import deque
from collections.abc import Callable

from starlette.requests import HTTPConnection

from service.errors import RateLimited

WINDOW_SECONDS = 60.0
# Addresses remembered before the idle ones are swept; past it, the oldest are dropped.
MAX_ADDRESSES = 100_000


def client_address(conn: HTTPConnection, trusted_proxies: int) -> str:
    peer = conn.client.host if conn.client is not None else "unknown"
    if trusted_proxies <= 0:
        return peer
    forwarded = [
        entry.strip()
        for value in conn.headers.getlist("x-forwarded-for")
        for entry in value.split(",")
        if entry.strip()
    ]
    if len(forwarded) < trusted_proxies:  # it did not come through all the proxies
        return peer
    return forwarded[-trusted_proxies][:64]


def address_rule(trusted_proxies: int) -> str:
    """Which client address the install limit counts, as `/readyz` and the start-up log
    name it: `peer` (the connection's), or `x-forwarded-for[-N]` (the N-th entry from the
    right). A deployment whose rule is `peer` behind an Ingress counts every merchant as
    the controller's one address."""
    return "peer" if trusted_proxies <= 0 else f"x-forwarded-for[-{trusted_proxies}]"


def address_prefix(address: str) -> str:
    """The unit an address is counted by: IPv4 exact, IPv6 by /64 (an IPv4-mapped IPv6
    address as its IPv4). Anything that is not an address is counted as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressLimiter:
    """A sliding minute of requests per client address."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._per_minute = per_minute
        self._clock = clock
        self._seen: dict[str, deque[float]] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def admit(self, address: str) -> None:
        """Count one request from `address`, or raise 429 saying when to come back."""
        now = self._clock()
        times = self._seen.get(address)
        if times is None:
            if len(self._seen) >= MAX_ADDRESSES:
                self._sweep(now)
            times = self._seen[address] = deque()
        while times and times[0] <= now - WINDOW_SECONDS:
            times.popleft()
        if len(times) >= self._per_minute:
            wait = max(1, int(times[0] + WINDOW_SECONDS - now + 0.999))
            raise RateLimited(
                "Too many install requests from your network. Wait a minute, then start "
                "the install again from your Neto control panel.",
                headers={"Retry-After": str(wait)},
            )
        times.append(now)

    def _sweep(self, now: float) -> None:
        for address in [a for a, t in self._seen.items() if not t or t[-1] <= now - WINDOW_SECONDS]:
            del self._seen[address]
        while len(self._seen) >= MAX_ADDRESSES:  # all busy: forget the oldest first
            del self._seen[next(iter(self._seen))]
