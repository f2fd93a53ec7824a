"""A webhook receiver on loopback (aiohttp, in the test's event loop): records every POST
it gets and answers from a script (`fail_first`, `down`, a status per call)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()
    wall: float  # time.time(): what a `webhook-timestamp` is compared with

    @property
    def event(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


# Standard Webhooks: a receiver refuses a timestamp further than this from its own clock
# (either way), so a captured delivery cannot be replayed later.
TOLERANCE_SECONDS = 5 * 60


def verify_signature(
    secret: str, headers: dict[str, str], body: bytes, *, now: float | None = None
) -> bool:
    """Standard Webhooks, by hand (independent of the `standardwebhooks` package that
    signs): the timestamp within TOLERANCE_SECONDS of `now` (this machine's clock), and
    HMAC-SHA256 of "{id}.{timestamp}.{body}" keyed by the secret's decoded bytes,
    compared with each `v1,` signature in the header."""
    stamp = headers["webhook-timestamp"]
    now = time.time() if now is None else now
    if not stamp.isdigit() or abs(now - int(stamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [part.split(",", 1) for part in headers["webhook-signature"].split(" ")]
    return any(v == "v1" and hmac.compare_digest(sig, expected) for v, sig in given)


@dataclass
class Receiver:
    fail_first: int = 0  # answer 503 to this many POSTs, then 200
    status: int = 200
    delay: float = 0.0
    received: list[Received] = field(default_factory=list)
    url: str = ""
    _runner: web.AppRunner | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.received.append(Received(headers, body, time.monotonic(), time.time()))
        self._arrived.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        if len(self.received) <= self.fail_first:
            return web.Response(status=503, text="not yet")
        return web.Response(status=self.status, text="ok")

    async def start(self, host: str = "127.0.0.1") -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{host}:{port}/hook"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_for(self, count: int, seconds: float = 10) -> list[Received]:
        async with asyncio.timeout(seconds):
            while len(self.received) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return self.received
