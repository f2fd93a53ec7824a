"""`make run` for a first-time user: in development `broker serve` prints where Swagger UI
is and a ready operator token that the server it started accepts."""

from __future__ import annotations

import re

import httpx


def test_development_serve_prints_docs_url_and_a_working_token(broker_server):
    # No keys configured: development makes throw-away ones under ./var/ (here tmp_path).
    server = broker_server(BROKER_ENV="development", BROKER_ENCRYPTION_KEYS="",
                           BROKER_JWT_HS256_KEYS="")  # fmt: skip
    output = server.output()
    port = server.url.rsplit(":", 1)[1]
    assert f"http://localhost:{port}/docs" in output, output
    match = re.search(r"^TOKEN=(\S+)$", output, re.M)
    assert match, f"no TOKEN= line in:\n{output}"
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/docs").status_code == 200
        r = client.get("/installs", headers={"Authorization": f"Bearer {match.group(1)}"})
        assert r.status_code == 200, r.text


def test_production_serve_prints_no_token(broker_server):
    output = broker_server().output()
    assert "TOKEN=" not in output
