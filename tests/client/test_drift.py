"""The client package against what the broker publishes: its error codes (the contract,
the broker's own classes, the OpenAPI document), its read actions, and the schemas of the
answers the client models (openapi/openapi.json). Each fails when the two drift."""

from __future__ import annotations

import json
import re
from typing import Any, Literal, get_args, get_origin

import pytest
from neto_broker_client import CODES, READ_ACTIONS, Bundle, Event, EventData, EventPage
from neto_broker_client.errors import BrokerError as ClientError
from neto_broker_client.models import ErrorBody
from pydantic import BaseModel

from service import errors as broker_errors
from service.events.signing import DATA_FIELDS
from service.neto import actions
from tests.support import ROOT

# The contract's code list (CONTRACT.md, "Errors"), as the contract spells it.
CONTRACT_CODES = {
    "unauthorized", "forbidden", "store_not_allowed", "action_not_allowed",
    "store_not_found", "unknown_action", "store_revoked", "store_reauth_required",
    "invalid_store_domain", "invalid_state", "state_expired", "validation_error",
    "payload_too_large", "rate_limited", "oauth_not_configured", "service_unavailable",
    "token_exchange_failed", "store_domain_mismatch", "upstream_unreachable",
    "upstream_unauthorized", "upstream_response_too_large", "upstream_timeout",
}  # fmt: skip
# Where the shared contract sits beside the repository (the workplace and CI lay it so).
CONTRACT_FILE = ROOT.parent / "shared" / "CONTRACT.md"
# Backticked snake_case words in error descriptions that are not error codes.
NOT_CODES = {"reauth_required"}  # an install status ("store marked `reauth_required`")
# The client's model of each schema it reads.
MODELS: dict[str, type[BaseModel]] = {
    "Bundle": Bundle,
    "EventOut": Event,
    "EventPage": EventPage,
    "ErrorBody": ErrorBody,
}


def broker_codes() -> set[str]:
    """Every code the broker can answer: one per class of service/errors.py."""
    found, todo = set(), [broker_errors.BrokerError]
    while todo:
        cls = todo.pop()
        found.add(cls.code)
        todo += cls.__subclasses__()
    return found


def document() -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads((ROOT / "openapi" / "openapi.json").read_text())
    return parsed


def documented_codes() -> set[str]:
    """Codes the OpenAPI document names in its error responses (those with X-Broker-Error)."""
    found: set[str] = set()
    for item in document()["paths"].values():
        for op in item.values():
            for response in op.get("responses", {}).values():
                if "X-Broker-Error" in response.get("headers", {}):
                    text = response.get("description", "")
                    found |= set(re.findall(r"`([a-z]+(?:_[a-z]+)+)`", text))
    return found - NOT_CODES


def test_the_client_has_a_class_for_every_code_the_broker_answers_and_no_other():
    ours = set(CODES)
    assert ours == broker_codes(), (
        f"the client lacks {sorted(broker_codes() - ours)}, "
        f"has codes the broker never answers: {sorted(ours - broker_codes())}"
    )
    assert all(issubclass(cls, ClientError) and cls.code_name == code
               for code, cls in CODES.items())  # fmt: skip


def test_every_contract_and_documented_code_has_its_class():
    assert set(CODES) >= CONTRACT_CODES, sorted(CONTRACT_CODES - set(CODES))
    documented = documented_codes()
    assert documented, "no code found in the document's error responses"
    assert documented <= set(CODES), f"documented, not in the client: {documented - set(CODES)}"


@pytest.mark.skipif(not CONTRACT_FILE.exists(), reason="the shared contract is not beside")
def test_the_contract_list_here_is_the_contracts():
    text = CONTRACT_FILE.read_text()
    section = text.split("### Errors", 1)[1].split("\n#", 1)[0]
    listed = set(re.findall(r"`([a-z]+(?:_[a-z]+)*)`", section.split("Codes include:", 1)[1]))
    assert listed == CONTRACT_CODES, (
        f"CONTRACT.md lists {sorted(listed ^ CONTRACT_CODES)} differently: update "
        "CONTRACT_CODES and the client's classes"
    )


def test_the_client_retries_exactly_the_brokers_read_actions():
    assert actions.READ_ACTIONS == READ_ACTIONS


@pytest.mark.parametrize("schema_name", sorted(MODELS))
def test_each_model_has_its_schemas_fields_and_required_fields(schema_name):
    schema = document()["components"]["schemas"][schema_name]
    model = MODELS[schema_name]
    fields = model.model_fields
    assert set(fields) == set(schema["properties"]), (
        f"{model.__name__} has {sorted(fields)}, the schema {sorted(schema['properties'])}"
    )
    required = {name for name, field in fields.items() if field.is_required()}
    assert required == set(schema.get("required", [])), (
        f"{model.__name__} requires {sorted(required)}, the schema {schema.get('required')}"
    )
    for name, field in fields.items():
        enum = schema["properties"][name].get("enum")
        if enum is not None:
            assert get_origin(field.annotation) is Literal, f"{name} is an enum in the schema"
            assert set(get_args(field.annotation)) == set(enum), name


def test_nested_models_follow_the_schemas_references():
    schemas = document()["components"]["schemas"]
    items = schemas["EventPage"]["properties"]["events"]["items"]["$ref"]
    assert items == "#/components/schemas/EventOut"
    assert EventPage.model_fields["events"].annotation == list[Event]
    # `data` is an open object in the schema; the client types the install fields the
    # broker writes (service/events/signing.py) and keeps any other as an extra.
    assert schemas["EventOut"]["properties"]["data"]["type"] == "object"
    assert set(EventData.model_fields) == set(DATA_FIELDS), "an install field is untyped"
    assert all(not f.is_required() for f in EventData.model_fields.values())
