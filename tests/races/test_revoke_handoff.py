"""The revoke fence at the hand-off to the socket (issue 25, item 4): a call checks its
store once more when its request has a connection, the last moment before its bytes go
out (neto/http.HandOffConnector). Getting a connection can take a while (a new one is a
TCP connect, on a loaded replica a wait for the loop); a revoke or a reinstall answered
meanwhile is seen there, not only before the wait.

The wait is made deterministic with aiohttp's own tracing on the broker's real session:
the connection hooks hold the call until the test lets it go. `observe_sends` records, in
the broker's loop and on its clock, every request whose headers were written: the witness
the race tests compare with the revoke's answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.api.test_invoke import DOMAIN, STORE, client_for, installed, invoker
from tests.support import assert_refused, start_install


@dataclass
class Sends:
    """Requests the broker wrote to Neto: (monotonic time, X_SECRET_KEY sent)."""

    seen: list[tuple[float, str | None]] = field(default_factory=list)

    def with_token(self, token: str) -> list[float]:
        return [at for at, sent in self.seen if sent == token]


def _session(app: Any) -> aiohttp.ClientSession:
    return app.state.services.upstream._session  # type: ignore[no-any-return]


def observe_sends(app: Any) -> Sends:
    sends = Sends()

    async def headers_sent(_: Any, __: Any, params: aiohttp.TraceRequestHeadersSentParams) -> None:
        sends.seen.append((time.monotonic(), params.headers.get("X_SECRET_KEY")))

    config = aiohttp.TraceConfig()
    config.on_request_headers_sent.append(headers_sent)
    config.freeze()
    _session(app).trace_configs.append(config)
    return sends


class HeldHandOff:
    """Holds the next call that gets a connection (new or from the pool) until `go`."""

    def __init__(self, app: Any) -> None:
        self.arrived = asyncio.Event()
        self.go = asyncio.Event()
        self._used = False
        config = aiohttp.TraceConfig()
        config.on_connection_create_end.append(self._hold)
        config.on_connection_reuseconn.append(self._hold)
        config.freeze()
        _session(app).trace_configs.append(config)

    async def _hold(self, *_: Any) -> None:
        if self._used:
            return
        self._used = True
        self.arrived.set()
        await asyncio.wait_for(self.go.wait(), 10)


async def test_a_store_revoked_while_its_call_gets_a_connection_is_not_called(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory())
    async with await client_for(app) as client:
        await installed(client, neto)
        sends = observe_sends(app)
        held = HeldHandOff(app)
        call = asyncio.ensure_future(
            client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        )
        await asyncio.wait_for(held.arrived.wait(), 10)
        # Past the fence's check before the attempt, its connection in hand: revoke now.
        revoked = await client.delete(f"/installs/{STORE}", headers=auth("installs:admin"))
        assert revoked.status_code == 200, revoked.text
        answered = time.monotonic()
        held.go.set()
        r = await call
    assert_refused(r, 410, "store_revoked")
    assert neto.api_requests == [], "the revoked store was called"
    assert not [at for at, _ in sends.seen if at > answered]


async def test_a_store_reinstalled_while_its_call_gets_a_connection_is_called_with_its_new_token(
    app_factory, settings_factory, neto, auth
):
    app = await app_factory(settings_factory())
    async with await client_for(app) as client:
        old = (await installed(client, neto))["access_token"]
        pending = await start_install(client, DOMAIN)
        sends = observe_sends(app)
        held = HeldHandOff(app)
        call = asyncio.ensure_future(
            client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker(auth))
        )
        await asyncio.wait_for(held.arrived.wait(), 10)
        code = neto.authorize(DOMAIN, store_id=STORE)
        new = neto.codes[code]["access_token"]
        query = {"state": pending["state"], "code": code}
        again = await client.get("/oauth/callback", params=query)
        assert again.status_code == 200, again.text
        held.go.set()
        r = await call
    assert r.status_code == 200, r.text
    assert [seen.headers["x_secret_key"] for seen in neto.api_requests] == [new]
    assert sends.with_token(old) == []
