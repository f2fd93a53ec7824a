"""The JSON logs: one line per request with its context, and never a secret.

Runs a whole flow with every logger at DEBUG (as `broker serve` configures them, with
BROKER_LOG_LEVEL=DEBUG) and scans every captured line for every secret the flow used.
"""

from __future__ import annotations

import json
import logging

import pytest
from starlette.responses import JSONResponse

from service.security.callers import mint
from service.web import logs
from tests.support import CLIENT_SECRET, ENC_KEY, HS_KID, HS_SECRET, install_store, start_install

ROUTES = {"/oauth/install", "/oauth/callback", "/credentials/{store_id}", "/installs",
          "/installs/api-key", "/installs/{store_id}"}  # fmt: skip


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured():
    root = logging.getLogger()
    quiet = ("sqlalchemy.engine", "aiosqlite", "httpx", "uvicorn.access")
    levels = {n: (logging.getLogger(n).level, logging.getLogger(n).disabled) for n in quiet}
    saved = (root.handlers[:], root.level, levels)
    logs.configure("DEBUG")
    handler = ListHandler()
    handler.setFormatter(logs.JsonFormatter())
    root.handlers[:] = [handler]
    yield handler.lines
    root.handlers[:], root.level = saved[0], saved[1]
    for name, (level, disabled) in saved[2].items():
        logging.getLogger(name).setLevel(level)
        logging.getLogger(name).disabled = disabled


async def test_a_full_flow_logs_every_request_and_no_secret(client, neto, auth, token, captured):
    secrets: dict[str, str] = {"client secret": CLIENT_SECRET, "hs256 key": HS_SECRET,
                               "encryption key": ENC_KEY}  # fmt: skip

    def bearer(name: str, scope: str, **kwargs) -> dict[str, str]:
        jwt = token(scope, **kwargs)
        secrets[f"jwt {name}"] = jwt
        secrets[f"jwt {name} signature"] = jwt.rsplit(".", 1)[1]
        return {"Authorization": f"Bearer {jwt}"}

    # A merchant installs through OAuth; a service takes a bundle.
    got = await install_store(client, neto, "shop.example.com", store_id="N1001")
    secrets.update(access_token=got["access_token"], code=got["code"], state=got["state"])
    bundle = await client.get(
        "/credentials/N1001", headers=bearer("bundle", "credentials:read", sub="orders",
                                             stores=["N1001"])
    )  # fmt: skip
    assert bundle.status_code == 200
    # An operator registers an API-key store, looks at it, and revokes the OAuth one.
    api_key = "neto-api-key-" + "Q" * 24
    secrets["api key"] = api_key
    admin = bearer("admin", "installs:admin", sub="ops-alice")
    registered = await client.post(
        "/installs/api-key",
        json={"store_id": "K1", "store_domain": "keys.example.com", "username": "api-user",
              "api_key": api_key},
        headers=admin,
    )  # fmt: skip
    assert registered.status_code == 201
    assert (await client.get("/installs/N1001", headers=admin)).status_code == 200
    assert (await client.delete("/installs/N1001", headers=admin)).status_code == 200

    # Error cases, each carrying a secret where a careless log would print it.
    forged = mint(kid=HS_KID, secret="not-the-key-" + "x" * 32, sub="mallory",
                  scope="installs:admin", audience="neto-token-broker", ttl_seconds=60)  # fmt: skip
    secrets["forged jwt"] = forged
    assert (await client.get("/installs", headers={"Authorization": f"Bearer {forged}"})
            ).status_code == 401  # fmt: skip
    assert (await client.get("/credentials/N1001", headers=bearer(
        "revoked", "credentials:read", stores=["*"]))).status_code == 410  # fmt: skip
    bad_body = await client.post(
        "/installs/api-key",
        json={"store_id": "bad id", "store_domain": "keys.example.com", "username": "u",
              "api_key": api_key + "-second", "extra": api_key},
        headers=admin,
    )  # fmt: skip
    assert bad_body.status_code == 422
    replay = await client.get(
        "/oauth/callback", params={"code": got["code"], "state": got["state"]}
    )
    assert replay.status_code == 400
    # A token exchange Neto refuses, echoing what it was sent.
    query = await start_install(client, "other.example.com")
    code = neto.authorize("other.example.com", store_id="N2002", access_token="tok-" + "L" * 30)
    secrets.update(state2=query["state"], code2=code, token2="tok-" + "L" * 30)

    async def refuse(request):
        form = (await request.body()).decode()
        return JSONResponse({"error": "invalid_grant", "error_description": form}, 400)

    neto.token_responses.append(refuse)
    failed = await client.get("/oauth/callback", params={"code": code, "state": query["state"]})
    assert failed.status_code == 502

    assert captured, "nothing was logged"
    for line in captured:
        for name, secret in secrets.items():
            assert secret not in line, f"{name} leaked into a log line: {line[:200]}"

    entries = [json.loads(line) for line in captured]
    requests = [e for e in entries if e["logger"] == "broker.access" and e["msg"] == "request"]
    assert len(requests) == 12, [r["route"] for r in requests]
    for entry in requests:
        for key in ("request_id", "method", "route", "status", "duration_ms"):
            assert key in entry, f"{key} missing from {entry}"
        assert isinstance(entry["duration_ms"], float | int) and entry["duration_ms"] >= 0
        assert entry["route"] in ROUTES, "the route template, never the raw path"
    by_id = {r["request_id"]: r for r in requests}
    line = by_id[bundle.headers["x-request-id"]]
    assert (line["route"], line["status"], line["caller"], line["store_id"]) == (
        "/credentials/{store_id}", 200, "orders", "N1001")  # fmt: skip
    line = by_id[registered.headers["x-request-id"]]
    assert (line["caller"], line["store_id"], line["status"]) == ("ops-alice", "K1", 201)
    line = by_id[failed.headers["x-request-id"]]
    assert (line["route"], line["status"]) == ("/oauth/callback", 502)
    assert all("caller" not in r for r in requests if r["status"] == 401)
