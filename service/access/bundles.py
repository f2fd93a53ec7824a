"""Credential bundles for internal callers."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.access.pipeline import usable_store
from service.access.schemas import Bundle
from service.db import utcnow
from service.services import services
from service.web import metrics
from service.web.api import ERRORS, StoreId, error
from service.web.deps import BEARER_SECURITY, authenticate, request_id
from service.web.lean import store_id as lean_store_id
from service.web.responses import FastJSONResponse

router = APIRouter(tags=["credentials"])
PATH = "/credentials/{store_id}"


def _zulu(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@router.get(
    PATH,
    summary="A short-lived credential bundle for one store",
    response_model=Bundle,
    responses={
        **ERRORS,
        404: error("No install for this store"),
        409: error("The store must be re-authorised"),
        410: error("The install was revoked"),
        500: error(
            "`store_secret_unreadable`: the stored secret does not open with "
            "the configured keys (tampered with or copied from another row)"
        ),
    },
    openapi_extra=BEARER_SECURITY,
)
async def credentials(request: Request, store_id: StoreId) -> JSONResponse:
    """The store's API URL and auth headers, valid for BROKER_BUNDLE_TTL_SECONDS. Every
    bundle is recorded in the audit log (caller, store, bundle id; never the secret)."""
    # The hot path: served by `serve` below, one function per step (docs/performance.md).
    request.state.store_id = store_id  # the access log names the store even when refused
    caller = authenticate(request, "credentials:read")
    caller.require_store(store_id)
    creds = await usable_store(request, store_id, caller)
    app = services(request)
    bundle_id = "bnd_" + secrets.token_urlsafe(16)
    # A revoke that commits first wins: StoreRevoked (410), no bundle.
    await app.audit_writer.write(
        "bundle.issued",
        actor=caller.sub,
        store_id=store_id,
        request_id=request_id(request),
        bundle_id=bundle_id,
    )
    now = utcnow().replace(microsecond=0)
    body = {
        "bundle_id": bundle_id,
        "store_id": creds.store_id,
        "store_domain": creds.store_domain,
        "auth_method": creds.auth_method,
        "api_url": app.api_urls.url_for(creds.store_domain),
        "headers": creds.headers,
        "issued_at": _zulu(now),
        "expires_at": _zulu(now + timedelta(seconds=app.settings.bundle_ttl_seconds)),
    }
    metrics.series(metrics.BUNDLES, creds.auth_method).inc()
    return FastJSONResponse(body, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


async def serve(request: Request) -> JSONResponse:
    """`credentials` as a lean route (service/web/lean.py)."""
    return await credentials(request, lean_store_id(request))
