"""Someone who can write the database but holds no key cannot redirect a store's secret:
the sealed values are bound to the store domain and auth method, so a changed row does not
open (`store_secret_unreadable`, logged at ERROR) and nothing is sent anywhere."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
from dataclasses import replace
from typing import Any

import pytest
from alembic import command
from sqlalchemy import update

from service.db import utcnow
from service.installs.models import Install
from service.security.crypto import Context, KeyRing, generate_key
from tests.support import alembic_config, assert_error, register_api_key_store

STORE = "K7"
DOMAIN = "keys.example.com"


async def tamper(app: Any, **values: Any) -> None:
    async with app.state.services.sessionmaker() as session, session.begin():
        await session.execute(
            update(Install).where(Install.store_id == STORE).values(updated_at=utcnow(), **values)
        )
    app.state.services.store_cache.clear()  # as after an eviction, a restart, the max age


@pytest.mark.parametrize(
    "change",
    [{"store_domain": "attacker.example.net"}, {"auth_method": "oauth"}],
    ids=["store_domain", "auth_method"],
)
async def test_a_row_changed_around_the_broker_does_not_open(
    app: Any, client: Any, neto: Any, auth: Any, caplog: pytest.LogCaptureFixture,
    change: dict[str, str],
) -> None:  # fmt: skip
    await register_api_key_store(client, auth("installs:admin"), STORE, DOMAIN)
    neto.add_api_key_store(DOMAIN, "api-user", "api-key-" + "k" * 24)
    invoker = auth("invoke", stores=[STORE])
    assert (await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker)).is_success
    neto.api_requests.clear()

    await tamper(app, **change)
    with caplog.at_level(logging.ERROR, logger="broker.stores"):
        r = await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker)
    assert_error(r, 500, "store_secret_unreadable")
    assert neto.api_requests == [] and neto.stray_requests == [], "the secret went somewhere"
    assert any(rec.levelno == logging.ERROR for rec in caplog.records)
    r = await client.get(f"/credentials/{STORE}", headers=auth("credentials:read", stores=["*"]))
    assert_error(r, 500, "store_secret_unreadable")
    assert "attacker" not in r.text
    r = await client.get(f"/installs/{STORE}", headers=auth("installs:read"))
    assert r.json()["secret_readable"] is False

    # Putting the row back as it was makes it whole again (rollback, the residual risk).
    await tamper(app, store_domain=DOMAIN, auth_method="api_key")
    assert (await client.post(f"/invoke/{STORE}/GetItem", json={}, headers=invoker)).is_success


def test_the_migration_rebinds_old_rows_and_the_old_form_no_longer_opens(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows sealed before the migration (bound to the store id only) are re-sealed with
    the keys from BROKER_ENCRYPTION_KEYS; a value sealed the old way afterwards is refused;
    without the keys the migration stops with a message naming the variable."""
    from service.installs.sealing import Binding, open_credentials

    path = tmp_path / "old.db"
    url = f"sqlite+aiosqlite:///{path}"
    spec = f"k1:{generate_key()}"
    keyring = KeyRing.parse(spec)
    command.upgrade(alembic_config(url), "7c1d4e2a9b10")

    def old_sealed(store_id: str) -> str:
        return keyring.seal(b'{"username":"u","api_key":"secret"}',
                            Context("installs", "secret_sealed", store_id))  # fmt: skip

    def insert(store_id: str) -> None:
        with sqlite3.connect(path) as conn:
            conn.execute(
                "INSERT INTO installs (store_id, store_domain, auth_method, status,"
                " secret_sealed, key_id, installed_at, updated_at)"
                " VALUES (?, ?, 'api_key', 'active', ?, 'k1', ?, ?)",
                (store_id, f"{store_id.lower()}.example.com", old_sealed(store_id),
                 "2026-01-01 00:00:00.000000", "2026-01-01 00:00:00.000000"),
            )  # fmt: skip

    insert("OLD1")
    monkeypatch.delenv("BROKER_ENCRYPTION_KEYS", raising=False)
    with pytest.raises(RuntimeError, match="BROKER_ENCRYPTION_KEYS"):
        command.upgrade(alembic_config(url), "head")
    monkeypatch.setenv("BROKER_ENCRYPTION_KEYS", spec)
    command.upgrade(alembic_config(url), "head")
    insert("OLD2")  # sealed the old way after the migration: a restored or forged value

    async def load() -> dict[str, Install]:
        from sqlalchemy import select
        from sqlalchemy.ext.asyncio import create_async_engine

        from service.db import create_sessionmaker

        engine = create_async_engine(url)
        try:
            async with create_sessionmaker(engine)() as session:
                rows = (await session.execute(select(Install))).scalars().all()
                return {row.store_id: row for row in rows}
        finally:
            await engine.dispose()

    rows = asyncio.run(load())
    assert open_credentials(keyring, rows["OLD1"], None).secret == "secret"
    assert Binding.of(rows["OLD1"]).store_domain == "old1.example.com"
    from service.errors import StoreSecretUnreadable

    with pytest.raises(StoreSecretUnreadable):
        open_credentials(keyring, rows["OLD2"], None)
    with pytest.raises(RuntimeError, match="no downgrade"):
        command.downgrade(alembic_config(url), "7c1d4e2a9b10")


@pytest.mark.parametrize(
    ("username", "opens"),
    [("John Smith", True), (" ~", True), ("a\nb", False), ("caf\u00e9", False), ("\x7f", False)],
    ids=["space", "printable-ends", "newline", "non-ascii", "delete"],
)
def test_opened_credentials_are_printable_ascii_or_refused(username: str, opens: bool) -> None:
    """A value that would split a header is refused when opened, whoever sealed it; a
    printable one, spaces included (registration allows them), opens with its row's
    change number."""
    from service.errors import StoreSecretUnreadable
    from service.installs.sealing import (
        Binding,
        credentials_fingerprint,
        fingerprint,
        open_credentials,
        sealed_values,
    )

    keyring = KeyRing.parse(f"k1:{generate_key()}")
    binding = Binding("N1", "shop.example.com", "api_key")
    sealed = sealed_values(
        keyring, binding, secret={"username": username, "api_key": "key-1"}, user=None,
        billing=None,
    )  # fmt: skip
    install = Install(
        store_id="N1", store_domain="shop.example.com", auth_method="api_key",
        status="active", change_seq=7, **sealed,
    )  # fmt: skip
    if opens:
        creds = open_credentials(keyring, install, None)
        assert (creds.who, creds.secret, creds.change_seq) == (username, "key-1", 7)
        assert credentials_fingerprint(creds) == fingerprint("key-1")
        assert credentials_fingerprint(replace(creds, secret=None)) is None
    else:
        with pytest.raises(StoreSecretUnreadable):
            open_credentials(keyring, install, None)


def test_a_fingerprint_is_the_first_16_hex_digits_of_the_secrets_sha256():
    """Stored in every install row and shown to operators: the same secret must give the
    same fingerprint in every release, or a stored one stops matching."""
    from service.installs.sealing import fingerprint

    assert fingerprint("tok_abc") == "sha256:" + hashlib.sha256(b"tok_abc").hexdigest()[:16]
    assert fingerprint("tok_abc") == "sha256:26cfed5080d011f7"
