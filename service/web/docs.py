"""Swagger UI served by the broker itself: no CDN, so it works on a closed network and
tells no third party what operators browse.

The assets are Swagger UI's own release files as shipped by the `fastapi-offline`
package (Swagger UI is Apache-2.0, SmartBear Software; fastapi-offline is MIT).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.errors import NotFound
from service.services import services

router = APIRouter(include_in_schema=False)

ASSETS_PATH = "/docs/static"
_ASSETS_DIR = Path(str(resources.files("fastapi_offline") / "static"))
# Only what the page loads; nothing else in the package directory is reachable.
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
# The page may talk to its own origin only: a stray CDN or validator URL is blocked by the
# browser, not merely absent. Swagger UI's start-up script is inline.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}

# Tag order and one-line descriptions, as Swagger UI groups the routes.
TAGS = [
    {"name": "installs", "description": "Operators: inspect, register and revoke installs."},
    {"name": "credentials", "description": "Internal services: short-lived credential bundles."},
    {"name": "invoke", "description": "Internal services: call Neto through the broker."},
    {
        "name": "neto",
        "description": "Existing Neto clients: Neto's own API protocol, pointed at the broker "
        "with a caller JWT as the key.",
    },
    {"name": "audit", "description": "Operators: who did what to which store."},
    {"name": "events", "description": "Internal services: install changes, in commit order."},
    {"name": "webhooks", "description": "Operators: push install changes to internal services."},
    {
        "name": "notifications",
        "description": "Neto: each store's own notifications, received once and fanned out as "
        "events (`/events`, webhooks).",
    },
    {"name": "oauth", "description": "Merchants' browsers: the Neto OAuth install flow."},
    {"name": "health", "description": "Probes and Prometheus metrics."},
]


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        # Bearer auth needs no OAuth2 redirect page.
        oauth2_redirect_url=None,
        swagger_ui_parameters={
            # Off unless BROKER_DOCS_PERSIST_AUTHORIZATION: the token then lives only in
            # the page's memory and a reload or closed tab forgets it.
            "persistAuthorization": services(request).settings.docs_persist_authorization,
            "validatorUrl": None,
            "displayRequestDuration": True,
        },
    )
    page.headers.update(_PAGE_HEADERS)
    return page


@router.get(ASSETS_PATH + "/{name}")
async def swagger_asset(name: str) -> FileResponse:
    media_type = _ASSETS.get(name)
    if media_type is None:
        raise NotFound()
    return FileResponse(
        _ASSETS_DIR / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
    )
