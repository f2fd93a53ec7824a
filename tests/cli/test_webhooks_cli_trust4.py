"""`broker webhooks add | remove | enable` check their input as `POST /webhooks` does and
write the same audit rows as the API (actor `cli`); `list` shows redacted URLs."""

from __future__ import annotations

import re

import pytest

from tests.cli.test_installs_list import run_cli
from tests.support import audit_rows

GOOD = "http://127.0.0.1:9/hook"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["http://hooks.example/in\x01side"], "url"),  # a control character
        (["http://hooks.example/" + "a" * 2048], "url"),  # over the API's 2048
        ([GOOD, "--description", "x" * 257], "description"),
        ([GOOD, "--description", "line\nbreak"], "description"),
        ([GOOD, "--event", "install.exploded"], "event_types"),
        ([GOOD, *[a for _ in range(17) for a in ("--event", "install.created")]], "event_types"),
    ],
    ids=["control-character", "long-url", "long-description", "newline", "unknown-type",
         "17-types"],
)  # fmt: skip
async def test_add_refuses_what_the_api_refuses(app, client, auth, database_url, args, says):
    result = await run_cli(database_url, "webhooks", "add", *args)
    assert result.exit_code == 1, result.output
    assert "not a valid subscription" in result.output and says in result.output
    listed = await client.get("/webhooks", headers=auth("installs:read"))
    assert listed.json()["items"] == [], "a refused subscription was written"


async def test_every_change_is_audited_and_list_redacts(app, client, database_url):
    added = await run_cli(database_url, "webhooks", "add", GOOD + "?token=s3cret", "--event",
                          "install.created", "--event", "install.created")  # fmt: skip
    assert added.exit_code == 0, added.output
    webhook_id = re.search(r"id: (wh_\S+)", added.output).group(1)  # type: ignore[union-attr]
    listed = await run_cli(database_url, "webhooks", "list")
    assert listed.exit_code == 0 and GOOD + "?…" in listed.output
    assert "s3cret" not in listed.output
    assert (await run_cli(database_url, "webhooks", "enable", webhook_id)).exit_code == 0
    assert (await run_cli(database_url, "webhooks", "remove", webhook_id)).exit_code == 0

    rows = [r for r in await audit_rows(app) if r["event"].startswith("webhook.")]
    assert [(r["event"], r["actor"], r["details"]["webhook_id"]) for r in rows] == [
        ("webhook.created", "cli", webhook_id),
        ("webhook.enabled", "cli", webhook_id),
        ("webhook.removed", "cli", webhook_id),
    ]
    assert rows[0]["details"]["url"] == GOOD + "?…"


async def test_rotate_secret_prints_a_new_secret_and_is_audited(app, client, auth, database_url):
    added = await run_cli(database_url, "webhooks", "add", GOOD)
    webhook_id = re.search(r"id: (wh_\S+)", added.output).group(1)  # type: ignore[union-attr]
    first = re.search(r"secret: (whsec_\S+)", added.output).group(1)  # type: ignore[union-attr]
    rotated = await run_cli(database_url, "webhooks", "rotate-secret", webhook_id,
                            "--overlap-seconds", "60")  # fmt: skip
    assert rotated.exit_code == 0, rotated.output
    second = re.search(r"secret: (whsec_\S+)", rotated.output).group(1)  # type: ignore[union-attr]
    assert second != first
    r = await client.get(f"/webhooks/{webhook_id}", headers=auth("installs:read"))
    assert r.json()["previous_secret_until"] is not None

    too_long = await run_cli(database_url, "webhooks", "rotate-secret", webhook_id,
                             "--overlap-seconds", str(8 * 86400))  # fmt: skip
    assert too_long.exit_code == 1 and "overlap must be" in too_long.output
    unknown = await run_cli(database_url, "webhooks", "rotate-secret", "wh_nope")
    assert unknown.exit_code == 1 and "No such webhook subscription" in unknown.output
    rows = [r for r in await audit_rows(app) if r["event"] == "webhook.secret_rotated"]
    assert [(r["actor"], r["details"]) for r in rows] == [
        ("cli", {"webhook_id": webhook_id, "overlap_seconds": 60})
    ]
