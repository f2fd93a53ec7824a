"""Egress rules: where the broker may connect, checked at connect time.

Every outbound connection (`service/neto/http.py` builds the one shared client) gets its
socket from `socket_factory`, which refuses, address by address, anything that is not
globally routable (loopback, private, site-local, link-local and metadata, CGNAT,
multicast, reserved, and the IPv4-mapped, NAT64, 6to4 and Teredo spellings of those)
unless private egress is allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from typing import Any

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
# Site-local IPv6 (RFC 3879 deprecated it, but routers and hosts still honour it inside a
# site), which Python's `ipaddress` counts as global: refused like unique-local fc00::/7.
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")


_REFUSAL = "refusing to connect to non-public address"
# aiohttp's connector (aiohappyeyeballs) folds the failures of a host's addresses into one
# plain OSError with this text when their messages differ, dropping the originals.
_COMBINED = "Multiple exceptions: "


class EgressRefused(OSError):
    """The address is not one the broker may connect to."""


def is_refusal(error: BaseException) -> bool:
    """True when the egress check refused the connection: one address, or every address
    of a host that resolves to several (`localhost` as 127.0.0.1 and ::1 on stock Debian,
    which aiohttp reports only as text). A host with one address refused and another that
    failed to connect is a connection failure: something was tried."""
    if isinstance(error, EgressRefused):
        return True
    if type(error) is not OSError:
        return False
    # OSError(None, text) when the addresses share an errno (None for ours), else OSError(text).
    text = error.strerror if error.strerror is not None else str(error)
    if not text.startswith(_COMBINED):
        return False
    return all(part.startswith(_REFUSAL) for part in text[len(_COMBINED) :].split(", "))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64 or ip in _NAT64_LOCAL:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    return None


def is_public_address(address: str) -> bool:
    """True only for globally routable unicast addresses, in every spelling."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_public_address(str(embedded))
        if ip in _SITE_LOCAL:
            return False
    return bool(
        ip.is_global
        and not ip.is_multicast
        and not ip.is_reserved
        and not ip.is_link_local
        and not ip.is_loopback
        and not ip.is_private
        and not ip.is_unspecified
    )


def socket_factory(allow_private: bool) -> Callable[[Any], socket.socket]:
    """aiohttp calls this with each resolved address right before it connects."""

    def factory(addr_info: Any) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if not allow_private and not is_public_address(sockaddr[0]):
            raise EgressRefused(f"{_REFUSAL} {sockaddr[0]}")
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return factory
