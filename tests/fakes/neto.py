"""A real HTTP fake of Neto: the OAuth server (authorise page, token endpoint) and the
store API (`POST /{store_domain}/do/WS/NetoAPI`), served by uvicorn on loopback.

Tests drive it through its attributes: `authorize()` issues a code like Neto would after
a merchant approves, `token_responses` / `api_responses` script the next answers, and
`token_requests` / `api_requests` record what the broker sent. `hold_api()` keeps store
API requests waiting once recorded, until `release_api()`; `api_arrived(n)` waits until n
have arrived: a test synchronises on the calls themselves, not on a sleep that a loaded
machine can outlast. `make demo` runs it as a local Neto emulator
(`python -m tests.fakes.neto`).
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

Handler = Callable[[Request], Awaitable[Response]]


@dataclass
class Seen:
    """One request as the fake received it."""

    path: str
    headers: dict[str, str]
    body: bytes
    form: dict[str, str] = field(default_factory=dict)
    at: float = field(default_factory=time.monotonic)  # when the whole request had arrived

    @property
    def action(self) -> str | None:
        return self.headers.get("netoapi_action")

    def json(self) -> Any:
        return json.loads(self.body)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (parsed by hand: no multipart dependency for a fake)."""
    return dict(parse_qsl((await request.body()).decode("utf-8", "replace")))


class FakeNeto:
    def __init__(self, client_id: str = "fake-client-id", client_secret: str = "x" * 40) -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        # Every add-on Neto knows (client id -> secret): `client_id` and, after
        # `add_client`, others (several add-ons in one broker). Reset to the first alone.
        self.clients: dict[str, str] = {client_id: client_secret}
        self.codes: dict[str, dict[str, Any]] = {}
        # code -> the client id it was issued to: like Neto, a code is exchanged only by
        # the add-on the merchant approved.
        self.code_clients: dict[str, str] = {}
        # store domain -> headers that authenticate against it
        self.credentials: dict[str, dict[str, str]] = {}
        self.token_responses: deque[Handler] = deque()
        self.api_responses: deque[Handler] = deque()
        self.token_requests: list[Seen] = []
        self.api_requests: list[Seen] = []
        self.api_delay = 0.0
        # Cleared by `hold_api()`: store API requests wait, once recorded, until it is set.
        self.api_gate = threading.Event()
        self.api_gate.set()
        # Request bodies answered 403 whatever the credentials (a web firewall in front of
        # a store that dislikes one caller's request).
        self.refused_bodies: set[bytes] = set()
        # Seconds the token endpoint waits before answering (widens race windows).
        self.token_delay = 0.0
        # Requests to any other path (e.g. where a redirect pointed): should stay empty.
        self.stray_requests: list[Seen] = []
        # Neto's budget as the merchant's other add-ons leave it: at most `hidden_limit`
        # answered calls per store in any `hidden_window` seconds, past it 429 (not counted).
        self.hidden_limit: int | None = None
        self.hidden_window = 60.0
        self.answered: dict[str, deque[float]] = {}
        self.rate_limited = 0
        self.lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/oauth/v2/auth", self.auth_page, methods=["GET"]),
                Route("/oauth/v2/approve", self.approve, methods=["POST"]),
                Route("/oauth/v2/token", self.token, methods=["POST"]),
                Route("/{store_domain}/do/WS/NetoAPI", self.store_api, methods=["POST"]),
                Route("/{path:path}", self.stray, methods=["GET", "POST", "PUT", "DELETE"]),
            ]
        )

    # -- what tests call -------------------------------------------------------------
    def reset(self) -> None:
        with self.lock:
            self.clients = {self.client_id: self.client_secret}
            self.codes.clear()
            self.code_clients.clear()
            self.credentials.clear()
            self.token_responses.clear()
            self.api_responses.clear()
            self.token_requests.clear()
            self.api_requests.clear()
            self.stray_requests.clear()
            self.refused_bodies.clear()
            self.api_delay = 0.0
            self.token_delay = 0.0
            self.api_gate.set()
            self.hidden_limit = None
            self.hidden_window = 60.0
            self.answered.clear()
            self.rate_limited = 0

    def authorize(
        self,
        store_domain: str,
        *,
        store_id: str = "N1001",
        access_token: str | None = None,
        client_id: str | None = None,
        **overrides: Any,
    ) -> str:
        """What Neto does when the merchant approves the add-on `client_id` (default: the
        first): issue a one-time code that only that add-on can exchange, for a token
        that the store API accepts with that add-on's client id only."""
        client_id = client_id or self.client_id
        code = "code_" + secrets.token_urlsafe(16)
        token = access_token or "tok_" + secrets.token_urlsafe(24)
        grant: dict[str, Any] = {
            "scope": "api user address",
            "store_id": store_id,
            "store_domain": store_domain,
            "store_timezone": "Australia/Brisbane",
            "access_token": token,
            "user": {
                "id": "u-77",
                "first_name": "Mia",
                "last_name": "Merchant",
                "email": f"owner@{store_domain}",
            },
            "billing_address": {
                "street1": "123 Sample St",
                "street2": "Level 3",
                "city": "Brisbane",
                "state": "Queensland",
                "post_code": "4000",
                "country_name": "Australia",
                "country_code": "AU",
            },
        }
        grant.update(overrides)
        with self.lock:
            self.codes[code] = grant
            self.code_clients[code] = client_id
            self.credentials[store_domain] = {
                "x_access_key": client_id,
                "x_secret_key": token,
            }
        return code

    def add_client(self, client_id: str, client_secret: str) -> None:
        """Another add-on Neto knows (until `reset()`)."""
        with self.lock:
            self.clients[client_id] = client_secret

    def hold_api(self) -> None:
        """Store API requests from now on are recorded, then wait for `release_api()`."""
        self.api_gate.clear()

    def release_api(self) -> None:
        self.api_gate.set()

    async def api_arrived(self, count: int, within: float = 15.0) -> list[Seen]:
        """Waits (in the test's loop) until `count` store API requests have arrived in all;
        returns them."""
        deadline = time.monotonic() + within
        while True:
            with self.lock:
                seen = list(self.api_requests)
            if len(seen) >= count:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(seen)} of {count} store API requests in {within} s")
            await asyncio.sleep(0.005)

    def add_api_key_store(self, store_domain: str, username: str, api_key: str) -> None:
        with self.lock:
            self.credentials[store_domain] = {"netoapi_username": username, "netoapi_key": api_key}

    # -- the OAuth server -----------------------------------------------------------
    async def auth_page(self, request: Request) -> Response:
        """The page a merchant sees on Neto: approve or deny the add-on (for the demo)."""
        q = request.query_params
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in q.items()
        )
        page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Fake Neto</title>
<style>body{{font-family:system-ui;max-width:32rem;margin:4rem auto}}</style></head><body>
<h1>Neto (local emulator)</h1>
<p>The add-on <b>{html.escape(q.get("client_id", ""))}</b> asks for access to
<b>{html.escape(q.get("store_domain", ""))}</b>.</p>
<form method="post" action="/oauth/v2/approve">{fields}
<label>Store id <input name="store_id" value="N{secrets.randbelow(90000) + 10000}"></label>
<p><button name="decision" value="approve">Approve</button>
<button name="decision" value="deny">Deny</button></p></form></body></html>"""
        return HTMLResponse(page)

    async def approve(self, request: Request) -> Response:
        form = await _form(request)
        redirect_uri = str(form.get("redirect_uri", ""))
        state = str(form.get("state", ""))
        if form.get("decision") != "approve":
            query = urlencode({"error": "access_denied", "state": state})
            return RedirectResponse(f"{redirect_uri}?{query}", status_code=302)
        code = self.authorize(
            str(form.get("store_domain", "")),
            store_id=str(form.get("store_id") or "N10001"),
            client_id=str(form.get("client_id") or self.client_id),
        )
        return RedirectResponse(
            f"{redirect_uri}?{urlencode({'code': code, 'state': state})}", status_code=302
        )

    async def token(self, request: Request) -> Response:
        form = await _form(request)
        with self.lock:
            self.token_requests.append(
                Seen(request.url.path, dict(request.headers), b"", form=form)
            )
            scripted = self.token_responses.popleft() if self.token_responses else None
        if self.token_delay:
            await asyncio.sleep(self.token_delay)
        if scripted is not None:
            return await scripted(request)
        client_id = form.get("client_id", "")
        if client_id not in self.clients or form.get("client_secret") != self.clients[client_id]:
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        with self.lock:
            code = form.get("code", "")
            if self.code_clients.get(code, client_id) != client_id:
                # Issued to another add-on: refused, and still good for that one.
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            grant = self.codes.pop(code, None)  # one-time, like Neto
            self.code_clients.pop(code, None)
        if grant is None or form.get("access_code") != form.get("code"):
            return JSONResponse({"error": "invalid_grant"}, status_code=400)
        return JSONResponse(grant)

    # -- the store API ----------------------------------------------------------------
    async def store_api(self, request: Request) -> Response:
        body = await request.body()
        seen = Seen(request.url.path, dict(request.headers), body)
        domain = request.path_params["store_domain"]
        with self.lock:
            self.api_requests.append(seen)
            scripted = self.api_responses.popleft() if self.api_responses else None
            expected = self.credentials.get(domain)
            refused = body in self.refused_bodies
            over = scripted is None and self._over_hidden_limit(domain)
        if over:
            return Response(b"Too Many Requests", status_code=429)
        await released(self.api_gate)
        if self.api_delay:
            await asyncio.sleep(self.api_delay)
        if scripted is not None:
            return await scripted(request)
        if refused:
            return Response(b"<html>Request blocked</html>", status_code=403,
                            media_type="text/html")  # fmt: skip
        if expected is None or any(seen.headers.get(k) != v for k, v in expected.items()):
            return JSONResponse({"Ack": "Error", "Messages": {"Error": [{"Message": "denied"}]}},
                                status_code=401)  # fmt: skip
        action = seen.action or ""
        entity = action[3:] if action.startswith(("Get", "Add")) else action
        return JSONResponse(
            {
                entity: [{"ID": "1", "Echo": body.decode("utf-8", "replace")[:200]}],
                "CurrentTime": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
                "Ack": "Success",
            }
        )

    def _over_hidden_limit(self, domain: str) -> bool:
        """Under `self.lock`: True (and counted) when the store's hidden budget is spent."""
        if self.hidden_limit is None:
            return False
        now = time.monotonic()
        answered = self.answered.setdefault(domain, deque())
        while answered and answered[0] <= now - self.hidden_window:
            answered.popleft()
        if len(answered) >= self.hidden_limit:
            self.rate_limited += 1
            return True
        answered.append(now)
        return False

    async def stray(self, request: Request) -> Response:
        seen = Seen(request.url.path, dict(request.headers), await request.body())
        with self.lock:
            self.stray_requests.append(seen)
        return JSONResponse({"error": "not a Neto endpoint"}, status_code=404)


async def released(gate: threading.Event, within: float = 30.0) -> None:
    """Waits, in the fake's own loop, until a test sets `gate` from its thread: polled, as
    a blocking wait would stall every other request the fake serves meanwhile."""
    deadline = time.monotonic() + within
    while not gate.is_set():
        if time.monotonic() > deadline:
            raise RuntimeError(f"fake Neto held a request for {within} s: never released")
        await asyncio.sleep(0.005)


# -- scripted answers for `api_responses` --------------------------------------------------
def answer(
    status: int = 200,
    body: bytes | dict[str, Any] = b'{"Ack":"Success"}',
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> Handler:
    """A fixed answer: the status, body bytes (or JSON) and content type given."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else body

    async def handler(request: Request) -> Response:
        return Response(raw, status_code=status, media_type=content_type, headers=headers)

    return handler


def redirect(location: str = "/elsewhere", status: int = 302) -> Handler:
    async def handler(request: Request) -> Response:
        return RedirectResponse(location, status_code=status)

    return handler


def slow_drip(every: float = 0.2, count: int = 300) -> Handler:
    """A 200 that sends one byte every `every` seconds: each read is quick, the whole is not."""

    async def drip() -> AsyncIterator[bytes]:
        yield b"{"
        for _ in range(count):
            await asyncio.sleep(every)
            yield b" "
        yield b"}"

    async def handler(request: Request) -> Response:
        return StreamingResponse(drip(), media_type="application/json")

    return handler


def huge(size: int, *, chunked: bool = False) -> Handler:
    """A body of `size` bytes, with a Content-Length or (chunked) without one."""
    block = b" " * (1024 * 1024)

    async def blocks() -> AsyncIterator[bytes]:
        sent = 0
        while sent < size:
            piece = block[: size - sent]
            sent += len(piece)
            yield piece

    async def handler(request: Request) -> Response:
        if chunked:
            return StreamingResponse(blocks(), media_type="application/json")
        return Response(b" " * size, media_type="application/json")

    return handler


class _DroppedResponse(Response):
    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"1000")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        # The server closes the connection mid-answer: the request was received.
        raise ConnectionAbortedError("fake Neto drops the connection")


class _DeclaredOnly(Response):
    """Declares a Content-Length, sends one byte of it, then stalls."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(self.size).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        await asyncio.sleep(30)


def declared_length(size: int) -> Handler:
    """An answer known to be too large from its headers alone: refused without waiting."""

    async def handler(request: Request) -> Response:
        return _DeclaredOnly(size)

    return handler


def drop_connection() -> Handler:
    async def handler(request: Request) -> Response:
        return _DroppedResponse()

    return handler


class FakeNetoServer:
    """Runs a FakeNeto on a real loopback socket in a background thread."""

    def __init__(self, fake: FakeNeto | None = None, host: str = "127.0.0.1", port: int = 0):
        self.fake = fake or FakeNeto()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        config = uvicorn.Config(
            self.fake.app, log_level="warning", lifespan="off", access_log=False,
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)  # fmt: skip

    def start(self) -> FakeNetoServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Neto did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="A local Neto emulator (OAuth + store API)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--client-id", default="demo-client-id")
    parser.add_argument("--client-secret", default="demo-client-secret-" + "x" * 24)
    args = parser.parse_args()
    fake = FakeNeto(client_id=args.client_id, client_secret=args.client_secret)
    uvicorn.run(fake.app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
