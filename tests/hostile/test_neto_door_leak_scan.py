"""Leak scan over the Neto-compatible endpoint with every logger at DEBUG: what a caller
puts in Neto's key headers (its JWT in NETOAPI_KEY / X_SECRET_KEY, whatever it puts in
NETOAPI_USERNAME / X_ACCESS_KEY) never reaches Neto, a log line, an audit row, an error
body or header, or /metrics; nor does the store's real key reach the caller."""

from __future__ import annotations

import json

import httpx

from tests.api.test_logs import captured  # noqa: F401  (the DEBUG log capture fixture)
from tests.fakes import neto as fake
from tests.support import audit_rows, install_store, register_api_key_store

PATH = "/neto/{}/do/WS/NetoAPI"


async def test_caller_key_headers_reach_neither_upstream_nor_logs(
    app_factory,
    settings_factory,
    neto,
    token,
    auth,
    captured,  # noqa: F811
):
    app = await app_factory(settings_factory(upstream_deadline_seconds=0.5))
    jwt = token("invoke", stores=["*"], actions=["*"])
    other_jwt = token("invoke", stores=["*"], sub="other-caller")
    caller_username = "caller-username-" + "u" * 16
    caller_access_key = "caller-access-key-" + "a" * 16
    store_key = "store-api-key-" + "s" * 30
    caller_secrets = {jwt, other_jwt, caller_username, caller_access_key}
    responses: list[str] = []

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://broker.test"
    ) as client:
        got = await install_store(client, neto, "shop.example.com", store_id="N1001")
        neto.add_api_key_store("keys.example.com", "api-user", store_key)
        await register_api_key_store(
            client, auth("installs:admin"), "K1", "keys.example.com", api_key=store_key
        )

        async def call(
            store: str, action: str | bytes, headers: dict[str, str], **kwargs: object
        ) -> int:
            kwargs.setdefault("json", {"Filter": {"SKU": ["A-1"]}})
            r = await client.post(
                PATH.format(store), headers={"NETOAPI_ACTION": action, **headers}, **kwargs
            )
            responses.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            return r.status_code

        api_key_style = {"NETOAPI_USERNAME": caller_username, "NETOAPI_KEY": jwt}
        oauth_style = {"X_ACCESS_KEY": caller_access_key, "X_SECRET_KEY": jwt}
        assert await call("K1", "GetItem", api_key_style) == 200
        assert await call("N1001", "GetItem", oauth_style) == 200
        assert (
            await call(
                "K1",
                "AddOrder",
                {**oauth_style, "Content-Type": "text/xml", "Accept": "text/xml"},
                content=b"<AddOrder/>",
            )
            == 200
        )
        neto.api_responses.append(fake.answer(500, b"oops", "text/plain"))
        assert await call("K1", "AddOrder", api_key_style) == 500
        neto.api_responses.append(fake.drop_connection())
        assert await call("K1", "UpdateOrder", oauth_style) == 502
        neto.api_responses.append(fake.slow_drip(every=0.1, count=50))
        assert await call("K1", "GetOrder", oauth_style) == 504
        neto.api_responses.append(fake.answer(401, b'{"Ack":"Error"}'))
        assert await call("N1001", "GetItem", api_key_style) == 502
        # Refusals that carry the caller's values.
        assert await call("K1", "GetItem", {**api_key_style, "X_SECRET_KEY": other_jwt}) == 401
        assert (
            await call(
                "K1",
                "GetItem",
                {"NETOAPI_KEY": jwt[:-3] + "abc", "NETOAPI_USERNAME": caller_username},
            )
            == 401
        )
        assert await call("K1", "GetItem", {"NETOAPI_KEY": caller_access_key}) == 401
        assert await call("K1", "Get\u0406tem".encode(), api_key_style) in (400, 404)
        metrics = (await client.get("/metrics")).text

    sent_upstream = [
        json.dumps(s.headers) + s.body.decode("utf-8", "replace") for s in neto.api_requests
    ]
    assert len(sent_upstream) == 8  # the 401's confirming read included
    audit = [json.dumps(row, default=str) for row in await audit_rows(app)]
    everywhere = (
        ("upstream", sent_upstream),
        ("log", captured),
        ("audit", audit),
        ("response", responses),
        ("metrics", [metrics]),
    )
    for where, texts in everywhere:
        for text in texts:
            leaked = sorted(s[:12] + "..." for s in caller_secrets if s in text)
            assert not leaked, f"{where} holds a caller secret ({leaked}): {text[:300]}"
    store_secrets = {store_key, got["access_token"]}
    for where, texts in (("log", captured), ("audit", audit), ("response", responses)):
        for text in texts:
            assert not [s for s in store_secrets if s in text], f"{where}: {text[:300]}"
    assert any('"broker.upstream"' in line for line in captured), "the scan saw upstream logs"
