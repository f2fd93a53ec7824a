"""`POST /neto/{store_id}/do/WS/NetoAPI`: Neto's own protocol in front of the broker.

A client written for Neto (a `requests` session, the underscore headers set once) must
work against the broker by changing only its endpoint and its key; the broker's refusals
come back in Neto's error shape, in XML when asked. What the pipeline owns (retries,
limits, sizes, deadlines) is checked through both doors in test_invoke.py."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import requests

from service.main import create_app
from tests.conftest import CLIENT_ID, truncate
from tests.fakes import neto as fake
from tests.support import (
    LiveBroker,
    assert_refused,
    call_door,
    install_store,
    register_api_key_store,
)

STORE = "N1001"
DOMAIN = "shop.example.com"
PATH = f"/neto/{STORE}/do/WS/NetoAPI"
# Neto's answer as Neto spells it: odd spacing, strings for numbers, a trailing newline.
NETO_BODY = (
    b'{"Item":[{"SKU":"A-1","Name":"Caf\xc3\xa9 mug","DefaultPrice":"12.50"}],'
    b'"CurrentTime":"2026-01-01 00:00:00", "Ack":"Success"}\n'
)


class NetoClient:
    """Written the way Neto integrations are: one `requests` session with the auth headers
    set once, `json=payload`, `raise_for_status()`. Nothing in it knows of the broker."""

    def __init__(self, endpoint: str, auth_headers: dict[str, str]) -> None:
        self.endpoint = endpoint
        self.session = requests.Session()
        self.session.headers.update({**auth_headers, "Accept": "application/json"})

    def call(self, action: str, payload: dict[str, Any]) -> requests.Response:
        response = self.session.post(
            self.endpoint, headers={"NETOAPI_ACTION": action}, json=payload, timeout=10
        )
        response.raise_for_status()
        return response


@pytest.fixture
async def live(settings_factory: Any, database_url: str, neto: Any) -> AsyncIterator[LiveBroker]:
    try:
        async with LiveBroker(create_app(settings_factory())) as broker:
            yield broker
    finally:
        await truncate(database_url)


def invoker(token: Any, stores: list[str] | None = None, **grant: Any) -> str:
    return str(token("invoke", stores=stores or [STORE], **grant))


async def test_a_neto_api_key_client_needs_only_a_new_endpoint_and_key(
    live, neto, neto_server, auth, token
):
    neto.add_api_key_store(DOMAIN, "api-user", "real-key-" + "k" * 30)
    async with httpx.AsyncClient(base_url=live.url) as admin:
        await register_api_key_store(
            admin, auth("installs:admin"), STORE, DOMAIN, api_key="real-key-" + "k" * 30
        )
    payload = {"Filter": {"SKU": ["A-1"], "OutputSelector": ["Name", "DefaultPrice"]}}

    direct = NetoClient(
        f"{neto_server.url}/{DOMAIN}/do/WS/NetoAPI",
        {"NETOAPI_USERNAME": "api-user", "NETOAPI_KEY": "real-key-" + "k" * 30},
    )
    brokered = NetoClient(
        f"{live.url}{PATH}", {"NETOAPI_USERNAME": "api-user", "NETOAPI_KEY": invoker(token)}
    )
    answers = []
    for client in (direct, brokered):
        neto.api_responses.append(fake.answer(200, NETO_BODY, "application/json"))
        answers.append(await asyncio.to_thread(client.call, "GetItem", payload))
    from_neto, via_broker = answers
    assert via_broker.content == from_neto.content == NETO_BODY
    assert via_broker.headers["content-type"] == from_neto.headers["content-type"]
    assert "x-broker-error" not in via_broker.headers
    sent_direct, sent_via_broker = neto.api_requests
    assert sent_via_broker.body == sent_direct.body
    for name in ("netoapi_action", "netoapi_username", "netoapi_key", "content-type", "accept"):
        assert sent_via_broker.headers[name] == sent_direct.headers[name], name


async def test_a_neto_oauth_client_sends_its_jwt_as_x_secret_key(live, neto, token):
    async with httpx.AsyncClient(base_url=live.url) as merchant:
        got = await install_store(merchant, neto, DOMAIN)
    client = NetoClient(
        f"{live.url}{PATH}", {"X_ACCESS_KEY": "caller-access-key", "X_SECRET_KEY": invoker(token)}
    )
    answer = await asyncio.to_thread(client.call, "GetOrder", {"Filter": {"OrderID": ["1"]}})
    assert answer.json()["Ack"] == "Success"
    [seen] = neto.api_requests
    assert seen.action == "GetOrder"
    assert seen.headers["x_access_key"] == CLIENT_ID, "the caller's X_ACCESS_KEY was forwarded"
    assert seen.headers["x_secret_key"] == got["access_token"]


async def test_a_refusal_reaches_a_neto_client_as_an_http_error(live, neto, token):
    client = NetoClient(f"{live.url}/neto/N9/do/WS/NetoAPI", {"NETOAPI_KEY": invoker(token)})
    with pytest.raises(requests.HTTPError) as raised:
        await asyncio.to_thread(client.call, "GetItem", {})
    response = raised.value.response
    assert response.status_code == 403
    assert response.headers["x-broker-error"] == "store_not_allowed"
    assert response.json()["Ack"] == "Error"
    assert not neto.api_requests


# -- the caller, the store and the action ---------------------------------------------


async def neto_post(client: httpx.AsyncClient, headers: dict[str, str], **kwargs: Any) -> Any:
    kwargs.setdefault("json", {})
    return await client.post(kwargs.pop("path", PATH), headers=headers, **kwargs)


async def test_grants_are_those_of_invoke(client, neto, token):
    await install_store(client, neto, DOMAIN)
    await install_store(client, neto, "other.example.com", store_id="N2002")
    key = {"NETOAPI_ACTION": "UpdateItem", "NETOAPI_KEY": invoker(token)}
    assert_refused(await neto_post(client, key), 403, "action_not_allowed")
    narrow = invoker(token, actions=["GetItem"])
    key = {"NETOAPI_ACTION": "AddItem", "NETOAPI_KEY": narrow}
    assert_refused(await neto_post(client, key), 403, "action_not_allowed")
    key = {"NETOAPI_ACTION": "GetItem", "NETOAPI_KEY": invoker(token)}
    assert_refused(
        await neto_post(client, key, path="/neto/N2002/do/WS/NetoAPI"), 403, "store_not_allowed"
    )
    key = {"NETOAPI_ACTION": "GetItem", "NETOAPI_KEY": token("credentials:read", stores=["*"])}
    assert_refused(await neto_post(client, key), 403, "forbidden")
    assert not neto.api_requests
    # A read outside a present `actions` list: the door answers exactly as /invoke does.
    headers = {"Authorization": f"Bearer {narrow}"}
    answers = [
        await call_door(d, client, STORE, "GetOrder", headers, json={}) for d in ("invoke", "neto")
    ]
    assert answers[0].status_code == answers[1].status_code
    assert answers[0].headers.get("x-broker-error") == answers[1].headers.get("x-broker-error")


async def test_tokens_missing_bad_or_two_different_are_401(client, neto, token):
    await install_store(client, neto, DOMAIN)
    good, other = invoker(token), invoker(token, sub="someone-else")
    action = {"NETOAPI_ACTION": "GetItem"}
    for headers in (
        {},
        {"NETOAPI_USERNAME": "api-user"},
        {"NETOAPI_KEY": good[:-4] + "AAAA"},
        {"X_SECRET_KEY": "not-a-jwt", "X_ACCESS_KEY": "id"},
        {"Authorization": f"Basic {good}"},
        {"NETOAPI_KEY": good, "X_SECRET_KEY": other},
        {"NETOAPI_KEY": good, "Authorization": f"Bearer {other}"},
    ):
        r = await neto_post(client, {**action, **headers})
        detail = assert_refused(r, 401, "unauthorized")
        assert good not in r.text and other not in r.text and "not-a-jwt" not in detail
    # The same token in two places is one token.
    same = {**action, "NETOAPI_KEY": good, "X_SECRET_KEY": good, "Authorization": f"Bearer {good}"}
    assert (await neto_post(client, same)).status_code == 200
    assert len(neto.api_requests) == 1


def case_variant(jwt: str) -> str:
    """The token with one letter of its signature in the other case: to a reader that
    folds case the same token, to the verifier another (and an invalid) one."""
    at = next(i for i in range(len(jwt) - 1, 0, -1) if jwt[i].isalpha())
    return jwt[:at] + jwt[at].swapcase() + jwt[at + 1 :]


async def test_two_tokens_differing_only_in_letter_case_are_two_different_tokens(
    client, neto, token
):
    """Tokens are case-sensitive: two that differ only in case are not one token sent
    twice, and are refused for what they are (not for whichever one was kept)."""
    await install_store(client, neto, DOMAIN)
    good = invoker(token)
    variant = case_variant(good)
    assert variant != good and variant.lower() == good.lower()
    action = {"NETOAPI_ACTION": "GetItem"}
    for headers in (
        {"NETOAPI_KEY": good, "X_SECRET_KEY": variant},
        {"NETOAPI_KEY": variant, "X_SECRET_KEY": good},
        {"NETOAPI_KEY": good, "Authorization": f"Bearer {variant}"},
    ):
        r = await neto_post(client, {**action, **headers})
        detail = assert_refused(r, 401, "unauthorized")
        assert detail == "The request carries two different caller tokens.", detail
        assert good not in r.text and variant not in r.text
    assert not neto.api_requests


async def test_action_header_missing_repeated_or_unknown(client, neto, token):
    await install_store(client, neto, DOMAIN)
    key = ("NETOAPI_KEY", invoker(token))
    assert_refused(await neto_post(client, dict([key])), 400, "validation_error")
    r = await client.post(
        PATH, json={}, headers=[key, ("NETOAPI_ACTION", "GetItem"), ("NETOAPI_ACTION", "AddItem")]
    )
    assert_refused(r, 400, "validation_error")
    for name in ("getitem", "GetProduct", "Get Item", "GetItem;x=1"):
        r = await neto_post(client, {"NETOAPI_KEY": key[1], "NETOAPI_ACTION": name})
        assert_refused(r, 404, "unknown_action")
    assert not neto.api_requests


# -- formats: JSON, XML, and the framework's own refusals -------------------------------

XML_REQUEST = (
    b'<?xml version="1.0" encoding="utf-8"?><GetItem><Filter><SKU>A-1</SKU></Filter></GetItem>'
)
XML_ANSWER = b'<?xml version="1.0" encoding="UTF-8"?><GetItemResponse><Item><SKU>A-1</SKU></Item><Ack>Success</Ack></GetItemResponse>'  # noqa: E501


async def test_xml_goes_through_with_the_callers_content_type_and_accept(client, neto, token):
    await install_store(client, neto, DOMAIN)
    neto.api_responses.append(fake.answer(200, XML_ANSWER, "text/xml; charset=utf-8"))
    headers = {
        "NETOAPI_ACTION": "GetItem",
        "NETOAPI_KEY": invoker(token),
        "Content-Type": "application/xml",
        "Accept": "application/xml",
    }
    r = await client.post(PATH, content=XML_REQUEST, headers=headers)
    assert r.status_code == 200, r.text
    assert r.content == XML_ANSWER
    assert r.headers["content-type"] == "text/xml; charset=utf-8"
    [seen] = neto.api_requests
    assert seen.body == XML_REQUEST
    assert seen.headers["content-type"] == "application/xml"
    assert seen.headers["accept"] == "application/xml"


async def test_refusals_are_xml_when_the_caller_asked_for_xml(client, neto, token):
    headers = {
        "NETOAPI_ACTION": "GetItem",
        "NETOAPI_KEY": invoker(token, stores=["N2"]),
        "Content-Type": "text/xml",
        "Accept": "application/xml",
    }
    r = await client.post(PATH, content=XML_REQUEST, headers=headers)
    assert r.status_code == 403
    assert r.headers["x-broker-error"] == "store_not_allowed"
    assert r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.content)  # noqa: S314 (the broker's own answer)
    assert root.tag == "GetItemResponse"
    assert root.findtext("Ack") == "Error"
    assert root.findtext("Messages/Error/SeverityCode") == "Error"
    assert root.findtext("Messages/Error/Message") == "The token does not grant this store."
    description = root.findtext("Messages/Error/Description") or ""
    assert description == f"store_not_allowed (request {r.headers['x-request-id']})"
    # An XML body without an Accept preference is answered in XML too; Accept JSON wins.
    del headers["Accept"]
    r = await client.post(PATH, content=XML_REQUEST, headers=headers)
    assert ET.fromstring(r.content).findtext("Ack") == "Error"  # noqa: S314
    r = await client.post(
        PATH, content=XML_REQUEST, headers={**headers, "Accept": "application/json"}
    )
    assert_refused(r, 403, "store_not_allowed")


async def test_every_refusal_on_the_path_is_in_netos_shape(client, neto, token):
    await install_store(client, neto, DOMAIN)
    key = {"NETOAPI_ACTION": "GetItem", "NETOAPI_KEY": invoker(token)}
    r = await client.get(PATH, headers=key)
    assert_refused(r, 405, "method_not_allowed")
    r = await client.post("/neto/N1001/do/WS/Other", json={}, headers=key)
    assert_refused(r, 404, "not_found")
    r = await client.post("/neto/bad%20id!/do/WS/NetoAPI", json={}, headers=key)
    assert_refused(r, 422, "validation_error")
    r = await client.post(PATH, content=b"a=1", headers={**key, "Content-Type": "text/plain"})
    assert_refused(r, 415, "unsupported_media_type")
    r = await client.post(PATH, content=b" " * (8 * 1024 * 1024 + 1), headers=key)
    assert_refused(r, 413, "payload_too_large")
    r = await client.post(PATH, json={}, headers={**key, "Accept": "x" * 300})
    assert_refused(r, 400, "validation_error")
    assert not neto.api_requests
    assert r.headers["x-request-id"]


async def test_the_openapi_document_declares_the_underscore_headers(client):
    doc = (await client.get("/openapi.json")).json()
    operation = doc["paths"]["/neto/{store_id}/do/WS/NetoAPI"]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert {
        "NETOAPI_ACTION",
        "NETOAPI_KEY",
        "NETOAPI_USERNAME",
        "X_ACCESS_KEY",
        "X_SECRET_KEY",
    } <= set(headers)
    assert headers["NETOAPI_ACTION"]["required"] is True
    assert "GetItem" in headers["NETOAPI_ACTION"]["schema"]["enum"]
    assert set(operation["requestBody"]["content"]) == {"application/json", "application/xml"}
    refusal = operation["responses"]["403"]["content"]["application/json"]["schema"]
    assert refusal == {"$ref": "#/components/schemas/NetoError"}
