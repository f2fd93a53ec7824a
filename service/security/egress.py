"""Egress rules: where the broker may connect, checked at connect time.

The store's API URL is built from parts with an already validated domain. Connections
go through one shared client that follows no redirects, ignores proxy environment
variables, and refuses, socket by socket, any address that is not globally routable
(loopback, private, link-local and metadata, CGNAT, multicast, reserved, and the
IPv4-mapped, NAT64 and 6to4 spellings of those) unless private egress is allowed.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from collections.abc import Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from service.config import Settings

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
_PLACEHOLDER = "store-domain-placeholder.invalid"


class EgressRefused(OSError):
    """The address is not one the broker may connect to."""


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
            raise EgressRefused(f"refusing to connect to non-public address {sockaddr[0]}")
        sock = socket.socket(family=family, type=type_, proto=proto)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    return factory


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The one shared aiohttp session every upstream call rides on. Call inside the
    running event loop (lifespan)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # per-store limits are enforced by the broker itself
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
        socket_factory=socket_factory(settings.egress_allow_private),
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
        # One client serves every store and caller: a cookie from one answer must never
        # ride along on another store's or caller's request.
        cookie_jar=aiohttp.DummyCookieJar(),
    )


def create_http_client(session: aiohttp.ClientSession, settings: Settings) -> httpx.AsyncClient:
    """httpx's API over the shared aiohttp session, for the OAuth token exchange.

    The /invoke passthrough calls the session directly: per request, httpx's client layer
    (request and response models, cookie extraction, redirect and auth hooks) measured
    more CPU than the whole aiohttp request (see docs/performance.md).
    """
    transport = AiohttpTransport(client=session, trust_env=False)
    return httpx.AsyncClient(
        transport=transport,
        trust_env=False,
        follow_redirects=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        timeout=httpx.Timeout(
            settings.upstream_deadline_seconds, connect=settings.upstream_connect_timeout_seconds
        ),
        headers={"User-Agent": "neto-token-broker"},
    )


class ApiUrlBuilder:
    """Builds a store's API URL from the configured template, from parts.

    The template's `{store_domain}` may stand for the host (production) or a path
    segment (tests and the demo point every store at one local server). The validated
    domain is placed into that part only; it never meets string concatenation.
    """

    def __init__(self, template: str) -> None:
        probe = urlsplit(template.replace("{store_domain}", _PLACEHOLDER))
        if probe.scheme not in ("http", "https") or not probe.hostname:
            raise ValueError("BROKER_NETO_API_URL_TEMPLATE must be an http(s) URL")
        self.scheme = probe.scheme
        self.in_host = probe.hostname == _PLACEHOLDER
        self.host = probe.hostname
        self.port = probe.port
        self.path_parts = probe.path.split("/")
        if not self.in_host and _PLACEHOLDER not in self.path_parts:
            raise ValueError("{store_domain} must be the host or a whole path segment")

    @functools.lru_cache(maxsize=65536)  # noqa: B019  (one builder per app; bounded)
    def url_for(self, store_domain: str) -> str:
        """The URL as text, memoised: building an httpx.URL costs more than a bundle."""
        return str(self.build(store_domain))

    def build(self, store_domain: str) -> httpx.URL:
        if self.in_host:
            return httpx.URL(
                scheme=self.scheme,
                host=store_domain,
                port=self.port,
                path="/".join(self.path_parts),
            )
        path = "/".join(
            quote(store_domain, safe="") if part == _PLACEHOLDER else part
            for part in self.path_parts
        )
        return httpx.URL(scheme=self.scheme, host=self.host, port=self.port, path=path)
