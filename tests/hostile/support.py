"""What the hostile-input tests share: counting what reached the database and Neto, and
a raw ASGI call for requests an HTTP client would refuse to build."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from sqlalchemy import func, select

from service.audit.models import AuditEvent
from service.installs.models import Install
from service.oauth.models import PendingInstall


@dataclass(frozen=True)
class Footprint:
    installs: int
    pending: int
    audit: int
    token_requests: int
    api_requests: int


async def footprint(app: Any, neto: Any) -> Footprint:
    """Row counts and Neto's recordings: a refused request must change none of them."""
    async with app.state.services.sessionmaker() as session:
        counts = [
            (await session.execute(select(func.count()).select_from(model))).scalar_one()
            for model in (Install, PendingInstall, AuditEvent)
        ]
    return Footprint(*counts, len(neto.token_requests), len(neto.api_requests))


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers_named(name)
        return values[0] if values else None

    def headers_named(self, name: str) -> list[str]:
        key = name.lower().encode()
        return [v.decode("latin-1") for k, v in self.headers if k.lower() == key]


async def raw_request(
    app: Any,
    method: str,
    raw_path: str,
    *,
    query: str = "",
    headers: list[tuple[bytes, bytes]] | None = None,
    body: bytes = b"",
) -> RawResponse:
    """One request straight into the ASGI app, exactly as a server would decode it (the
    path percent-decoded, the raw path and headers untouched)."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode(),
        "root_path": "",
        "query_string": query.encode(),
        "headers": [(b"host", b"broker.test"), *(headers or [])],
        "client": ("127.0.0.1", 50000),
        "server": ("broker.test", 80),
    }
    sent = False
    out = RawResponse(0, [], b"")

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out.status = message["status"]
            out.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            out.body += message.get("body", b"")

    await app(scope, receive, send)
    return out
