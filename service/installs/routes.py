"""Installs for operators: list, inspect, register API-key stores, verify, revoke.

Every change goes through the install service (`service.py`); these routes only read."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from service.errors import BadRequest
from service.installs import queries, repository
from service.installs.models import Install, StatusName
from service.installs.schemas import (
    ApiKeyInstall,
    InstallDetail,
    InstallPage,
    InstallSummary,
    StoreBudgetView,
    VerifyResult,
)
from service.installs.sealing import open_profile
from service.neto.actions import VERIFY_ACTION
from service.neto.apps import APP_NAME_MAX_LENGTH, APP_NAME_PATTERN, DEFAULT_APP
from service.replicas.budget import store_budget
from service.security.crypto import KeyRing
from service.security.domains import normalize_store_domain
from service.services import services
from service.web.api import ERRORS, NOT_FOUND, PLAIN_TEXT, ErrorBody, StoreId, error, no_store
from service.web.cursors import decode_cursor, encode_cursor, split_page
from service.web.deps import Caller, SessionDep, request_id, require_scope

router = APIRouter(prefix="/installs", tags=["installs"], dependencies=[Depends(no_store)])


def install_cursor(install: Install) -> str:
    return encode_cursor(install.installed_at.isoformat(), install.store_id)


def visible_apps(caller: Caller, app: str | None) -> set[str] | None:
    """The add-ons a listing covers: the one asked for (if the token's `apps` claim
    grants it), else those the claim names; None: every add-on."""
    if app is not None:
        return {caller.granted_app(app)}
    if caller.apps is None or "*" in caller.apps:
        return None
    return set(caller.apps)


def install_key(cursor: str) -> tuple[datetime, str]:
    at, store_id = decode_cursor(cursor, 2)
    try:
        parsed = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or not isinstance(store_id, str):
        raise BadRequest("The cursor is not one this API issued.")
    return parsed, store_id


async def detail_of(
    install: Install, keyring: KeyRing, session: AsyncSession, configured_budget: int
) -> InstallDetail:
    profile = open_profile(keyring, install)
    budget = await store_budget(session, install.store_id, configured_budget)
    used = await queries.last_used(session, [install.store_id])
    return InstallDetail(
        store_id=install.store_id,
        store_domain=install.store_domain,
        auth_method=install.auth_method,
        status=install.status,
        app=install.app,
        installed_at=install.installed_at,
        updated_at=install.updated_at,
        last_used_at=used.get(install.store_id),
        scope=install.scope,
        timezone=install.timezone,
        user=profile.user,
        billing_address=profile.billing,
        secret_readable=profile.readable,
        revoked_at=install.revoked_at,
        token_fingerprint=install.token_fingerprint,
        budget=StoreBudgetView(
            rate_per_minute=budget.per_minute,
            learned=budget.learned,
            last_rate_limited_at=budget.last_rate_limited_at,
            paused_until=budget.paused_until,
        ),
    )


@router.post(
    "/api-key",
    status_code=201,
    summary="Register a store that uses a Neto API key",
    responses={**ERRORS, 400: {"model": ErrorBody}},
)
async def register_api_key(
    request: Request,
    body: ApiKeyInstall,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> InstallDetail:
    """Stores (or replaces) an API-key store; its key is sealed like an OAuth token, and
    bundles and invoke work for it the same way."""
    domain = normalize_store_domain(body.store_domain)
    request.state.store_id = body.store_id
    app = services(request)
    neto_app = caller.granted_app(body.app)
    if neto_app != DEFAULT_APP and neto_app not in app.settings.apps:
        raise BadRequest(f"No Neto add-on named {neto_app!r} is configured (BROKER_NETO_APPS).")
    install = await app.installs.register_api_key(
        store_id=body.store_id,
        store_domain=domain,
        username=body.username,
        api_key=body.api_key.get_secret_value(),
        actor=caller.sub,
        request_id=request_id(request),
        app=neto_app,
    )
    async with app.sessionmaker() as session:
        return await detail_of(install, app.keyring, session, app.settings.store_rate_per_minute)


@router.get("", summary="List installs, newest first", responses=ERRORS)
async def list_installs(
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:read"))],
    status: StatusName | None = None,
    q: Annotated[
        str | None,
        Query(max_length=253, pattern=PLAIN_TEXT, description="store id or domain substring"),
    ] = None,
    app: Annotated[
        str | None,
        Query(
            max_length=APP_NAME_MAX_LENGTH,
            pattern=APP_NAME_PATTERN,
            description="only installs of this Neto add-on (`default`, or a name in "
            "BROKER_NETO_APPS)",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> InstallPage:
    """Installs newest first. Pages are keyed on (install time, store id), so installs
    added while paging neither repeat nor hide others. A token with an `apps` claim
    sees its add-ons' installs only (asking for another's is 403 `forbidden`)."""
    after = install_key(cursor) if cursor else None
    apps = visible_apps(caller, app)
    rows = await queries.page(session, status=status, q=q, after=after, limit=limit + 1, apps=apps)
    page, next_cursor = split_page(rows, limit, install_cursor)
    used = await queries.last_used(session, [row.store_id for row in page])
    items = [InstallSummary.model_validate(row, from_attributes=True) for row in page]
    for item in items:
        item.last_used_at = used.get(item.store_id)
    return InstallPage(items=items, next_cursor=next_cursor)


@router.get("/{store_id}", summary="One install, for operators", responses={**ERRORS, **NOT_FOUND})
async def get_install(
    request: Request,
    store_id: StoreId,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:read"))],
) -> InstallDetail:
    """Everything an operator needs about a store: status, scope, user, billing address,
    times, the token's fingerprint, and the budget the broker allows itself for the store
    (lowered after Neto answers 429). Never the token."""
    request.state.store_id = store_id
    install = await repository.require(session, store_id)
    caller.require_app(install.app)
    app = services(request)
    return await detail_of(install, app.keyring, session, app.settings.store_rate_per_minute)


@router.delete("/{store_id}", summary="Revoke an install", responses={**ERRORS, **NOT_FOUND})
async def revoke_install(
    request: Request,
    store_id: StoreId,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> InstallDetail:
    """Destroys the stored secret (token or API key) and marks the store `revoked`; the
    user and billing address stay for the record. Bundles and invokes for it answer 410
    `store_revoked` on this replica at once and on every other within
    BROKER_STORE_CACHE_SECONDS. Revoking a revoked store changes nothing. To use the store
    again, the merchant reinstalls (or an operator re-registers its API key)."""
    request.state.store_id = store_id
    app = services(request)
    install = await app.installs.revoke(store_id, actor=caller.sub, request_id=request_id(request))
    async with app.sessionmaker() as session:
        return await detail_of(install, app.keyring, session, app.settings.store_rate_per_minute)


@router.post(
    "/{store_id}/verify",
    summary="Check the stored credentials against Neto",
    responses={
        **ERRORS,
        **NOT_FOUND,
        410: error("The install was revoked: nothing to verify"),
    },
)
async def verify_install(
    request: Request,
    store_id: StoreId,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> VerifyResult:
    """Sends one cheap read (GetCurrencySettings) to the store's Neto API with the stored
    credentials and reports the outcome. Neto accepting them makes the store `active`
    (also after `reauth_required`); a 401/403 makes it `reauth_required`. Any other
    failure (unreachable, timeout, rate limit, 5xx) is reported and changes nothing.
    Every verify is audited (`install.verified`)."""
    request.state.store_id = store_id
    request.state.action = VERIFY_ACTION
    outcome = await services(request).installs.verify(
        store_id, actor=caller.sub, request_id=request_id(request)
    )
    return VerifyResult(
        store_id=store_id,
        ok=outcome.ok,
        status=outcome.status,
        upstream_status=outcome.upstream_status,
        detail=outcome.detail,
    )
