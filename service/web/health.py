"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio
import hmac
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import text

from service import sequences
from service.errors import Unauthorized
from service.installs import queries
from service.oauth.throttle import address_rule
from service.services import services
from service.web import metrics
from service.web.api import ErrorBody
from service.web.deps import SessionDep

log = logging.getLogger("broker.metrics")
router = APIRouter(tags=["health"])

METRICS_EXAMPLE = """\
# HELP broker_requests_total HTTP requests by route and status
# TYPE broker_requests_total counter
broker_requests_total{method="GET",route="/credentials/{store_id}",status="200"} 1027.0
# HELP broker_installs Installs by status
# TYPE broker_installs gauge
broker_installs{status="active"} 412.0
broker_installs{status="reauth_required"} 3.0
broker_installs{status="revoked"} 17.0
"""


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """Answers 200 while the process runs; it checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers, keys are loaded, the store budget's share is known",
    responses={
        503: {
            "description": "Not ready: the database does not answer, or the replica "
            "is not yet counted in the stores' shared budget"
        }
    },
)
async def readyz(request: Request) -> Response:
    """200 when the database answers a query within two seconds, keys are loaded, and this
    replica may spend its share of the stores' budget (a new replica waits until the
    others count it, a couple of heartbeats; so does one whose heartbeat fails). While
    not ready, a load balancer sends it no traffic, so callers never meet its hold."""
    app = services(request)
    checks = {
        "keys": app.keyring is not None,
        "database": False,
        "budget": app.upstream.limits.held_for() == 0,
    }
    try:
        async with asyncio.timeout(2):
            async with app.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:  # noqa: S110  (any failure means "not ready"; the probe says which)
        pass
    ready = all(checks.values())
    body: dict[str, object] = {
        "status": "ready" if ready else "not_ready",
        "checks": checks,
        # Not a check: which address the install limit counts (BROKER_TRUSTED_PROXIES).
        "client_address": address_rule(app.settings.trusted_proxies),
    }
    if not ready:
        body.update(
            error="service_unavailable",
            detail="The broker is not ready: "
            + ", ".join(name for name, ok in checks.items() if not ok)
            + " failing.",
            request_id=request.state.request_id,
        )
        return JSONResponse(
            body, status_code=503, headers={"X-Broker-Error": "service_unavailable"}
        )
    return JSONResponse(body)


def _require_scrape_token(request: Request) -> None:
    """With BROKER_METRICS_TOKEN set, only a scraper presenting it reads /metrics."""
    expected = services(request).settings.metrics_token
    if expected is None:
        return
    kind, _, given = request.headers.get("authorization", "").partition(" ")
    if kind.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.get_secret_value().encode()
    ):
        raise Unauthorized(
            "/metrics needs `Authorization: Bearer` with the scrape token (BROKER_METRICS_TOKEN).",
            headers={"WWW-Authenticate": "Bearer"},
        )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=PlainTextResponse,
    responses={
        200: {
            "description": "Prometheus text exposition format",
            "content": {"text/plain": {"example": METRICS_EXAMPLE}},
        },
        401: {
            "model": ErrorBody,
            "description": "BROKER_METRICS_TOKEN is set and the request does not carry it",
        },
    },
)
async def metrics_text(request: Request, session: SessionDep) -> Response:
    """Requests by route template and status with latency, upstream calls by action and
    outcome, bundles issued, rate-limit pauses, store-cache entries, and installs by status
    (read from the database at scrape time). With `--workers N` any worker reports all
    workers' sums. When BROKER_METRICS_TOKEN is set, the scraper sends it as
    `Authorization: Bearer <token>` (a fixed token, not a caller JWT)."""
    _require_scrape_token(request)
    for state, stores in services(request).upstream.limits.states().items():
        metrics.STORE_BUDGETS.labels(state).set(stores)
    try:
        async with asyncio.timeout(2):
            metrics.set_installs(await queries.count_by_status(session))
            for name, ratio in (await sequences.headroom(session)).items():
                metrics.ID_HEADROOM.labels(name).set(ratio)
    except Exception:
        # A database outage is exactly when the request metrics matter: serve them, and
        # leave the installs gauge at its last reading.
        log.warning("installs and id gauges not refreshed: the database did not answer")
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)
