"""Installs: app-initiated OAuth starts, API-key registration, and the operator views."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from service import audit, install_flow, stores
from service.api.cursors import decode_cursor, encode_cursor
from service.api.deps import KeyRingDep, SettingsDep, request_id, require_scope
from service.db import SessionDep
from service.errors import BadRequest
from service.models import AuthMethod, Install, InstallStatus
from service.schemas import (
    ApiKeyInstall,
    ErrorBody,
    InstallDetail,
    InstallPage,
    InstallStart,
    InstallStarted,
    InstallSummary,
)
from service.security.callers import Caller
from service.security.crypto import KeyRing
from service.security.domains import normalize_store_domain


async def no_store(response: Response) -> None:
    """Operator answers carry merchants' names and addresses: no cache may keep them."""
    response.headers["Cache-Control"] = "no-store"


router = APIRouter(prefix="/installs", tags=["installs"], dependencies=[Depends(no_store)])

StoreId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
# Typed as FastAPI's `responses` parameter, so the dicts can be merged and passed on.
Responses = dict[int | str, dict[str, Any]]
ERRORS: Responses = {
    401: {"model": ErrorBody, "description": "Missing or invalid caller token"},
    403: {"model": ErrorBody, "description": "The token lacks the scope"},
}
NOT_FOUND: Responses = {404: {"model": ErrorBody, "description": "No install for this store"}}


def install_cursor(install: Install) -> str:
    return encode_cursor(install.installed_at.isoformat(), install.store_id)


def install_key(cursor: str) -> tuple[datetime, str]:
    at, store_id = decode_cursor(cursor, 2)
    try:
        parsed = datetime.fromisoformat(at) if isinstance(at, str) else None
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or not isinstance(store_id, str):
        raise BadRequest("The cursor is not one this API issued.")
    return parsed, store_id


def detail_of(install: Install, keyring: KeyRing) -> InstallDetail:
    profile = stores.open_profile(keyring, install)
    return InstallDetail(
        store_id=install.store_id,
        store_domain=install.store_domain,
        auth_method=install.auth_method,
        status=install.status,
        installed_at=install.installed_at,
        updated_at=install.updated_at,
        last_used_at=install.last_used_at,
        scope=install.scope,
        timezone=install.timezone,
        user=profile.user,
        billing_address=profile.billing,
        secret_readable=profile.readable,
        revoked_at=install.revoked_at,
        token_fingerprint=install.token_fingerprint,
    )


@router.post(
    "/start",
    status_code=201,
    summary="Start an OAuth install from the company's app",
    responses={**ERRORS, 400: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)
async def start_install(
    request: Request,
    body: InstallStart,
    session: SessionDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Depends(require_scope("installs:start"))],
) -> InstallStarted:
    """Creates a pending install and returns the Neto URL to send the merchant to."""
    started = await install_flow.start(
        session,
        settings,
        raw_domain=body.store_domain,
        return_url=body.return_url,
        initiated_by=caller.sub,
        request_id=request_id(request),
    )
    return InstallStarted(authorize_url=started.authorize_url, state_expires_at=started.expires_at)


@router.post(
    "/api-key",
    status_code=201,
    summary="Register a store that uses a Neto API key",
    responses={**ERRORS, 400: {"model": ErrorBody}},
)
async def register_api_key(
    request: Request,
    body: ApiKeyInstall,
    session: SessionDep,
    keyring: KeyRingDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> InstallDetail:
    """Stores (or replaces) an API-key store; its key is sealed like an OAuth token, and
    bundles and invoke work for it the same way."""
    domain = normalize_store_domain(body.store_domain)
    request.state.store_id = body.store_id
    existed = await stores.upsert(
        session,
        keyring,
        store_id=body.store_id,
        store_domain=domain,
        auth_method=AuthMethod.api_key,
        secret={"username": body.username, "api_key": body.api_key.get_secret_value()},
    )
    audit.record(
        session,
        "install.reinstalled" if existed else "install.created",
        actor=caller.sub,
        store_id=body.store_id,
        request_id=request_id(request),
        store_domain=domain,
        auth_method="api_key",
    )
    install = await stores.require(session, body.store_id)
    # Committed before the cached copy is dropped, so no request re-caches the old key.
    await session.commit()
    request.app.state.store_cache.invalidate(body.store_id)
    return detail_of(install, keyring)


@router.get("", summary="List installs, newest first", responses=ERRORS)
async def list_installs(
    session: SessionDep,
    _: Annotated[Caller, Depends(require_scope("installs:read"))],
    status: Literal["active", "reauth_required", "revoked"] | None = None,
    q: Annotated[
        str | None, Query(max_length=253, description="store id or domain substring")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> InstallPage:
    """Installs newest first. Pages are keyed on (install time, store id), so installs
    added while paging neither repeat nor hide others."""
    after = install_key(cursor) if cursor else None
    rows = await stores.page(session, status=status, q=q, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return InstallPage(
        items=[InstallSummary.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=install_cursor(rows[-1]) if more and rows else None,
    )


@router.get("/{store_id}", summary="One install, for operators", responses={**ERRORS, **NOT_FOUND})
async def get_install(
    request: Request,
    store_id: StoreId,
    session: SessionDep,
    keyring: KeyRingDep,
    _: Annotated[Caller, Depends(require_scope("installs:read"))],
) -> InstallDetail:
    """Everything an operator needs about a store: status, scope, user, billing address,
    times, and the token's fingerprint. Never the token."""
    request.state.store_id = store_id
    return detail_of(await stores.require(session, store_id), keyring)


@router.delete("/{store_id}", summary="Revoke an install", responses={**ERRORS, **NOT_FOUND})
async def revoke_install(
    request: Request,
    store_id: StoreId,
    session: SessionDep,
    keyring: KeyRingDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> InstallDetail:
    """Destroys the stored secret (token or API key) and marks the store `revoked`; the
    user and billing address stay for the record. Bundles and invokes for it answer 410
    `store_revoked` on this replica at once and on every other within
    BROKER_STORE_CACHE_SECONDS. Revoking a revoked store changes nothing. To use the store
    again, the merchant reinstalls (or an operator re-registers its API key)."""
    request.state.store_id = store_id
    existing = await stores.require(session, store_id)
    if existing.status == InstallStatus.revoked:
        # DELETE is idempotent: a second revoke changes nothing and audits nothing.
        return detail_of(existing, keyring)
    install = await stores.revoke(session, store_id)
    audit.record(
        session, "install.revoked", actor=caller.sub, store_id=store_id,
        request_id=request_id(request),
    )  # fmt: skip
    # Commit before dropping the cached copy, so no request can re-cache the old state.
    await session.commit()
    request.app.state.store_cache.invalidate(store_id)
    return detail_of(install, keyring)
