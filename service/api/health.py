"""Liveness, readiness and metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is up")
async def healthz() -> dict[str, str]:
    """Answers 200 while the process runs; it checks nothing else."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="The database answers and keys are loaded",
    responses={503: {"description": "Not ready: the database does not answer"}},
)
async def readyz(request: Request) -> Response:
    """200 when the database answers a query within two seconds and keys are loaded."""
    state = request.app.state
    checks = {"keys": getattr(state, "keyring", None) is not None, "database": False}
    try:
        async with asyncio.timeout(2):
            async with state.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        checks["database"] = True
    except Exception:  # noqa: S110  (any failure means "not ready"; the probe says which)
        pass
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not_ready", "checks": checks}
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


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics() -> Response:
    """Prometheus text exposition format."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
