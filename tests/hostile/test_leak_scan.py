"""Leak scan over the flows that exist: installs (both ways), a failed exchange, API-key
registration, bundles, revoke and errors. No access token, API key, client secret, JWT,
`state` or authorisation code may appear in an error body or header, an audit row, any
stored row (outside the sealed columns), or /metrics. (Logs are scanned by the ops suite.)
"""

from __future__ import annotations

import json

from sqlalchemy import select
from starlette.responses import JSONResponse

from service.audit.models import AuditEvent
from service.installs.models import Install
from service.oauth.models import PendingInstall
from tests.support import CLIENT_SECRET, install_store, start_install

SEALED = {"secret_sealed", "user_sealed", "billing_sealed"}


async def test_no_secret_reaches_errors_audit_rows_or_metrics(client, app, neto, token):
    admin_jwt = token("installs:admin credentials:read", stores=["*"])
    admin = {"Authorization": f"Bearer {admin_jwt}"}
    secrets: set[str] = {CLIENT_SECRET, admin_jwt}
    errors: list[str] = []

    async def call(method: str, path: str, **kwargs):
        r = await client.request(method, path, **kwargs)
        if r.status_code >= 400:
            errors.append(f"{r.status_code} {dict(r.headers)} {r.text}")
        return r

    # An install through both routes, then a reinstall.
    first = await install_store(client, neto, "shop.example.com", store_id="N1001")
    again = await install_store(client, neto, "shop.example.com", store_id="N1001")
    secrets |= {first["access_token"], first["code"], first["state"]}
    secrets |= {again["access_token"], again["code"], again["state"]}

    # A replayed callback, and a token endpoint that echoes what it was sent.
    await call("GET", "/oauth/callback", params={"state": first["state"], "code": first["code"]})
    q = await start_install(client, "other.example.com")
    code = neto.authorize("other.example.com", store_id="N2002")
    secrets |= {q["state"], code, neto.codes[code]["access_token"]}

    async def echo(request):
        form = await request.form()
        return JSONResponse({"error": "invalid_grant", "error_description": dict(form)}, 400)

    neto.token_responses.append(echo)
    await call("GET", "/oauth/callback", params={"state": q["state"], "code": code})

    # An API-key store, bundles for both, errors with secrets in the request.
    api_key = "apikey-" + "k" * 40
    secrets.add(api_key)
    r = await call(
        "POST", "/installs/api-key", headers=admin,
        json={"store_id": "N3003", "store_domain": "keys.example.com", "username": "u",
              "api_key": api_key},
    )  # fmt: skip
    assert r.status_code == 201 and api_key not in r.text
    for store in ("N1001", "N3003"):
        assert (await call("GET", f"/credentials/{store}", headers=admin)).status_code == 200
    await call(
        "POST", "/installs/api-key", headers=admin,
        json={"store_id": "N4004", "store_domain": "bad domain", "username": "u",
              "api_key": api_key},
    )  # fmt: skip
    await call(
        "POST", "/installs/api-key", headers=admin,
        json={"store_id": "N4004", "store_domain": "x.example.com", "username": "u",
              "api_key": api_key * 100},
    )  # fmt: skip
    tampered = admin_jwt[:-4] + ("AAAA" if not admin_jwt.endswith("AAAA") else "BBBB")
    secrets.add(tampered)
    await call("GET", "/credentials/N1001", headers={"Authorization": f"Bearer {tampered}"})
    await call("GET", "/installs", headers={"Authorization": f"Bearer {api_key}"})
    await call("GET", "/credentials/N1001", headers={"Authorization": f"Bearer {admin_jwt}x"})

    # Revoke, then the errors that follow it.
    assert (await call("DELETE", "/installs/N1001", headers=admin)).status_code == 200
    assert (await call("GET", "/credentials/N1001", headers=admin)).status_code == 410
    assert len(errors) >= 8

    async with app.state.services.sessionmaker() as session:
        audit = [
            json.dumps([e.event, e.actor, e.store_id, e.request_id, e.details])
            for e in (await session.execute(select(AuditEvent))).scalars()
        ]
        stored = [
            json.dumps({k: str(v) for k, v in row.model_dump().items() if k not in SEALED})
            for model in (Install, PendingInstall)
            for row in (await session.execute(select(model))).scalars()
        ]
    metrics = (await client.get("/metrics")).text
    assert any('"bundle.issued"' in line for line in audit), "the scan saw the bundles"

    for where, texts in (("error", errors), ("audit", audit), ("row", stored),
                         ("metrics", [metrics])):  # fmt: skip
        for text in texts:
            leaked = sorted(s[:12] + "..." for s in secrets if s in text)
            assert not leaked, f"{where} holds a secret ({leaked}): {text[:300]}"
