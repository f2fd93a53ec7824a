"""The OpenAPI document: committed copy is current, routes are documented, auth works."""

from __future__ import annotations

import json

from service.web.openapi_export import DEFAULT_PATH, document
from tests.support import ROOT

# The contract's routes that belong in the document (/docs and /openapi.json serve it).
CONTRACT_ROUTES = {
    ("get", "/oauth/install"),
    ("post", "/installs/start"),
    ("get", "/oauth/callback"),
    ("get", "/credentials/{store_id}"),
    ("get", "/installs"),
    ("get", "/installs/{store_id}"),
    ("delete", "/installs/{store_id}"),
    ("post", "/installs/api-key"),
    ("get", "/audit"),
    ("post", "/invoke/{store_id}/{action}"),
    ("post", "/installs/{store_id}/verify"),
    ("get", "/healthz"),
    ("get", "/readyz"),
    ("get", "/metrics"),
}
PUBLIC = {
    "/oauth/install", "/oauth/callback", "/healthz", "/readyz", "/metrics",
    # Neto posts without a caller token: the store's URL token is the credential.
    "/neto-notify/{store_id}/{token}", "/neto-notify/{store_id}",
}  # fmt: skip


def operations(schema):
    for path, item in schema["paths"].items():
        for method, op in item.items():
            yield method, path, op


def test_committed_document_equals_what_the_app_serves():
    committed = json.loads((ROOT / DEFAULT_PATH).read_text())
    assert committed == document(), (
        "openapi/openapi.json is stale: run `make openapi` and commit the result"
    )


async def test_the_app_serves_the_same_document(client):
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == json.loads((ROOT / DEFAULT_PATH).read_text())


def test_every_contract_route_is_documented():
    served = {(m, p) for m, p, _ in operations(document())}
    assert served >= CONTRACT_ROUTES, f"missing: {sorted(CONTRACT_ROUTES - served)}"


def test_every_route_has_a_tag_a_one_line_summary_and_a_description():
    schema = document()
    known_tags = {t["name"] for t in schema["tags"]}
    for method, path, op in operations(schema):
        assert op.get("tags") and set(op["tags"]) <= known_tags, (method, path)
        summary = op.get("summary", "")
        assert summary and "\n" not in summary and len(summary) <= 80, (method, path, summary)
        assert op.get("description"), f"{method} {path} has no docstring"


def test_every_response_model_has_an_example():
    schema = document()
    components = schema["components"]["schemas"]
    for method, path, op in operations(schema):
        for status, response in op["responses"].items():
            for content in response.get("content", {}).values():
                ref = content.get("schema", {}).get("$ref")
                if ref is None or not status.startswith("2"):
                    continue
                model = components[ref.rsplit("/", 1)[1]]
                props = model.get("properties", {}).values()
                assert model.get("examples") or all(p.get("examples") for p in props), (
                    f"{method} {path} {status}: {ref} has no example"
                )


def test_caller_routes_use_the_bearer_scheme_so_authorize_works():
    schema = document()
    assert schema["components"]["securitySchemes"]["CallerJWT"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A caller JWT (`broker token mint` prints one for operators).",
    }
    for method, path, op in operations(schema):
        if path in PUBLIC:
            assert "security" not in op, (method, path)
        else:
            assert op.get("security") == [{"CallerJWT": []}], (method, path)
