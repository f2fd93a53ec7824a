"""The one shared HTTP client every upstream call rides on: no redirects, no proxies, no
cookies, the egress rules checked socket by socket (`service/security/egress.py`), and a
last check of the calling task's own at the hand-off (`HANDOFF`)."""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from http.cookiejar import CookieJar, DefaultCookiePolicy

import aiohttp
import httpx
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from httpx_aiohttp import AiohttpTransport

from service.config import Settings
from service.security.egress import socket_factory

USER_AGENT = "neto-token-broker"

# Set by the calling task around a request (neto/upstream.py): run once the request has
# its connection, the last moment before its bytes go out, and raising stops it there.
# A connection can take a while to get (a new one is a TCP connect): whatever changed
# meanwhile (a store revoked) is seen here, not only before the wait (issue 25, item 4).
HANDOFF: ContextVar[Callable[[], None] | None] = ContextVar("handoff", default=None)


class HandOffConnector(aiohttp.TCPConnector):
    """aiohttp's connector, with the calling task's `HANDOFF` check run on the connection
    it hands over: from the pool or new, nothing has been written on it yet. No await
    lies between this and the request's write (aiohttp's `ClientRequest.send`)."""

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 (aiohttp's signature)
    ) -> Connection:
        conn = await super().connect(req, traces, timeout)
        check = HANDOFF.get()
        if check is not None:
            try:
                check()
            except BaseException:
                conn.release()  # unused: back to the pool for the next request
                raise
        return conn


def create_session(
    settings: Settings, *, allow_private: bool | None = None
) -> aiohttp.ClientSession:
    """The one shared aiohttp session every upstream call rides on. Call inside the
    running event loop (lifespan). `allow_private=True` builds the webhook session for
    allow-listed receivers, which may sit on private addresses."""
    connector = HandOffConnector(
        limit=0,  # per-store limits are enforced by the broker itself
        limit_per_host=0,
        ttl_dns_cache=60,
        keepalive_timeout=30,
        enable_cleanup_closed=True,
        socket_factory=socket_factory(
            settings.egress_allow_private if allow_private is None else allow_private
        ),
    )
    return aiohttp.ClientSession(
        connector=connector,
        trust_env=False,
        auto_decompress=False,
        # The broker names itself rather than aiohttp's version. A default header, not
        # `skip_auto_headers`: skipping sends every request down aiohttp's slow path for
        # its automatic headers (a header copy and a sort per request, ~6 % of /invoke's
        # CPU in a profile, docs/performance.md).
        headers={"User-Agent": USER_AGENT},
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
        headers={"User-Agent": USER_AGENT},
    )
