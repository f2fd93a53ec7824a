"""`POST /installs/{store_id}/verify`: does Neto still accept the stored credentials?"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from service import audit, stores
from service.api.deps import KeyRingDep, SettingsDep, request_id, require_scope
from service.api.installs import ERRORS, NOT_FOUND, StoreId
from service.db import SessionDep
from service.errors import BrokerError, StoreRevoked
from service.models import InstallStatus
from service.neto.actions import VERIFY_ACTION
from service.neto.upstream import UpstreamClient
from service.schemas import ErrorBody, VerifyResult
from service.security.callers import Caller

router = APIRouter(prefix="/installs", tags=["installs"])


@router.post(
    "/{store_id}/verify",
    summary="Check the stored credentials against Neto",
    responses={
        **ERRORS,
        **NOT_FOUND,
        410: {"model": ErrorBody, "description": "The install was revoked: nothing to verify"},
    },
)
async def verify_install(
    request: Request,
    store_id: StoreId,
    session: SessionDep,
    keyring: KeyRingDep,
    settings: SettingsDep,
    caller: Annotated[Caller, Depends(require_scope("installs:admin"))],
) -> VerifyResult:
    """Sends one cheap read (GetCurrencySettings) to the store's Neto API with the stored
    credentials and reports the outcome. Neto accepting them makes the store `active`
    (also after `reauth_required`); a 401/403 makes it `reauth_required`. Any other
    failure (unreachable, timeout, rate limit, 5xx) is reported and changes nothing.
    Every verify is audited (`install.verified`)."""
    request.state.store_id = store_id
    request.state.action = VERIFY_ACTION
    # Straight from the database, not the cache: the operator wants the current state.
    install = await stores.require(session, store_id)
    if install.status == InstallStatus.revoked:
        raise StoreRevoked()
    creds = stores.open_credentials(keyring, install, settings.neto_client_id)
    upstream: UpstreamClient = request.app.state.upstream
    rid = request_id(request)
    upstream_status: int | None = None
    new_status: InstallStatus | None = None
    try:
        answer = await upstream.call(creds, VERIFY_ACTION, b"{}", request_id=rid)
    except BrokerError as exc:
        ok, detail = False, f"{exc.code}: {exc.detail}"
    else:
        upstream_status = answer.status
        if answer.status in (401, 403):
            ok, new_status = False, InstallStatus.reauth_required
            detail = f"Neto refused the stored credentials (HTTP {answer.status})."
        elif 200 <= answer.status < 300:
            ok, new_status = True, InstallStatus.active
            detail = "Neto accepted the stored credentials."
        else:
            ok, detail = False, f"Neto answered HTTP {answer.status}; status left unchanged."
    changed = False
    if new_status is not None:
        # Only if the install still holds the token that was verified (not reinstalled).
        changed = await stores.set_status(
            session, store_id, new_status, token_fingerprint=install.token_fingerprint
        )
    status = new_status.value if new_status is not None else install.status
    audit.record(
        session, "install.verified", actor=caller.sub, store_id=store_id, request_id=rid,
        ok=ok, upstream_status=upstream_status, status=status, changed=changed,
    )  # fmt: skip
    # Commit before dropping the cached copy, so no request can re-cache the old state.
    await session.commit()
    request.app.state.store_cache.invalidate(store_id)
    return VerifyResult(
        store_id=store_id,
        ok=ok,
        status=status,
        upstream_status=upstream_status,
        detail=detail,
    )
