"""Egress rules on the real connection paths, with private egress off (production's
default): the store API call behind /invoke and the OAuth token exchange both ride the one
aiohttp session, whose socket factory refuses every non-public address at connect time.

The loopback spellings point at live fakes (IPv4 and IPv6), so a refusal that failed would
be seen: the request would arrive. The control runs the same calls with private egress
allowed and sees them arrive.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.neto import FakeNeto, FakeNetoServer
from tests.support import (
    CLIENT_ID,
    CLIENT_SECRET,
    assert_error,
    register_api_key_store,
    start_install,
)

DOMAIN = "keyshop.example.com"
API_KEY = "k" * 40
REFUSAL = "not one the broker may connect to"

# Host spellings that reach a live fake when connected to. `v6` marks the IPv6 fake.
LIVE = {"IPv4 loopback": ("127.0.0.1", False), "IPv6 loopback": ("[::1]", True),
        "IPv4-mapped loopback": ("[::ffff:127.0.0.1]", False)}  # fmt: skip
# Spellings of inside addresses that nothing here listens on.
UNLISTENED = {
    "metadata": "169.254.169.254",
    "CGNAT": "100.64.0.1",
    "private": "10.0.0.1",
    "NAT64 loopback": "[64:ff9b::7f00:1]",
    "NAT64 metadata": "[64:ff9b::a9fe:a9fe]",
    "6to4 loopback": "[2002:7f00:1::]",
    "6to4 metadata": "[2002:a9fe:a9fe::1]",
    "Teredo to loopback": "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
    "unique local": "[fd00::1]",
}


@pytest.fixture(scope="module")
def neto_v6() -> Iterator[FakeNetoServer]:
    server = FakeNetoServer(FakeNeto(CLIENT_ID, CLIENT_SECRET), host="::1").start()
    yield server
    server.stop()


@pytest.fixture
def fakes(neto: FakeNeto, neto_v6: FakeNetoServer, neto_server: FakeNetoServer) -> Any:
    """(fake, port) for a host spelling: the IPv6 fake for ::1, else the session's."""
    neto_v6.fake.reset()

    def pick(v6: bool) -> tuple[FakeNeto, int]:
        return (neto_v6.fake, neto_v6.port) if v6 else (neto, neto_server.port)

    yield pick
    neto_v6.fake.reset()


async def broker(app_factory: Any, settings_factory: Any, **overrides: Any) -> httpx.AsyncClient:
    app = await app_factory(settings_factory(**overrides))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://broker.test")


async def invoke_via(app_factory, settings_factory, auth, host, port, *, allow):
    template = f"http://{host}:{port}/{{store_domain}}/do/WS/NetoAPI"
    async with await broker(app_factory, settings_factory, egress_allow_private=allow,
                            neto_api_url_template=template) as client:  # fmt: skip
        await register_api_key_store(client, auth("installs:admin"), "K77", DOMAIN, api_key=API_KEY)
        return await client.post("/invoke/K77/GetItem", json={},
                                  headers=auth("invoke", stores=["K77"]))  # fmt: skip


async def exchange_via(app_factory, settings_factory, fake, host, port, *, allow):
    async with await broker(app_factory, settings_factory, egress_allow_private=allow,
                            neto_oauth_url=f"http://{host}:{port}/oauth/v2") as client:  # fmt: skip
        state = (await start_install(client, "shop.example.com"))["state"]
        code = fake.authorize("shop.example.com", store_id="N1")
        return await client.get("/oauth/callback", params={"code": code, "state": state})


@pytest.mark.parametrize(("host", "v6"), LIVE.values(), ids=LIVE.keys())
async def test_invoke_to_a_loopback_store_is_refused_at_connect_time(
    app_factory, settings_factory, auth, fakes, host, v6
):
    fake, port = fakes(v6)
    fake.add_api_key_store(DOMAIN, "api-user", API_KEY)
    r = await invoke_via(app_factory, settings_factory, auth, host, port, allow=False)
    assert_error(r, 502, "upstream_unreachable")
    assert REFUSAL in r.json()["detail"]
    assert not fake.api_requests, "the store API on loopback was reached"
    # Control: the same address with private egress allowed is reachable.
    r = await invoke_via(app_factory, settings_factory, auth, host, port, allow=True)
    assert r.status_code == 200, r.text
    assert len(fake.api_requests) == 1


@pytest.mark.parametrize("host", UNLISTENED.values(), ids=UNLISTENED.keys())
async def test_invoke_to_an_inside_address_is_refused_before_connecting(
    app_factory, settings_factory, auth, neto, host
):
    r = await invoke_via(app_factory, settings_factory, auth, host, 80, allow=False)
    assert_error(r, 502, "upstream_unreachable")
    assert REFUSAL in r.json()["detail"]


@pytest.mark.parametrize(("host", "v6"), LIVE.values(), ids=LIVE.keys())
async def test_token_exchange_with_a_loopback_endpoint_is_refused_at_connect_time(
    app_factory, settings_factory, fakes, host, v6
):
    fake, port = fakes(v6)
    r = await exchange_via(app_factory, settings_factory, fake, host, port, allow=False)
    assert_error_page(r, "token_exchange_failed")
    assert REFUSAL in r.text
    assert not fake.token_requests, "the token endpoint on loopback was reached"
    r = await exchange_via(app_factory, settings_factory, fake, host, port, allow=True)
    assert r.status_code == 200, r.text
    assert len(fake.token_requests) == 1


@pytest.mark.parametrize("host", UNLISTENED.values(), ids=UNLISTENED.keys())
async def test_token_exchange_with_an_inside_address_is_refused_before_connecting(
    app_factory, settings_factory, neto, host
):
    r = await exchange_via(app_factory, settings_factory, neto, host, 80, allow=False)
    assert_error_page(r, "token_exchange_failed")
    assert REFUSAL in r.text


def assert_error_page(response: httpx.Response, code: str) -> None:
    """The merchant-facing callback answers an HTML page with the error code header."""
    assert response.status_code == 502, response.text
    assert response.headers["x-broker-error"] == code
    assert response.headers["content-type"].startswith("text/html")
