"""The OAuth install flow, end to end: start (either way), callback, store.

Each step that touches the database runs in its own short transaction so no lock is held
while Neto is being called.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit.writer import record
from service.config import Settings
from service.db import run_transaction
from service.errors import (
    BadRequest,
    BrokerError,
    InvalidState,
    OAuthNotConfigured,
    RateLimited,
    ServiceUnavailable,
)
from service.installs.service import InstallService
from service.neto.apps import DEFAULT_APP, NetoApp, is_app_name
from service.neto.oauth import authorize_url, exchange_code
from service.oauth import pending
from service.oauth.models import PendingInstall
from service.security.callers import is_reserved_sub
from service.security.crypto import KeyRing
from service.security.domains import normalize_store_domain

log = logging.getLogger("broker.install")


# In a return URL's path: an encoded slash, backslash or dot, or a `;` (path parameters).
# Servers and proxies disagree on whether `..%2f`, `%2e%2e/` or `..;/` is a dot segment
# (Tomcat, Spring and nginx each have their own answer), so the checked path and the one
# served could differ: such paths are refused rather than guessed at.
_AMBIGUOUS_PATH = re.compile(r"%2[ef]|%5c|;", re.IGNORECASE)


def _resolved_path(path: str) -> str:
    """The path a browser will request: dot segments removed (RFC 3986 5.2.4), so
    `/neto/../../logout` is checked as `/logout`."""
    segments = path.split("/")
    out = [segments[0]]
    for i, segment in enumerate(segments[1:], start=1):
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if i == len(segments) - 1:
                out.append("")  # `/a/..` is the directory `/`, with its trailing slash
            continue
        out.append(segment)
    return "/".join(out) or "/"


def _under(path: str, prefix: str) -> bool:
    """A prefix matches whole path segments: `/neto` admits `/neto` and `/neto/x`,
    never `/neto-evil.html`."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def check_return_url(settings: Settings, url: str | None) -> str | None:
    """Only absolute http(s) URLs under an operator-allowed prefix: no open redirect.
    Returns the URL with its dot segments resolved: the one that was checked."""
    if url is None or url == "":
        return None
    # Printable ASCII only: a URL percent-encodes the rest, and DEL, NEL or U+2028 have
    # no business in a Location header.
    if any(not 0x21 <= ord(ch) < 0x7F or ch == "\\" for ch in url):
        raise BadRequest("return_url contains characters that are not allowed.")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.username:
        raise BadRequest("return_url must be an absolute http(s) URL without user info.")
    if _AMBIGUOUS_PATH.search(parts.path):
        raise BadRequest(
            "return_url's path must not contain '%2f', '%5c', '%2e' or ';': an encoded "
            "slash or dot could take it out of the allowed prefix."
        )
    path = _resolved_path(parts.path) if parts.path else "/"
    for prefix in settings.allowed_return_prefixes:
        allowed = urlsplit(prefix)
        if (
            parts.scheme == allowed.scheme
            and parts.netloc.lower() == allowed.netloc.lower()
            and _under(path, _resolved_path(allowed.path) if allowed.path else "/")
        ):
            return urlunsplit(parts._replace(path=path))
    raise BadRequest("return_url is not under a prefix this broker allows.")


def resolve_app(settings: Settings, name: str | None) -> NetoApp:
    """The configured add-on `name` names (None: `default`), or the error that says why
    there is none: OAuth not configured at all (503), or no such app (400). The answer
    never lists the configured names: the merchant routes are public."""
    if not settings.oauth_configured:
        raise OAuthNotConfigured()
    name = DEFAULT_APP if name is None else name
    app = settings.apps.get(name) if is_app_name(name) else None
    if app is None:
        raise BadRequest(
            f"No Neto add-on named {name[:32]!r} is configured on this broker. Start the "
            "install again from your Neto control panel."
        )
    return app


def add_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = (parts.query + "&" if parts.query else "") + urlencode(params)
    return urlunsplit(parts._replace(query=query))


@dataclass(frozen=True)
class Started:
    authorize_url: str
    expires_at: datetime


# No address prefix and no store domain holds more than this share of the live
# Neto-initiated installs (BROKER_MAX_PENDING_INSTALLS), so filling the table takes at
# least this many prefixes, and a full table still makes room for a prefix with less.
SHARE_DIVISOR = 8


def anonymous_share(settings: Settings) -> int:
    return max(1, settings.max_pending_installs // SHARE_DIVISOR)


async def _admit_anonymous(
    session: AsyncSession, settings: Settings, domain: str, initiator: str
) -> None:
    """Make room for one more Neto-initiated install from `initiator` (an address prefix)
    for `domain`, or refuse it.

    - A prefix at its share is refused (429): only its own traffic is turned away.
    - A domain at its share gives up its oldest unclaimed row: refusing would let anyone
      block a given store's installs by starting installs for it; this way a merchant's
      start always gets a row, and keeps it until the share of newer starts for the
      same store came after it.
    - A full table gives up the oldest unclaimed row of the prefix holding the most, if
      that prefix holds at least two more than this one; otherwise it is full (503). A
      merchant from a fresh prefix therefore gets through while the table holds rows of
      fewer prefixes than the cap.
    """
    cap, share = settings.max_pending_installs, anonymous_share(settings)
    retry = {"Retry-After": str(settings.state_ttl_seconds)}
    mine = await pending.live_count(session, share, pending.initiated_by(initiator))
    if mine >= share:
        raise RateLimited(
            "Too many installs are in progress from your network. Wait a few minutes, then "
            "start the install again from your Neto control panel.",
            headers=retry,
        )
    for_domain = (pending.anonymous(), pending.for_domain(domain))
    if await pending.live_count(session, share, *for_domain) >= share:
        await pending.evict_oldest(session, *for_domain)
    if await pending.live_count(session, cap, pending.anonymous()) < cap:
        return
    largest = await pending.largest_anonymous_origin(session)
    if (
        largest is None
        or largest[1] < mine + 2
        or not await pending.evict_oldest(session, pending.initiated_by(largest[0]))
    ):
        raise ServiceUnavailable(
            "Too many installs are in progress right now. Wait a few minutes, then start "
            "the install again from your Neto control panel.",
            headers=retry,
        )


async def _admit_caller(session: AsyncSession, settings: Settings, caller: str) -> None:
    """Each caller (`sub`) may have BROKER_MAX_PENDING_INSTALLS installs in flight: its
    starts are not under the anonymous cap, so this is what bounds one caller's rows."""
    cap = settings.max_pending_installs
    if await pending.live_count(session, cap, pending.initiated_by(caller)) >= cap:
        raise RateLimited(
            f"This caller already has {cap} installs in progress "
            "(BROKER_MAX_PENDING_INSTALLS); wait for some to complete or expire.",
            headers={"Retry-After": str(settings.state_ttl_seconds)},
        )


async def start(
    session: AsyncSession,
    settings: Settings,
    keyring: KeyRing,
    *,
    raw_domain: str,
    return_url: str | None,
    request_id: str | None,
    caller: str | None = None,
    origin: str | None = None,
    app_state: str | None = None,
    app: str | None = None,
) -> Started:
    """Start an install of the add-on `app` (None: `default`) for `caller` (a token's
    `sub`: app-initiated), or, from the anonymous route, for the client's address prefix
    `origin` (Neto-initiated)."""
    if (caller is None) == (origin is None):
        raise ValueError("an install is started either by a caller or from an origin")
    neto_app = resolve_app(settings, app)
    domain = normalize_store_domain(raw_domain)
    return_url = check_return_url(settings, return_url)
    if app_state is not None and return_url is None:
        # Only the return redirect carries it back: kept without one, it would be lost.
        raise BadRequest("app_state needs a return_url: it is echoed on the return redirect.")
    if origin is not None:
        initiated_by = pending.anonymous_initiator(origin)
        await _admit_anonymous(session, settings, domain, initiated_by)
    else:
        assert caller is not None
        if is_reserved_sub(caller):  # the verifier refuses such tokens; never trust one
            raise ValueError("a reserved name cannot start an app-initiated install")
        initiated_by = caller
        await _admit_caller(session, settings, caller)
    state, row = await pending.create(
        session,
        store_domain=domain,
        return_url=return_url,
        initiated_by=initiated_by,
        ttl_seconds=settings.state_ttl_seconds,
        keyring=keyring,
        app_state=app_state,
        app=neto_app.name,
    )
    if caller is not None:
        # Only a caller with a token starts an audited install: the anonymous internet
        # must not grow the audit log. A Neto-initiated install is audited when it
        # completes (install.created / install.reinstalled) or fails (install.failed).
        record(
            session,
            "install.started",
            actor=caller,
            request_id=request_id,
            store_domain=domain,
            app=neto_app.name,
        )
    return Started(authorize_url(settings, neto_app, domain, state), row.expires_at)


@dataclass(frozen=True)
class Completed:
    store_id: str
    store_domain: str
    return_url: str | None
    app_state: str | None = None


async def complete(
    sessionmaker: async_sessionmaker[AsyncSession],
    client: httpx.AsyncClient,
    settings: Settings,
    installs: InstallService,
    keyring: KeyRing,
    *,
    state: str,
    code: str,
    request_id: str | None,
    app: str | None = None,
) -> Completed:
    """Claim the state on the callback of the add-on `app` (None: `default`), exchange
    the code once with that app's secret, store the install under it, consume the
    state. A state started for another app is refused unclaimed (pending.claim)."""
    neto_app = resolve_app(settings, app)

    async def claim(session: AsyncSession) -> PendingInstall:
        return await pending.claim(session, state, code, neto_app.name)

    claimed = await run_transaction(sessionmaker, claim)
    pending_id = claimed.id
    assert pending_id is not None
    try:
        # Before the code is exchanged: a row a database writer changed installs nothing.
        app_state = pending.open_binding(keyring, claimed)
        _recheck_return_url(settings, claimed)
        # The app the state is bound to (the binding proved the row's app is the one the
        # broker wrote, and the claim that it is this callback's): its secret only.
        grant = await exchange_code(client, settings, neto_app, code, claimed.store_domain)

        async def consume(session: AsyncSession) -> None:
            # In the install's own transaction: the state is used exactly when it stored.
            await pending.consume(session, pending_id, grant.store_id)

        await installs.store_oauth_grant(
            grant, app=neto_app.name, actor=pending.actor_of(claimed), request_id=request_id,
            also=consume,
        )  # fmt: skip
    except BaseException as exc:
        await _release(sessionmaker, pending_id)
        if isinstance(exc, BrokerError):
            await _audit_failure(sessionmaker, claimed, exc, request_id)
        raise
    return Completed(grant.store_id, grant.store_domain, claimed.return_url, app_state)


def _recheck_return_url(settings: Settings, row: PendingInstall) -> None:
    """The stored return URL must still be one this broker allows, exactly as it was
    stored (resolved) at the start: the binding proves the broker wrote it, this that the
    operator still allows it (BROKER_RETURN_URL_PREFIXES may have narrowed since)."""
    if row.return_url is None:
        return
    try:
        allowed = check_return_url(settings, row.return_url) == row.return_url
    except BadRequest:
        allowed = False
    if not allowed:
        log.error(
            "a pending install's return URL is not under BROKER_RETURN_URL_PREFIXES; "
            "the install is refused",
            extra={"fields": {"pending_id": row.id}},
        )
        raise InvalidState(
            "This install link cannot be completed. Start the install again from your "
            "Neto control panel."
        )


async def _release(sessionmaker: async_sessionmaker[AsyncSession], pending_id: int) -> None:
    """Best effort: if the database is down too, the claim lease runs out on its own."""
    try:
        await run_transaction(sessionmaker, lambda s: pending.release(s, pending_id), attempts=2)
    except Exception:
        log.warning("could not release an install claim; it expires with its lease")


async def _audit_failure(
    sessionmaker: async_sessionmaker[AsyncSession],
    claimed: PendingInstall,
    exc: BrokerError,
    request_id: str | None,
) -> None:
    async def run(session: AsyncSession) -> None:
        record(
            session,
            "install.failed",
            actor=pending.actor_of(claimed),
            request_id=request_id,
            store_domain=claimed.store_domain,
            app=claimed.app,
            error=exc.code,
        )

    try:
        await run_transaction(sessionmaker, run, attempts=2)
    except Exception:
        log.warning("could not audit a failed install")
