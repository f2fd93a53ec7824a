"""`broker notifications url | rotate STORE` against the migrated database: the URL the
CLI prints is one the app takes notifications on, a second `url` hides the token and
changes nothing, `rotate` kills the previous URL, and each issue is audited as the CLI's."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from service.cli import app as cli_app
from tests.api.test_neto_notify import order_xml, post, written
from tests.cli.test_installs_list import run_cli
from tests.support import assert_error, audit_rows, register_api_key_store

TOKEN_CHARS = 3 + 43  # "nt_" and 32 url-safe bytes


def printed_url(output: str, store_id: str) -> str:
    """The one line of the output that is the store's URL (the rest is advice)."""
    [line] = [line for line in output.splitlines() if f"/neto-notify/{store_id}/" in line]
    return line.strip()


async def feed_orders(client: httpx.AsyncClient, auth) -> list[str]:
    r = await client.get("/events?limit=100", headers=auth("events:read"))
    assert r.status_code == 200, r.text
    return [e["data"]["entity_ids"][0] for e in r.json()["events"]
            if e["type"] == "neto.order.updated"]  # fmt: skip


async def test_url_issues_once_then_hides_and_rotate_replaces(app, client, auth, database_url):
    await register_api_key_store(client, auth("installs:admin"), "S1")

    first = await run_cli(database_url, "notifications", "url", "S1")
    assert first.exit_code == 0, first.output
    url = printed_url(first.output, "S1")
    token = url.rsplit("/", 1)[1]
    assert token.startswith("nt_") and len(token) == TOKEN_CHARS, url
    assert "not shown again" in first.output
    r = await post(client, url, order_xml(1, order_id="N1"))
    assert r.status_code == 200, r.text
    assert r.json()["event_id"].startswith("evt_")
    assert await feed_orders(client, auth) == ["N1"]

    second = await run_cli(database_url, "notifications", "url", "S1")
    assert second.exit_code == 0, second.output
    hidden = printed_url(second.output, "S1")
    assert hidden.endswith("/neto-notify/S1/nt_…"), hidden
    assert token not in second.output
    assert "by cli (live)" in second.output
    assert (await post(client, url, order_xml(2, order_id="N2"))).status_code == 200

    rotated = await run_cli(database_url, "notifications", "rotate", "S1")
    assert rotated.exit_code == 0, rotated.output
    new_url = printed_url(rotated.output, "S1")
    assert new_url != url and new_url.rsplit("/", 1)[1].startswith("nt_")
    assert_error(await post(client, url, order_xml(3, order_id="N3")), 401, "unauthorized")
    assert (await post(client, new_url, order_xml(4, order_id="N4"))).status_code == 200
    assert await feed_orders(client, auth) == ["N1", "N2", "N4"]
    assert await written(database_url) == (3, 3)

    # The API's view agrees: issued, by the CLI, the token hidden.
    view = await client.get("/installs/S1/notifications", headers=auth("installs:admin"))
    assert view.json()["issued"] is True and view.json()["issued_by"] == "cli"
    assert new_url.rsplit("/", 1)[1] not in view.text

    # One for the first `url` and one for `rotate`: the second `url` issued nothing.
    issued = [row for row in await audit_rows(app) if row["event"] == "notifications.token_issued"]
    assert [(row["actor"], row["store_id"], row["details"].get("replaced")) for row in issued] == [
        ("cli", "S1", False), ("cli", "S1", True),
    ]  # fmt: skip
    for row in issued:
        assert token not in str(row["details"])


@pytest.mark.parametrize("command", ["url", "rotate"])
async def test_an_unknown_store_exits_1_with_a_sentence(app, database_url, command):
    result = await run_cli(database_url, "notifications", command, "NOPE")
    assert result.exit_code == 1, result.output
    assert "No install exists for this store." in result.output, result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit), result.exception  # typer.Exit(1), no crash
    assert "/neto-notify/" not in result.output
    assert [row for row in await audit_rows(app) if row["event"].startswith("notifications.")] == []


async def test_a_revoked_store_gets_no_new_url(app, client, auth, database_url):
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, "S1")
    issued = await run_cli(database_url, "notifications", "url", "S1")
    url = printed_url(issued.output, "S1")
    assert (await client.delete("/installs/S1", headers=admin)).status_code == 200

    rotated = await run_cli(database_url, "notifications", "rotate", "S1")
    assert rotated.exit_code == 1, rotated.output
    assert "revoked" in rotated.output and "/neto-notify/" not in rotated.output
    assert "Traceback" not in rotated.output
    assert_error(await post(client, url), 410, "store_revoked")
    # `url` says so too, and issues nothing.
    shown = await run_cli(database_url, "notifications", "url", "S1")
    assert shown.exit_code == 0, shown.output
    assert printed_url(shown.output, "S1").endswith("/nt_…") and "revoked" in shown.output
    issued_rows = [r for r in await audit_rows(app) if r["event"] == "notifications.token_issued"]
    assert len(issued_rows) == 1
    assert await written(database_url) == (0, 0)


async def test_a_revoked_store_that_never_had_a_url_gets_none(app, client, auth, database_url):
    admin = auth("installs:admin")
    await register_api_key_store(client, admin, "S2")
    assert (await client.delete("/installs/S2", headers=admin)).status_code == 200
    result = await run_cli(database_url, "notifications", "url", "S2")
    assert result.exit_code == 1 and "revoked" in result.output, result.output
    assert "/neto-notify/" not in result.output


@pytest.mark.parametrize("command", [[], ["url"], ["rotate"]])
def test_notifications_commands_have_help(command):
    result = CliRunner().invoke(cli_app, ["notifications", *command, "--help"], prog_name="broker")
    assert result.exit_code == 0, result.output
    assert "Usage: broker notifications" in result.output
