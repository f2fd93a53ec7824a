"""Schema fuzzing: schemathesis generates requests from the broker's own OpenAPI document
and every response must be documented, match its schema, and never be a 5xx. Errors must
be the broker's envelope (HTML pages on /oauth/*, Neto's error shape on /neto/) with
`X-Broker-Error`.

Each operation runs with an all-powerful caller token and without one, positive and
negative data, against the app with its real lifespan on the test database (both
backends). Hypothesis is derandomised and bounded so CI runs are stable and quick.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.python.asgi import get_client, shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service.main import create_app
from tests.conftest import truncate

ADMIN_SCOPE = "installs:admin credentials:read invoke"
SEEDED_STORE = "N1001"
EXAMPLES = 12

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def envelope_check(ctx: Any, response: Any, case: Any) -> bool:
    """Every error is ours: the JSON envelope (or the HTML page on /oauth/*), with
    X-Broker-Error naming its code, and every response carries X-Request-ID."""
    headers = {k.lower(): v[0] for k, v in response.headers.items()}
    assert headers.get("x-request-id"), "every response carries X-Request-ID"
    if response.status_code < 400:
        return True
    code = headers.get("x-broker-error")
    assert code, f"{response.status_code} without X-Broker-Error"
    if case.path.startswith("/oauth/"):
        assert headers["content-type"].startswith("text/html"), "OAuth errors are pages"
        assert code in response.text, "the page names the error code"
        return True
    if case.path.startswith("/neto/"):
        description = f"{code} (request {headers['x-request-id']})"
        if headers["content-type"].startswith("application/xml"):
            assert "<Ack>Error</Ack>" in response.text, "Neto's error shape, in XML"
            assert f"<Description>{description}</Description>" in response.text
            return True
        body = json.loads(response.content)
        assert body["Ack"] == "Error", f"not Neto's error shape: {body}"
        assert body["Messages"]["Error"][0]["Description"] == description
        return True
    body = json.loads(response.content)
    assert set(body) >= {"error", "detail", "request_id"}, f"not the envelope: {body}"
    assert body["error"] == code, "X-Broker-Error names the envelope's code"
    assert body["request_id"] == headers["x-request-id"]
    return True


@pytest.fixture
def fuzz_target(
    settings_factory: Callable[..., Any], neto: Any, database_url: str, token: Callable[..., str]
) -> Iterator[tuple[Any, dict[str, str]]]:
    app = create_app(settings_factory())
    # The fake Neto accepts the seeded store's key, so /invoke and verify reach a working
    # upstream: a 5xx can then only be the broker's own fault.
    neto.add_api_key_store("seeded.example.com", "api-user", "seeded-api-key")
    # Loading the schema over ASGI starts the app's lifespan on schemathesis' event loop
    # thread; every fuzzed request then runs on that loop.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    admin = {"Authorization": "Bearer " + token(ADMIN_SCOPE, stores=["*"], actions=["*"])}
    try:
        yield schema, admin
    finally:
        shutdown_lifespans()
        asyncio.run(truncate(database_url))


def seed(schema: Any, admin: dict[str, str]) -> None:
    """(Re)register an active store, so fuzzed ids can also hit a real install."""
    with get_client(schema.app) as client:
        seeded = client.post(
            "/installs/api-key",
            json={
                "store_id": SEEDED_STORE,
                "store_domain": "seeded.example.com",
                "username": "api-user",
                "api_key": "seeded-api-key",
            },
            headers=admin,
        )
        assert seeded.status_code == 201, seeded.text


def _operations(schema: Any) -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]


def fuzz(strategy: Any, headers: dict[str, str], checks: list[Any]) -> None:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        # The checks judge the request as it is sent: the caller's headers go into the case,
        # so a negative case whose only defect was a missing or broken token (which these
        # headers replace) is judged valid. Unknown query parameters are ignored, as
        # everywhere in the broker; schemathesis' rejection check already allows that.
        case.headers = {**(case.headers or {}), **headers}
        case.call_and_validate(checks=checks)

    run()


def test_fuzzed_requests_get_documented_answers_and_never_a_5xx(fuzz_target):
    schema, admin = fuzz_target
    failures: list[str] = []
    for operation in _operations(schema):
        has_input = bool(operation.path_parameters or operation.query or operation.body)
        # Neto's notification receiver takes any text in its two path strings and any body:
        # there is no invalid value for schemathesis to make (it gives up), only positive.
        has_input = has_input and not operation.path.startswith("/neto-notify/")
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_input else [])
        for mode in modes:
            checks = [*CHECKS, envelope_check]
            if mode is GenerationMode.NEGATIVE:
                checks.append(negative_data_rejection)
            for headers in (admin, {}):
                variants: list[dict[str, Any]] = [{}]
                if "{store_id}" in operation.path and mode is GenerationMode.POSITIVE and headers:
                    # Random ids almost never exist: also aim at the seeded store.
                    variants.append({"path_parameters": {"store_id": SEEDED_STORE}})
                for fixed in variants:
                    seed(schema, admin)
                    strategy = operation.as_strategy(generation_mode=mode, **fixed)
                    try:
                        fuzz(strategy, headers, checks)
                    except (Exception, BaseExceptionGroup) as exc:  # report every finding at once
                        who = "token" if headers else "no token"
                        failures.append(f"{operation.label} [{mode.value}, {who}]: {exc}")
    assert not failures, "\n\n".join(failures)
