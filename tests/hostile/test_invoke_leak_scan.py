"""Leak scan over the /invoke flows with every logger at DEBUG: success (OAuth and API-key
stores), 401 → reauth_required, an upstream 429, a timeout, a dropped connection, a 5xx,
caller errors. No access token, API key, client secret, JWT or secret from a request body
may appear in a log line, an audit row, an error body or header, or /metrics."""

from __future__ import annotations

import json

from tests.api.test_logs import captured  # noqa: F401  (the DEBUG log capture fixture)
from tests.fakes import neto as fake
from tests.support import CLIENT_SECRET, ENC_KEY, HS_SECRET, audit_rows, install_store


async def test_no_secret_leaks_from_invoke_flows(
    app_factory,
    settings_factory,
    neto,
    token,
    captured,  # noqa: F811
):
    import httpx

    app = await app_factory(settings_factory(upstream_deadline_seconds=0.5))
    transport = httpx.ASGITransport(app=app)
    invoker_jwt = token("invoke", stores=["*"], actions=["*"])
    admin_jwt = token("installs:admin")
    body_secret = "card-" + "9" * 24
    api_key = "apikey-" + "z" * 40
    secrets = {CLIENT_SECRET, ENC_KEY, HS_SECRET, invoker_jwt, admin_jwt, body_secret, api_key}
    errors: list[str] = []

    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        got = await install_store(client, neto, "shop.example.com", store_id="N1001")
        secrets.add(got["access_token"])
        neto.add_api_key_store("keys.example.com", "api-user", api_key)
        r = await client.post(
            "/installs/api-key",
            json={"store_id": "K1", "store_domain": "keys.example.com", "username": "api-user",
                  "api_key": api_key},
            headers={"Authorization": f"Bearer {admin_jwt}"},
        )  # fmt: skip
        assert r.status_code == 201

        async def invoke(store: str, action: str, jwt: str = invoker_jwt, **kwargs):
            kwargs.setdefault("json", {"Payment": {"Card": body_secret}})
            r = await client.post(
                f"/invoke/{store}/{action}", headers={"Authorization": f"Bearer {jwt}",
                                                      **kwargs.pop("headers", {})}, **kwargs
            )  # fmt: skip
            if "x-broker-error" in r.headers or r.status_code >= 400:
                errors.append(f"{r.status_code} {dict(r.headers)} {r.text}")
            return r

        assert (await invoke("N1001", "GetItem")).status_code == 200
        assert (await invoke("K1", "AddOrder")).status_code == 200
        neto.api_responses.append(fake.answer(500, b"oops", "text/plain"))
        assert (await invoke("K1", "AddOrder")).status_code == 500
        neto.api_responses.append(fake.drop_connection())
        assert (await invoke("K1", "UpdateOrder")).status_code == 502
        neto.api_responses.append(fake.slow_drip(every=0.1, count=50))
        assert (await invoke("K1", "GetOrder")).status_code == 504
        neto.api_responses.append(fake.answer(429, b'{"Ack":"Error"}'))
        assert (await invoke("K1", "GetOrder")).status_code == 429
        assert (await invoke("K1", "GetOrder")).status_code == 429  # paused
        neto.api_responses.extend(
            [fake.answer(401, b'{"Ack":"Error"}')] * 2
        )  # + the confirming read
        assert (await invoke("N1001", "GetItem")).status_code == 502
        assert (await invoke("N1001", "GetItem")).status_code == 409
        # Caller errors carrying secrets in the body or the token.
        await invoke(
            "N1001", "GetItem", content=body_secret, headers={"Content-Type": "text/plain"}
        )
        await invoke("N1001", "Get\u0406tem")  # a Cyrillic I
        await invoke("N1001", "GetItem", jwt=invoker_jwt[:-3] + "abc")
        await invoke("N1001", "GetItem", jwt=api_key)
        await invoke("N9", "GetItem")
        metrics = (await client.get("/metrics")).text
    assert len(errors) >= 10

    audit = [json.dumps(row, default=str) for row in await audit_rows(app)]
    assert any('"install.reauth_required"' in line for line in audit), "the scan saw the 401"
    assert any('"broker.upstream"' in line for line in captured), "the scan saw upstream logs"
    for where, texts in (("log", captured), ("audit", audit), ("error", errors),
                         ("metrics", [metrics])):  # fmt: skip
        for text in texts:
            leaked = sorted(s[:10] + "..." for s in secrets if s in text)
            assert not leaked, f"{where} holds a secret ({leaked}): {text[:300]}"
