"""Merchant-facing OAuth routes. They answer HTML (never JSON) because a browser is on the
other end; errors are rendered as pages by the app's error handler."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service import install_flow
from service.api.deps import HttpDep, KeyRingDep, SessionMakerDep, SettingsDep, request_id
from service.db import SessionDep
from service.errors import BadRequest, InstallDenied
from service.responses import PAGE_HEADERS, html_page

router = APIRouter(prefix="/oauth", tags=["oauth"])

_CODE_RE = re.compile(r"^[a-z_]{1,64}$")


def _single(request: Request, *names: str) -> None:
    """Refuse repeated query parameters: which copy would win is an attacker's choice."""
    for name in names:
        if len(request.query_params.getlist(name)) > 1:
            raise BadRequest(f"The query parameter {name!r} appears more than once.")


@router.get(
    "/install",
    summary="Start an install from Neto's control panel",
    response_class=RedirectResponse,
    status_code=302,
    responses={302: {"description": "Redirect to Neto's authorise page"}},
)
async def install(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store_domain: Annotated[str, Query(max_length=1024)],
) -> Response:
    """Neto sends the merchant here when they install the add-on. The broker creates a
    pending install and sends the merchant on to Neto to approve it."""
    _single(request, "store_domain")
    started = await install_flow.start(
        session,
        settings,
        raw_domain=store_domain,
        return_url=None,
        initiated_by="neto",
        request_id=request_id(request),
    )
    return RedirectResponse(started.authorize_url, status_code=302, headers=PAGE_HEADERS)


@router.get(
    "/callback",
    summary="Neto returns the merchant here with a code",
    response_class=HTMLResponse,
    responses={302: {"description": "Redirect to the install's return URL"}},
)
async def callback(
    request: Request,
    settings: SettingsDep,
    keyring: KeyRingDep,
    http: HttpDep,
    sessionmaker: SessionMakerDep,
    state: Annotated[str | None, Query(max_length=512)] = None,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
) -> Response:
    """Checks the `state`, exchanges the code once, stores the install, and sends the
    merchant to the install's return URL or shows a confirmation page."""
    _single(request, "state", "code", "error")
    if error is not None:
        shown = error if _CODE_RE.match(error) else "error"
        raise InstallDenied(
            f"Neto reported '{shown}': the add-on was not approved. To connect the store, "
            "start the install again from your Neto control panel and approve it."
        )
    if not state or not code:
        raise BadRequest("The link is missing its code or state. Start the install again.")
    done = await install_flow.complete(
        sessionmaker, http, settings, keyring, state=state, code=code,
        request_id=request_id(request),
    )  # fmt: skip
    request.state.store_id = done.store_id
    # A reinstall replaced the token: stop serving the old one from this replica's cache.
    request.app.state.store_cache.invalidate(done.store_id)
    if done.return_url:
        target = install_flow.add_query(done.return_url, store_id=done.store_id, status="installed")
        return RedirectResponse(target, status_code=302, headers=PAGE_HEADERS)
    page = html_page(
        "Your Neto store is connected",
        f"{done.store_domain} is now connected. You can close this window.",
        ok=True,
    )
    return HTMLResponse(page, headers=PAGE_HEADERS)
