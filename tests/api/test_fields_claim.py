"""Least-privilege answers (issue 22, item 3): a caller token's `fields` claim names, per
Neto entity, the only fields the caller may read. Neto is asked for those only (the
request's OutputSelector narrowed) and every other field is removed from its answer, on
both doors; an action whose entity the claim does not list, or an XML exchange, is
refused before anything is sent. Without the claim, both pass byte for byte.

Also issue 31, item 5: a limiting claim the broker does not enforce is refused (`apps`
was until issue 23 enforced it; a malformed one still is refused here)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from typer.testing import CliRunner

from service.access.fields import FieldGrant
from service.cli import app as cli
from service.security.callers import mint
from tests.api.test_invoke import STORE, client_for, installed
from tests.cli.test_token_mint import ENV, verifier
from tests.fakes import neto as fake
from tests.support import (
    AUDIENCE,
    DOORS,
    HS_KID,
    HS_SECRET,
    assert_refused,
    call_door,
    hs256,
)

ITEM_FIELDS = {"Item": ["SKU", "AvailableSellQuantity"]}
# Neto's answer to GetItem as Neto writes it: a customer-facing field (and the merchant's
# cost) the token may not read, a nested list, and a key that is no field of Item.
ITEM_ANSWER = {
    "Item": [
        {"SKU": "A-1", "AvailableSellQuantity": "7", "CostPrice": "3.10",
         "PriceGroups": {"PriceGroup": [{"Group": "VIP", "Price": "9.00"}]}},
        {"SKU": "B-2", "AvailableSellQuantity": "0", "Name": "Mug"},
    ],
    "Customer": [{"Email": "mia@example.com"}],
    "CurrentTime": "2026-01-01 00:00:00",
    "Ack": "Success",
}  # fmt: skip


def bearer(**claims: Any) -> dict[str, str]:
    token = mint(kid=HS_KID, secret=HS_SECRET, sub="stock-sync", scope="invoke",
                 audience=AUDIENCE, ttl_seconds=600, stores=[STORE], **claims)  # fmt: skip
    return {"Authorization": f"Bearer {token}"}


async def sent_since(neto: Any, before: int) -> list[Any]:
    return neto.api_requests[before:]


@pytest.mark.parametrize("door", DOORS)
async def test_neto_is_asked_for_the_allowed_fields_only(door, app, neto):
    headers = bearer(fields=ITEM_FIELDS)
    async with await client_for(app) as client:
        await installed(client, neto)
        before = len(neto.api_requests)
        asked = {"Filter": {"SKU": ["A-1"], "OutputSelector": ["SKU", "Name", "CostPrice"]}}
        r = await call_door(door, client, STORE, "GetItem", headers, json=asked)
        assert r.status_code == 200, r.text
        # No OutputSelector: the claim's names are set.
        r = await call_door(
            door, client, STORE, "GetItem", headers, json={"Filter": {"SKU": ["A-1"]}}
        )
        assert r.status_code == 200, r.text
        # A repeated key (last one wins in Python, maybe not in Neto) cannot smuggle a
        # name past the check: Neto gets the body as the broker read it.
        raw = b'{"Filter":{"OutputSelector":["SKU"],"OutputSelector":["Email"],"SKU":["A-1"]}}'
        json_headers = {**headers, "Content-Type": "application/json"}
        r = await call_door(door, client, STORE, "GetItem", json_headers, content=raw)
        assert r.status_code == 200, r.text
    seen = [s.json()["Filter"] for s in await sent_since(neto, before)]
    assert seen == [
        {"SKU": ["A-1"], "OutputSelector": ["SKU"]},
        {"SKU": ["A-1"], "OutputSelector": ["SKU", "AvailableSellQuantity"]},
        {"OutputSelector": [], "SKU": ["A-1"]},
    ], seen
    assert all(b"Email" not in s.body for s in neto.api_requests[before:])


@pytest.mark.parametrize("door", DOORS)
async def test_the_answer_keeps_only_the_allowed_fields(door, app, neto):
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(fake.answer(200, json.dumps(ITEM_ANSWER).encode()))
        r = await call_door(door, client, STORE, "GetItem", bearer(fields=ITEM_FIELDS),
                            json={"Filter": {"SKU": ["A-1", "B-2"]}})  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {
        "Item": [
            {"SKU": "A-1", "AvailableSellQuantity": "7"},
            {"SKU": "B-2", "AvailableSellQuantity": "0"},
        ],
        "CurrentTime": "2026-01-01 00:00:00",
        "Ack": "Success",
    }
    assert b"mia@" not in r.content and b"CostPrice" not in r.content


# Order lines are a nested list; Neto sends a lone record, or a lone line, as an object.
ORDER_FIELDS = {"Order": ["OrderID", "OrderStatus", "OrderLine.SKU", "OrderLine.Quantity"]}
LINE = {"SKU": "A-1", "Quantity": "2", "ProductName": "Mug", "UnitPrice": "9.00"}
ADDRESS = {"ShipFirstName": "Mia", "ShipPhone": "0400 000 000", "ShipStreetLine1": "1 Sample St"}


@pytest.mark.parametrize(
    ("neto_order", "caller_sees"),
    [
        pytest.param(
            [{"OrderID": "N1", "OrderStatus": "New", "Email": "mia@example.com",
              "ShipAddress": ADDRESS, "OrderLine": [LINE, {**LINE, "SKU": "B-2"}]}],
            [{"OrderID": "N1", "OrderStatus": "New",
              "OrderLine": [{"SKU": "A-1", "Quantity": "2"}, {"SKU": "B-2", "Quantity": "2"}]}],
            id="lists",
        ),
        pytest.param(
            {"OrderID": "N2", "Email": "mia@example.com", **ADDRESS, "OrderLine": LINE},
            {"OrderID": "N2", "OrderLine": {"SKU": "A-1", "Quantity": "2"}},
            id="single-objects",
        ),
        pytest.param("", "", id="empty"),
    ],
)  # fmt: skip
async def test_nested_lists_and_single_objects_are_stripped_too(app, neto, neto_order, caller_sees):
    async with await client_for(app) as client:
        await installed(client, neto)
        body = {"Order": neto_order, "Ack": "Success",
                "Messages": {"Warning": [{"Message": "partial"}]}}  # fmt: skip
        neto.api_responses.append(fake.answer(200, json.dumps(body).encode()))
        asked = {"Filter": {"OrderID": ["N1"], "OutputSelector": ["OrderLine"]}}
        r = await client.post(
            f"/invoke/{STORE}/GetOrder", headers=bearer(fields=ORDER_FIELDS), json=asked
        )
    assert r.status_code == 200, r.text
    assert r.json() == {"Order": caller_sees, "Ack": "Success",
                        "Messages": {"Warning": [{"Message": "partial"}]}}  # fmt: skip
    # A name the claim allows only parts of is replaced by those parts on the way up.
    assert neto.api_requests[-1].json()["Filter"]["OutputSelector"] == [
        "OrderLine.SKU",
        "OrderLine.Quantity",
    ]


@pytest.mark.parametrize("door", DOORS)
async def test_without_the_claim_both_ways_are_byte_for_byte(door, app, neto):
    # Odd spacing, an escaped character, a duplicated key: nothing may be "fixed".
    answer = (
        b'{"Item":[{"SKU":"A-1" , "Email":"mia@example.com","Name":"Caf\\u00e9"}],'
        b'"Ack":"Success","Ack":"Warning"}\n'
    )
    asked = b'{ "Filter": {"SKU": ["A-1"], "OutputSelector": ["Email"]} }'
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(fake.answer(200, answer))
        headers = {**bearer(), "Content-Type": "application/json"}
        r = await call_door(door, client, STORE, "GetItem", headers, content=asked)
    assert r.status_code == 200, r.text
    assert r.content == answer
    assert neto.api_requests[-1].body == asked


@pytest.mark.parametrize("door", DOORS)
async def test_an_action_whose_entity_is_not_listed_is_refused_and_not_sent(door, app, neto):
    async with await client_for(app) as client:
        await installed(client, neto)
        before = len(neto.api_requests)
        r = await call_door(door, client, STORE, "GetCustomer", bearer(fields=ITEM_FIELDS),
                            json={"Filter": {"Email": ["mia@example.com"]}})  # fmt: skip
        detail = assert_refused(r, 403, "action_not_allowed")
        assert "Customer" in detail and "`fields`" in detail
        # An empty claim lists nothing: every action is refused.
        r = await call_door(door, client, STORE, "GetItem", bearer(fields={}), json={})
        assert_refused(r, 403, "action_not_allowed")
    assert await sent_since(neto, before) == []


@pytest.mark.parametrize(
    "media",
    [
        pytest.param({"Content-Type": "text/xml", "Accept": "application/json"}, id="xml-body"),
        pytest.param({"Content-Type": "application/json", "Accept": "text/xml"}, id="xml-answer"),
        pytest.param({"Content-Type": "application/json"}, id="no-accept"),
    ],
)  # fmt: skip
async def test_xml_on_the_neto_door_is_refused_with_a_fields_claim(app, neto, media):
    token = bearer(fields=ITEM_FIELDS)["Authorization"].removeprefix("Bearer ")
    async with await client_for(app) as client:
        await installed(client, neto)
        before = len(neto.api_requests)
        r = await client.post(
            f"/neto/{STORE}/do/WS/NetoAPI",
            headers={"NETOAPI_ACTION": "GetItem", "NETOAPI_KEY": token, **media},
            content=b"<GetItem><Filter><SKU>A-1</SKU></Filter></GetItem>"
            if "xml" in media["Content-Type"] else b'{"Filter":{"SKU":["A-1"]}}',
        )  # fmt: skip
        assert r.status_code == 415, r.text
        assert r.headers["x-broker-error"] == "unsupported_media_type"
        assert "`fields`" in r.text
    assert await sent_since(neto, before) == []


@pytest.mark.parametrize("door", DOORS)
async def test_an_answer_that_cannot_be_filtered_is_withheld(door, app, neto):
    async with await client_for(app) as client:
        await installed(client, neto)
        neto.api_responses.append(
            fake.answer(200, b"<html>mia@example.com</html>", content_type="text/html")
        )
        r = await call_door(door, client, STORE, "GetItem", bearer(fields=ITEM_FIELDS),
                            json={"Filter": {"SKU": ["A-1"]}})  # fmt: skip
    assert_refused(r, 502, "upstream_unreachable")
    assert b"mia@" not in r.content


@pytest.mark.parametrize("door", DOORS)
async def test_a_body_that_is_not_a_json_object_is_refused(door, app, neto):
    async with await client_for(app) as client:
        await installed(client, neto)
        before = len(neto.api_requests)
        headers = {**bearer(fields=ITEM_FIELDS), "Content-Type": "application/json"}
        r = await call_door(door, client, STORE, "GetItem", headers, content=b'["Filter"]')
        assert_refused(r, 400, "validation_error")
    assert await sent_since(neto, before) == []


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"fields": ["SKU"]}, "must be an object"),
        ({"fields": {"item": ["SKU"]}}, "not a Neto entity"),
        ({"fields": {"Item": "SKU"}}, "must be a list"),
        ({"fields": {"Item": ["SKU", ""]}}, "must be a list"),
        ({"fields": {"Item": ["OrderLine..SKU"]}}, "must be a list"),
        ({"fields": {"Item": [7]}}, "must be a list"),
        ({"fields": {"Item": ["SKU"]}, "scope": "invoke credentials:read"}, "credentials:read"),
        # `apps` is enforced now (tests/api/test_neto_apps.py); only its shape is checked here.
        ({"apps": ["Reviews"]}, "`apps` claim must list add-on names"),
        ({"apps": "reviews", "fields": {"Item": ["SKU"]}}, "`apps`"),
    ],
)
async def test_a_claim_of_the_wrong_shape_or_not_enforced_is_refused(app, claims, says):
    now = int(time.time())
    async with await client_for(app) as client:
        token = hs256({"sub": "stock-sync", "aud": AUDIENCE, "iat": now, "exp": now + 600,
                       "scope": "invoke", "stores": [STORE], **claims})  # fmt: skip
        for r in (
            await client.post(f"/invoke/{STORE}/GetItem", json={},
                              headers={"Authorization": f"Bearer {token}"}),
            await client.post(f"/neto/{STORE}/do/WS/NetoAPI", json={},
                              headers={"NETOAPI_ACTION": "GetItem", "NETOAPI_KEY": token,
                                       "Accept": "application/json"}),
        ):  # fmt: skip
            detail = assert_refused(r, 401, "unauthorized")
            assert says in detail, detail


def test_broker_token_mint_fields():
    run = CliRunner().invoke(
        cli, ["token", "mint", "--sub", "stock-sync", "--scope", "invoke", "--stores", STORE,
              "--actions", "GetItem", "--fields", '{"Item": ["SKU", "AvailableSellQuantity"]}'],
        env=ENV,
    )  # fmt: skip
    assert run.exit_code == 0, run.output
    caller = verifier().verify(run.stdout.strip())
    assert caller.fields == {"Item": ("SKU", "AvailableSellQuantity")}

    for bad in ('{"Item": "SKU"}', "Item=SKU", '{"Custmer": ["Email"]}', "null"):
        run = CliRunner().invoke(
            cli, ["token", "mint", "--sub", "s", "--scope", "invoke", "--fields", bad], env=ENV
        )
        assert run.exit_code == 2, (bad, run.output)
        assert "--fields" in run.output and "eyJ" not in run.stdout, run.output
    run = CliRunner().invoke(cli, ["token", "mint", "--sub", "s", "--scope", "credentials:read",
                                   "--fields", '{"Item": ["SKU"]}'], env=ENV)  # fmt: skip
    assert run.exit_code == 2 and "eyJ" not in run.stdout, run.output


@pytest.mark.parametrize(
    "names", [("OrderLine", "OrderLine.SKU"), ("OrderLine.SKU", "OrderLine")], ids=["first", "last"]
)
def test_a_name_allowed_whole_keeps_its_records_whole_whatever_else_is_listed(names):
    grant = FieldGrant("GetOrder", "Order", names)
    answer = {"Order": {"OrderLine": [LINE], "Email": "mia@example.com"}, "Ack": "Success"}
    assert json.loads(grant.strip(json.dumps(answer).encode())) == {
        "Order": {"OrderLine": [LINE]},
        "Ack": "Success",
    }
