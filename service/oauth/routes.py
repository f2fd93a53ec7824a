"""The install routes: the merchant-facing OAuth pair, which answers HTML (a browser is on
the other end; errors are rendered as pages by the app's error handler), and the
app-initiated start, which answers JSON."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from service.errors import BadRequest, InstallDenied
from service.oauth import flow
from service.oauth.schemas import InstallStart, InstallStarted
from service.oauth.throttle import address_prefix, client_address
from service.services import services
from service.web.api import ERRORS, ErrorBody
from service.web.deps import Caller, SessionDep, request_id, require_scope
from service.web.responses import PAGE_HEADERS, html_page

router = APIRouter()

_CODE_RE = re.compile(r"^[a-z_]{1,64}$")
APP_PARAM = (
    "The Neto add-on (a name in BROKER_NETO_APPS); absent: `default`, the add-on of "
    "BROKER_NETO_CLIENT_ID. An unknown name is a 400 page."
)


def _throttle(request: Request) -> str:
    """The per-address limit of the anonymous routes (oauth/throttle.py); returns the
    client's address prefix, the unit it counts."""
    app = services(request)
    prefix = address_prefix(client_address(request, app.settings.trusted_proxies))
    app.install_limiter.admit(prefix)
    return prefix


def _single(request: Request, *names: str) -> None:
    """Refuse repeated query parameters: which copy would win is an attacker's choice."""
    for name in names:
        if len(request.query_params.getlist(name)) > 1:
            raise BadRequest(f"The query parameter {name!r} appears more than once.")


@router.post(
    "/installs/start",
    tags=["installs"],
    status_code=201,
    summary="Start an OAuth install from the company's app",
    responses={
        **ERRORS,
        400: {"model": ErrorBody},
        429: {"model": ErrorBody, "description": "This caller has too many installs in flight"},
        503: {"model": ErrorBody},
    },
)
async def start_install(
    request: Request,
    body: InstallStart,
    session: SessionDep,
    caller: Annotated[Caller, Depends(require_scope("installs:start"))],
) -> InstallStarted:
    """Creates a pending install and returns the Neto URL to send the merchant to."""
    app = services(request)
    started = await flow.start(
        session,
        app.settings,
        app.keyring,
        raw_domain=body.store_domain,
        return_url=body.return_url,
        request_id=request_id(request),
        caller=caller.sub,
        app_state=body.app_state,
        app=caller.granted_app(body.app),
    )
    return InstallStarted(authorize_url=started.authorize_url, state_expires_at=started.expires_at)


@router.get(
    "/oauth/install",
    tags=["oauth"],
    summary="Start an install from Neto's control panel",
    response_class=RedirectResponse,
    status_code=302,
    responses={
        302: {"description": "Redirect to Neto's authorise page"},
        429: {"description": "Too many requests from this client address (HTML page)"},
        503: {"description": "Too many installs in progress (HTML page)"},
    },
)
async def install(
    request: Request,
    session: SessionDep,
    store_domain: Annotated[str, Query(max_length=1024)],
    app_name: Annotated[
        str | None, Query(alias="app", max_length=64, description=APP_PARAM)
    ] = None,
) -> Response:
    """Neto sends the merchant here when they install the add-on. The broker creates a
    pending install and sends the merchant on to Neto to approve it. With several
    add-ons (BROKER_NETO_APPS), each add-on's install URL names it (`app`); the state
    binds it, so the code Neto returns is exchanged with that add-on's secret only."""
    origin = _throttle(request)
    _single(request, "store_domain", "app")
    app = services(request)
    started = await flow.start(
        session,
        app.settings,
        app.keyring,
        raw_domain=store_domain,
        return_url=None,
        request_id=request_id(request),
        origin=origin,  # this route, and only it, starts anonymous installs
        app=app_name,
    )
    return RedirectResponse(started.authorize_url, status_code=302, headers=PAGE_HEADERS)


@router.get(
    "/oauth/callback",
    tags=["oauth"],
    summary="Neto returns the merchant here with a code",
    response_class=HTMLResponse,
    responses={302: {"description": "Redirect to the install's return URL"}},
)
async def callback(
    request: Request,
    state: Annotated[str | None, Query(max_length=512)] = None,
    code: Annotated[str | None, Query(max_length=2048)] = None,
    error: Annotated[str | None, Query(max_length=256)] = None,
    app_name: Annotated[
        str | None, Query(alias="app", max_length=64, description=APP_PARAM)
    ] = None,
) -> Response:
    """Checks the `state`, exchanges the code once, stores the install, and sends the
    merchant to the install's return URL or shows a confirmation page. Each add-on's
    callback names it (`?app=`, none for `default`): a state started for another add-on
    is refused, and its code is never exchanged here."""
    _throttle(request)
    _single(request, "state", "code", "error", "app")
    if error is not None:
        shown = error if _CODE_RE.match(error) else "error"
        raise InstallDenied(
            f"Neto reported '{shown}': the add-on was not approved. To connect the store, "
            "start the install again from your Neto control panel and approve it."
        )
    if not state or not code:
        raise BadRequest("The link is missing its code or state. Start the install again.")
    app = services(request)
    done = await flow.complete(
        app.sessionmaker, app.http, app.settings, app.installs, app.keyring,
        state=state, code=code, app=app_name,
        request_id=request_id(request),
    )  # fmt: skip
    request.state.store_id = done.store_id
    if done.return_url:
        echo = {"app_state": done.app_state} if done.app_state is not None else {}
        target = flow.add_query(done.return_url, store_id=done.store_id, status="installed", **echo)
        return RedirectResponse(target, status_code=302, headers=PAGE_HEADERS)
    page = html_page(
        "Your Neto store is connected",
        f"{done.store_domain} is now connected. You can close this window.",
        ok=True,
    )
    return HTMLResponse(page, headers=PAGE_HEADERS)
