"""Swagger UI is served by the broker from packaged assets: nothing from a CDN."""

from __future__ import annotations

import re


async def test_docs_page_loads_only_the_brokers_own_assets(client):
    response = await client.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = response.text
    urls = re.findall(r'(?:src|href)="([^"]+)"', page) + re.findall(r"url: '([^']+)'", page)
    assert sorted(urls) == [
        "/docs/static/favicon.png",
        "/docs/static/swagger-ui-bundle.js",
        "/docs/static/swagger-ui.css",
        "/openapi.json",
    ]
    assert "//" not in "".join(urls), "no absolute or protocol-relative URL"
    # The operator's token stays out of localStorage unless an operator opts in.
    assert '"persistAuthorization": false' in page
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp


async def test_persisting_the_token_in_the_browser_is_an_opt_in(app_factory, settings_factory):
    import httpx

    app = await app_factory(settings_factory(docs_persist_authorization=True))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://broker.test") as client:
        page = (await client.get("/docs")).text
    assert '"persistAuthorization": true' in page


async def test_assets_are_served_with_their_types(client):
    for name, kind, marker in (
        ("swagger-ui-bundle.js", "text/javascript", b"SwaggerUIBundle"),
        ("swagger-ui.css", "text/css", b".swagger-ui"),
        ("favicon.png", "image/png", b"\x89PNG"),
    ):
        response = await client.get(f"/docs/static/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(kind)
        assert marker in response.content[:200_000]


async def test_the_bundle_renders_openapi_3_1(client):
    # Swagger UI before 5.0 refuses `openapi: 3.1.x`, which FastAPI emits.
    spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    bundle = (await client.get("/docs/static/swagger-ui-bundle.js")).text
    assert re.search(r'"5\.\d+\.\d+"', bundle), "Swagger UI 5.x is needed for OpenAPI 3.1"


async def test_only_the_listed_assets_are_reachable(client):
    for path in (
        "/docs/static/redoc.standalone.js",
        "/docs/static/..%2F__init__.py",
        "/docs/static/%2e%2e%2fcore.py",
        "/docs/oauth2-redirect",
        "/redoc",
    ):
        response = await client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"] == "not_found"
