"""`broker installs list` and `--help` on every command, against the migrated database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from service.cli import app
from tests.support import ENC_KEY, HS_KID, HS_SECRET, register_api_key_store

COMMANDS = [
    [], ["serve"], ["migrate"], ["token"], ["token", "mint"], ["keys"], ["keys", "generate"],
    ["installs"], ["installs", "list"], ["audit"], ["audit", "prune"],
    ["webhooks"], ["webhooks", "add"], ["webhooks", "list"], ["webhooks", "remove"],
]  # fmt: skip


def cli_env(database_url: str) -> dict[str, str]:
    return {
        "BROKER_ENV": "production",
        "BROKER_DATABASE_URL": database_url,
        "BROKER_ENCRYPTION_KEYS": f"k1:{ENC_KEY}",
        "BROKER_JWT_HS256_KEYS": f"{HS_KID}:{HS_SECRET}",
    }


async def run_cli(database_url: str, *args: str):
    # In a thread: the command runs its own event loop with asyncio.run().
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, app, list(args), env=cli_env(database_url))


async def register(client, auth, store_id, domain):
    await register_api_key_store(
        client, auth("installs:admin"), store_id, domain, username="u",
        api_key="cli-secret-key-" + "z" * 12,
    )  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "broker")
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [*command, "--help"], prog_name="broker")
    assert result.exit_code == 0, result.output
    assert "Usage: broker" in result.output


async def test_installs_list_prints_a_table_newest_first(client, app, neto, auth, database_url):
    await register(client, auth, "N1", "one.example.com")
    await register(client, auth, "N2", "two.example.com")
    bundle = await client.get("/credentials/N2", headers=auth("credentials:read", stores=["N2"]))
    assert bundle.status_code == 200
    await app.state.services.audit_writer.stamp_last_used()  # not the 5 s wait for it
    await client.delete("/installs/N1", headers=auth("installs:admin"))

    result = await run_cli(database_url, "installs", "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["STORE", "ID", "DOMAIN", "AUTH", "STATUS", "APP", "INSTALLED",
                                "LAST", "USED"]  # fmt: skip
    n2, n1 = lines[1].split(), lines[2].split()
    assert n2[:5] == ["N2", "two.example.com", "api_key", "active", "default"]
    assert n2[-1] != "never", "the bundle marked N2 as used"
    assert n1[:4] == ["N1", "one.example.com", "api_key", "revoked"]
    assert n1[-1] == "never"
    assert lines[-1] == "2 installs"
    assert "cli-secret-key" not in result.output


async def test_installs_list_filters_and_limits(client, auth, database_url):
    for n in range(1, 4):
        await register(client, auth, f"N{n}", f"s{n}.example.com")
    await client.delete("/installs/N2", headers=auth("installs:admin"))

    revoked = await run_cli(database_url, "installs", "list", "--status", "revoked")
    assert revoked.exit_code == 0, revoked.output
    assert [line.split()[0] for line in revoked.output.splitlines()[1:-1]] == ["N2"]

    limited = await run_cli(database_url, "installs", "list", "--limit", "2")
    assert [line.split()[0] for line in limited.output.splitlines()[1:-1]] == ["N3", "N2"]
    assert limited.output.splitlines()[-1] == "2 installs shown; more exist (raise --limit)"

    bad = await run_cli(database_url, "installs", "list", "--status", "gone")
    assert bad.exit_code == 2
    empty = await run_cli(database_url, "installs", "list", "--search", "nothing-matches")
    assert empty.exit_code == 0 and empty.output == "0 installs\n"


async def test_installs_list_filters_by_app(client, app, auth, database_url):
    await register(client, auth, "N1", "one.example.com")
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(text("UPDATE installs SET app = 'staging' WHERE store_id = 'N1'"))
    await register(client, auth, "N2", "two.example.com")
    staging = await run_cli(database_url, "installs", "list", "--app", "staging")
    assert staging.exit_code == 0, staging.output
    assert [line.split()[0] for line in staging.output.splitlines()[1:-1]] == ["N1"]
    assert staging.output.splitlines()[1].split()[4] == "staging"
    default = await run_cli(database_url, "installs", "list", "--app", "default")
    assert [line.split()[0] for line in default.output.splitlines()[1:-1]] == ["N2"]
    bad = await run_cli(database_url, "installs", "list", "--app", "Not An App")
    assert bad.exit_code == 2 and "--app" in bad.output


def test_installs_list_says_when_the_database_cannot_be_read():
    url = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"  # nothing listens on port 1
    result = CliRunner().invoke(app, ["installs", "list"], env=cli_env(url))
    assert result.exit_code == 1
    assert "cannot read installs" in result.output


def test_the_installed_entry_point_runs(database_url):
    broker = Path(sys.executable).with_name("broker")
    env = {**os.environ, **cli_env(database_url)}
    done = subprocess.run(
        [str(broker), "installs", "list"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].endswith("installs")
