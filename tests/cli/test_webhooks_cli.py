"""`broker webhooks add | list | remove | enable` against the migrated database: the
subscription the CLI adds is the one the API lists, and its secret signs deliveries."""

from __future__ import annotations

import re

from tests.cli.test_installs_list import run_cli
from tests.fakes.receiver import verify_signature
from tests.support import register_api_key_store


async def test_add_list_remove(database_url, client, auth, receiver):
    added = await run_cli(database_url, "webhooks", "add", receiver.url, "--description", "sync")
    assert added.exit_code == 0, added.output
    webhook_id = re.search(r"id: (wh_\S+)", added.output).group(1)  # type: ignore[union-attr]
    secret = re.search(r"secret: (whsec_\S+)", added.output).group(1)  # type: ignore[union-attr]

    listed = await run_cli(database_url, "webhooks", "list")
    assert listed.exit_code == 0 and webhook_id in listed.output and "sync" in listed.output
    assert secret not in listed.output
    r = await client.get(f"/webhooks/{webhook_id}", headers=auth("installs:read"))
    assert r.status_code == 200 and r.json()["created_by"] == "cli"

    await register_api_key_store(client, auth("installs:admin"), "C1")
    [got] = await receiver.wait_for(1)
    assert verify_signature(secret, got.headers, got.body)

    assert (await run_cli(database_url, "webhooks", "enable", webhook_id)).exit_code == 0
    removed = await run_cli(database_url, "webhooks", "remove", webhook_id)
    assert removed.exit_code == 0, removed.output
    again = await run_cli(database_url, "webhooks", "remove", webhook_id)
    assert again.exit_code == 1 and "No such webhook subscription" in again.output
    r = await client.get(f"/webhooks/{webhook_id}", headers=auth("installs:read"))
    assert r.status_code == 404


async def test_add_refuses_a_bad_url(database_url):
    result = await run_cli(database_url, "webhooks", "add", "ftp://x.example/")
    assert result.exit_code == 1 and "http or https" in result.output


async def test_add_with_stores_and_raw(database_url, client, auth):
    added = await run_cli(database_url, "webhooks", "add", "http://sync.internal:8080/hooks",
                          "--store", "S2", "--store", "S1", "--store", "S2", "--raw")  # fmt: skip
    assert added.exit_code == 0, added.output
    webhook_id = re.search(r"id: (wh_\S+)", added.output).group(1)  # type: ignore[union-attr]
    r = await client.get(f"/webhooks/{webhook_id}", headers=auth("installs:read"))
    assert r.status_code == 200, r.text
    assert r.json()["stores"] == ["S1", "S2"] and r.json()["include_raw"] is True

    plain = await run_cli(database_url, "webhooks", "add", "http://sync.internal:8080/all")
    plain_id = re.search(r"id: (wh_\S+)", plain.output).group(1)  # type: ignore[union-attr]
    listed = await client.get("/webhooks", headers=auth("installs:read"))
    assert listed.status_code == 200, listed.text
    shown = {w["id"]: (w["stores"], w["include_raw"]) for w in listed.json()["items"]}
    assert shown == {webhook_id: (["S1", "S2"], True), plain_id: ([], False)}


async def test_add_refuses_a_store_id_the_api_refuses(database_url, client, auth):
    result = await run_cli(database_url, "webhooks", "add", "http://sync.internal:8080/hooks",
                           "--store", "not a store")  # fmt: skip
    assert result.exit_code == 1 and "stores.0" in result.output, result.output
    r = await client.get("/webhooks", headers=auth("installs:read"))
    assert r.status_code == 200 and r.json()["items"] == [], r.text
