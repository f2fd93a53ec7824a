"""The OpenAPI document, with every error response documented as what it really is.

FastAPI documents 422 with its own `HTTPValidationError` shape, but the broker answers
every error with its envelope (`ErrorBody`), and the merchant-facing /oauth/* routes with
an HTML page. This rewrites the generated document once so Swagger, client generators
and the schema fuzzer see the truth: the envelope on every error (Neto's own error shape
on the Neto-compatible endpoint), the statuses each kind of route can produce, and the
`X-Broker-Error` / `X-Request-ID` headers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorBody"}
HTML_SCHEMA = {"type": "string", "description": "A small self-contained HTML page."}
NETO_ERROR_SCHEMA = {"$ref": "#/components/schemas/NetoError"}
NETO_ERROR = {
    "type": "object",
    "description": "Neto's error shape (in XML when the caller asked for XML); the code is "
    "in `X-Broker-Error`.",
    "required": ["Ack", "Messages"],
    "properties": {
        "Ack": {"type": "string", "enum": ["Error"]},
        "Messages": {
            "type": "object",
            "properties": {
                "Error": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "Message": {"type": "string"},
                            "SeverityCode": {"type": "string", "enum": ["Error"]},
                            "Description": {"type": "string"},
                        },
                    },
                }
            },
        },
    },
    "example": {"Ack": "Error", "Messages": {"Error": [{
        "Message": "The token does not grant this store.", "SeverityCode": "Error",
        "Description": "store_not_allowed (request req_5f2a9c0e1b7d4a3f9e8c7b6a)"}]}},
}  # fmt: skip
# Routes without a database query answer 503 never; everything else may.
NO_DATABASE = frozenset({"/healthz", "/metrics", "/openapi.json"})

DESCRIPTIONS = {
    "400": "The request is not valid (`validation_error` or a more specific code)",
    "401": "Missing or invalid caller token (`unauthorized`)",
    "403": "The token does not grant this (`forbidden`, `store_not_allowed`, ...)",
    "404": "Not found (`store_not_found`, `not_found`)",
    "413": "The JSON body is larger than BROKER_MAX_JSON_BYTES (`payload_too_large`)",
    "415": "The body is not `application/json` (`unsupported_media_type`)",
    "422": "The request does not match the documented shape (`validation_error`)",
    "503": "The database does not answer (`service_unavailable`); retry shortly",
}

REQUEST_ID_HEADER = {
    "description": "The caller's X-Request-ID if it was sane, otherwise a new id.",
    "schema": {"type": "string"},
}
BROKER_ERROR_HEADER = {
    "description": "The error code, also in the body's `error`.",
    "required": True,
    "schema": {"type": "string"},
}


def _error_response(status: str, path: str, existing: dict[str, Any] | None) -> dict[str, Any]:
    if path.startswith("/oauth/"):
        content = {"text/html": {"schema": HTML_SCHEMA}}
    elif path.startswith("/neto/"):
        content = {"application/json": {"schema": NETO_ERROR_SCHEMA},
                   "application/xml": {"schema": {"type": "string"}}}  # fmt: skip
    else:
        content = {"application/json": {"schema": ERROR_SCHEMA}}
    return {
        "description": (existing or {}).get("description") or DESCRIPTIONS.get(status, "Error"),
        "headers": {"X-Broker-Error": BROKER_ERROR_HEADER, "X-Request-ID": REQUEST_ID_HEADER},
        "content": content,
    }


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    for path, operations in schema.get("paths", {}).items():
        html = path.startswith("/oauth/")
        for operation in operations.values():
            responses: dict[str, Any] = operation.setdefault("responses", {})
            wanted = {s for s in responses if s[0] in "45"}
            has_input = bool(operation.get("parameters") or operation.get("requestBody"))
            if "422" in responses or has_input:
                # Bad input on the browser routes is a 400 page. On the API a shape error
                # is a 422 and a value the broker refuses (a domain, a cursor) a 400.
                responses.pop("422", None)
                wanted |= {"400"} if html else {"400", "422"}
            if operation.get("security"):
                wanted |= {"401", "403"}
            if "requestBody" in operation:
                wanted |= {"413", "415", "422"}
            if any(p.get("in") == "path" for p in operation.get("parameters", [])):
                wanted.add("404")
            if path not in NO_DATABASE:
                wanted.add("503")
            for status in sorted(wanted):
                responses[status] = _error_response(status, path, responses.get(status))
            for status, response in responses.items():
                if status[0] in "23":
                    response.setdefault("headers", {})["X-Request-ID"] = REQUEST_ID_HEADER
    components = schema.get("components", {}).get("schemas", {})
    if any(path.startswith("/neto/") for path in schema.get("paths", {})):
        components["NetoError"] = NETO_ERROR
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema


def install(app: FastAPI) -> None:
    """Replace `app.openapi` with one that documents errors as the broker renders them."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(generate())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
