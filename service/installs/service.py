"""The install service: every change to an install goes through here.

An OAuth grant stored, an API key registered, a revoke, a verify outcome, a re-auth flag,
a reactivation: each is written, audited and committed in one transaction, and only then
is this replica's cached copy dropped (`_change`), so no request can re-cache the old
state and no write path can forget a step. Other replicas learn of the change through the
cache's change feed. Routers and the OAuth flow call these methods; none of them commits
a change to an install itself (tests/unit/test_install_service.py checks the source).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from typing import TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from service.audit.writer import record
from service.db import run_transaction, utcnow
from service.errors import BrokerError, OAuthNotConfigured, ServiceUnavailable, StoreRevoked
from service.events.outbox import emit
from service.inbound import tokens as notify_tokens
from service.installs import repository
from service.installs.cache import CHANGES_CHANNEL, StoreCache
from service.installs.models import AuthMethod, Install, InstallStatus
from service.installs.sealing import credentials_fingerprint, open_credentials
from service.installs.verification import ConfirmationGate, VerifyOutcome, verdict
from service.neto.actions import VERIFY_ACTION
from service.neto.apps import DEFAULT_APP
from service.neto.credentials import StoreCredentials
from service.neto.oauth import TokenGrant
from service.neto.refusals import neto_refused
from service.neto.upstream import UpstreamClient
from service.notifications import notify
from service.security.crypto import KeyRing
from service.web import metrics

log = logging.getLogger("broker.installs")
T = TypeVar("T")
# Work that must commit with the change or not at all (the OAuth flow consumes its state).
AlsoInTransaction = Callable[[AsyncSession], Awaitable[None]]
# Revoked installs' profiles destroyed per transaction (`forget_revoked_profiles`).
PROFILE_BATCH = 500


class InstallService:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        keyring: KeyRing,
        cache: StoreCache,
        upstream: UpstreamClient,
        client_ids: Mapping[str, str],
        *,
        profile_retention_days: int = 0,
    ) -> None:
        self._sessionmaker = sessionmaker
        # 0: a revoke destroys the merchant's profile with the token; N: N days later.
        self._profile_days = profile_retention_days
        self._keyring = keyring
        self._cache = cache
        self._upstream = upstream
        self._client_ids = client_ids  # app name -> client id (service/neto/apps.py)
        # Store id -> when its last refusal was confirmed (monotonic): the rate limit.
        self._confirmations = ConfirmationGate()

    async def _change(self, store_id: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """Run `work` (write and audit) in one transaction, then drop the cached copy.

        The drop comes after the commit, so no request can cache the old row again; it
        also happens when the commit failed, since a failed commit's outcome may be
        unknown and a dropped copy is only read again. Other replicas are notified by the
        same transaction (PostgreSQL), so they hear of the change exactly when it commits."""

        async def work_and_notify(session: AsyncSession) -> T:
            result = await work(session)
            await notify(session, CHANGES_CHANNEL, store_id)
            return result

        try:
            return await run_transaction(self._sessionmaker, work_and_notify)
        finally:
            self._cache.invalidate(store_id)

    async def store_oauth_grant(
        self,
        grant: TokenGrant,
        *,
        app: str = DEFAULT_APP,
        actor: str,
        request_id: str | None,
        also: AlsoInTransaction | None = None,
    ) -> bool:
        """Store (or replace) an OAuth install of the add-on `app`, active. True if the
        store was installed before (a reinstall keeps its id and first install time).
        A store is one install: reinstalled under another app, it moves there (its old
        app's token is replaced by the new one), and the audit row names both apps."""

        async def work(session: AsyncSession) -> bool:
            previous = await repository.upsert(
                session,
                self._keyring,
                store_id=grant.store_id,
                store_domain=grant.store_domain,
                auth_method=AuthMethod.oauth,
                app=app,
                secret={
                    "access_token": grant.access_token.get_secret_value(),
                    **grant.extra_secrets,
                },
                scope=grant.scope,
                timezone=grant.timezone,
                user=grant.user,
                billing=grant.billing_address,
                now=utcnow(),
            )
            existed = previous is not None
            if also is not None:
                await also(session)
            _record_install(session, existed, actor, grant.store_id, request_id,
                            grant.store_domain, AuthMethod.oauth, app, previous)  # fmt: skip
            await _emit_installed(session, existed, grant.store_id, actor)
            return existed

        return await self._change(grant.store_id, work)

    async def register_api_key(
        self,
        *,
        store_id: str,
        store_domain: str,
        username: str,
        api_key: str,
        actor: str,
        request_id: str | None,
        app: str = DEFAULT_APP,
    ) -> Install:
        """Store (or replace) an API-key install, active; its key is sealed like a token.
        It names an app only for `apps` claims (no client id goes with an API key)."""

        async def work(session: AsyncSession) -> Install:
            previous = await repository.upsert(
                session,
                self._keyring,
                store_id=store_id,
                store_domain=store_domain,
                auth_method=AuthMethod.api_key,
                secret={"username": username, "api_key": api_key},
                app=app,
            )
            existed = previous is not None
            _record_install(session, existed, actor, store_id, request_id,
                            store_domain, AuthMethod.api_key, app, previous)  # fmt: skip
            return await _emit_installed(session, existed, store_id, actor)

        return await self._change(store_id, work)

    async def revoke(self, store_id: str, *, actor: str, request_id: str | None) -> Install:
        """Destroy the stored secret and the merchant's profile (user, billing address;
        with a profile retention, kept that many days) and mark the install revoked.
        Idempotent: revoking a revoked store changes nothing and audits nothing."""

        def work(with_trail: bool) -> Callable[[AsyncSession], Awaitable[Install]]:
            async def revoke(session: AsyncSession) -> Install:
                install = await repository.require(session, store_id)
                if install.status == InstallStatus.revoked:
                    return install
                install = await repository.revoke(
                    session, store_id, keep_profile=self._profile_days > 0
                )
                await notify_tokens.kill(session, store_id)  # its notification URL too
                if with_trail:
                    record(session, "install.revoked", actor=actor, store_id=store_id,
                           request_id=request_id)  # fmt: skip
                    await emit(session, "install.revoked", install, actor)
                return install

            return revoke

        try:
            return await self._change(store_id, work(with_trail=True))
        except (DBAPIError, ServiceUnavailable) as exc:
            # The audit row or the event could not be written (an exhausted id, a full
            # disk, a statement timeout, a tampered table): a revoke must never fail for
            # its trail, so the store is revoked without it, and the loss is logged and
            # counted. A failure of the revoke itself (the database is gone) fails this
            # second transaction too, and that is what the caller gets.
            install = await self._change(store_id, work(with_trail=False))
            log.error(
                "store revoked without its audit row and event: writing them failed",
                extra={"fields": {"store_id": store_id, "actor": actor,
                                  "error": _error_name(exc)}},
            )  # fmt: skip
            metrics.series(metrics.AUDIT_FAILURES, "install.revoked").inc()
            return install

    async def forget_revoked_profiles(
        self, *, batch_size: int = PROFILE_BATCH, pause_seconds: float = 0.05
    ) -> int:
        """Destroy the profiles revoked installs still hold past their retention, batch
        by batch; how many. With no retention that is any a revoke left: one by a replica
        of the previous version during a rolling upgrade. Not a change a cached copy or
        the audit log cares about (no status, no secret): no change number, no audit row."""
        revoked_before = utcnow() - timedelta(days=self._profile_days)
        total = 0
        while True:
            cleared = await run_transaction(
                self._sessionmaker,
                lambda s: repository.forget_revoked_profiles(s, revoked_before, batch_size),
            )
            total += cleared
            if cleared < batch_size:
                break
            await asyncio.sleep(pause_seconds)  # short transactions, room for the rest
        if total:
            log.info(
                "profiles of revoked installs destroyed",
                extra={"fields": {"installs": total, "revoked_before": revoked_before.isoformat()}},
            )
        return total

    async def mark_reauth_required(
        self,
        store_id: str,
        *,
        actor: str,
        request_id: str | None,
        action: str,
        upstream_status: int,
        token_fingerprint: str | None,
    ) -> bool:
        """Neto refused the store's credentials: flag the store for operators. Audited
        once, when the status changes. `token_fingerprint` names the refused token: a
        store reinstalled since (another token) is left active."""

        async def work(session: AsyncSession) -> bool:
            changed = await repository.set_status(
                session, store_id, InstallStatus.reauth_required,
                token_fingerprint=token_fingerprint,
            )  # fmt: skip
            if changed:
                record(session, "install.reauth_required", actor=actor, store_id=store_id,
                       request_id=request_id, action=action,
                       upstream_status=upstream_status)  # fmt: skip
                install = await repository.require(session, store_id)
                await emit(session, "install.reauth_required", install, actor)
            return changed

        return await self._change(store_id, work)

    async def confirm_refusal(
        self,
        creds: StoreCredentials,
        *,
        actor: str,
        request_id: str | None,
        action: str,
        upstream_status: int,
    ) -> bool:
        """Neto refused one call made with these credentials: flag the store only if the
        cheap verify read, with the same credentials, is refused too, in Neto's own
        envelope (a firewall's or CDN's 403 page says nothing of the credentials). A refusal of one
        caller's request (a web firewall in front of the store that dislikes its body)
        says nothing about the credentials, and must not lock the store for every other
        caller. At most one confirming read per store per CONFIRM_INTERVAL_SECONDS on
        this replica, so no caller can turn its refusals into a stream of reads. True if
        the store was flagged by this call."""
        if not self._confirmations.admit(creds.store_id):
            return False
        try:
            answer = await self._upstream.call(creds, VERIFY_ACTION, b"{}", request_id=request_id)
        except BrokerError:
            return False  # unreachable, rate-limited: nothing confirmed
        if not neto_refused(answer.status, answer.body):
            return False  # accepted, or a firewall's page: nothing said of the credentials
        return await self.mark_reauth_required(
            creds.store_id, actor=actor, request_id=request_id, action=action,
            upstream_status=upstream_status, token_fingerprint=credentials_fingerprint(creds),
        )  # fmt: skip

    async def verify(
        self,
        store_id: str,
        *,
        actor: str,
        request_id: str | None,
        audit_unchanged_ok: bool = True,
    ) -> VerifyOutcome:
        """Send the cheap verify read with the stored credentials and apply what Neto's
        answer says: accepted makes the store active (also after `reauth_required`),
        refused makes it `reauth_required`, anything else changes nothing. Every verify
        is audited (`install.verified`), except, with `audit_unchanged_ok=False`, one
        that found the store healthy and changed nothing (the health sweep: a row per
        store per day would say nothing). No transaction is open while Neto is called."""
        # Straight from the database, not the cache: the operator wants the current state.
        async with self._sessionmaker() as session:
            install = await repository.require(session, store_id)
        if install.status == InstallStatus.revoked:
            raise StoreRevoked()
        creds = open_credentials(self._keyring, install, self._client_ids.get(install.app))
        upstream_status: int | None = None
        new_status: InstallStatus | None = None
        try:
            # Sent without its app's client id, the token would be refused and the store
            # flagged for what is the broker's configuration: reported, nothing changed.
            require_client(creds)
            answer = await self._upstream.call(creds, VERIFY_ACTION, b"{}", request_id=request_id)
        except BrokerError as exc:
            ok, detail = False, f"{exc.code}: {exc.detail}"
        else:
            upstream_status = answer.status
            ok, new_status, detail = verdict(answer.status, answer.body)
        refused = new_status == InstallStatus.reauth_required

        async def work(session: AsyncSession) -> VerifyOutcome:
            changed = False
            if new_status is not None:
                # Only if the install still holds the token that was verified.
                changed = await repository.set_status(
                    session, store_id, new_status, token_fingerprint=install.token_fingerprint
                )
            status = new_status.value if new_status is not None else install.status
            if ok and not changed and not audit_unchanged_ok:
                return VerifyOutcome(ok, status, upstream_status, detail, changed, refused)
            record(session, "install.verified", actor=actor, store_id=store_id,
                   request_id=request_id, ok=ok, upstream_status=upstream_status,
                   status=status, changed=changed)  # fmt: skip
            if changed:
                kind = "install.reactivated" if new_status == InstallStatus.active else (
                    "install.reauth_required")  # fmt: skip
                await emit(session, kind, await repository.require(session, store_id), actor)
            return VerifyOutcome(ok, status, upstream_status, detail, changed, refused)

        return await self._change(store_id, work)


async def _emit_installed(
    session: AsyncSession, existed: bool, store_id: str, actor: str
) -> Install:
    install = await repository.require(session, store_id)
    await emit(session, "install.reinstalled" if existed else "install.created", install, actor)
    return install


def require_client(creds: StoreCredentials) -> None:
    """OAuthNotConfigured (503) for an OAuth store whose add-on is not configured: its
    token goes out with its own app's client id or not at all."""
    if creds.client_missing:
        raise OAuthNotConfigured(
            f"The Neto add-on {creds.app!r} this store installed is not configured on this "
            "broker (BROKER_NETO_APPS), so its token cannot be used."
        )


def _record_install(
    session: AsyncSession,
    existed: bool,
    actor: str,
    store_id: str,
    request_id: str | None,
    store_domain: str,
    auth_method: AuthMethod,
    app: str,
    previous_app: str | None,
) -> None:
    moved = {"previous_app": previous_app} if previous_app not in (None, app) else {}
    record(
        session,
        "install.reinstalled" if existed else "install.created",
        actor=actor,
        store_id=store_id,
        request_id=request_id,
        store_domain=store_domain,
        auth_method=auth_method.value,
        app=app,
        **moved,
    )


def _error_name(exc: BaseException) -> str:
    """The driver's exception class (never its message: it may quote bound values)."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc.__cause__
    return type(cause or exc).__name__
