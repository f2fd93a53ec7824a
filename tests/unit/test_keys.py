"""`broker keys rotate` and `broker keys check` on a real database (both backends), over
every table with sealed columns: installs and webhook signing secrets. Both read the key
id inside each sealed value, not the `key_id` column a database writer can change."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from service.cli import app as cli
from service.db import create_sessionmaker
from service.events import subscriptions
from service.events.models import Webhook
from service.installs import repository as stores
from service.installs import sealing
from service.installs.models import AuthMethod, Install
from service.keys import rotation as keys
from service.security.crypto import KeyRing, generate_key, key_id_of
from tests.conftest import truncate
from tests.support import HS_KID, HS_SECRET

OLD, NEW = f"k1:{generate_key()}", f"k2:{generate_key()}"
USER = {"id": "u-1", "email": "owner@example.com"}
BILLING = {"city": "Brisbane", "country_code": "AU"}


@pytest.fixture
def db(database_url: str) -> Iterator[str]:
    yield database_url
    asyncio.run(truncate(database_url))


def run_cli(database_url: str, encryption_keys: str, *args: str) -> Any:
    env = {
        "BROKER_ENV": "production",
        "BROKER_DATABASE_URL": database_url,
        "BROKER_ENCRYPTION_KEYS": encryption_keys,
        "BROKER_JWT_HS256_KEYS": f"{HS_KID}:{HS_SECRET}",
    }
    return CliRunner().invoke(cli, list(args), env=env)


async def seed(url: str, spec: str, store_ids: list[str], **kwargs: Any) -> None:
    """Installs sealed under the primary key of `spec`, as a broker configured so would."""
    keyring = KeyRing.parse(spec)
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        for sid in store_ids:
            await stores.upsert(
                session, keyring, store_id=sid, store_domain=f"{sid.lower()}.example.com",
                auth_method=kwargs.get("auth_method", AuthMethod.oauth),
                secret={"access_token": f"tok-{sid}"},
                user=kwargs.get("user", USER), billing=kwargs.get("billing", BILLING),
            )  # fmt: skip
    await engine.dispose()


async def revoke(url: str, store_id: str) -> None:
    """A revoke that keeps the profile (BROKER_REVOKED_PROFILE_RETENTION_DAYS set): the
    row still holds sealed values, which rotation must move like any other."""
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        await stores.revoke(session, store_id, keep_profile=True)
    await engine.dispose()


async def rows(url: str, model: Any = Install, key: str = "store_id") -> dict[str, Any]:
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session:
        found = {getattr(r, key): r for r in (await session.execute(select(model))).scalars()}
    await engine.dispose()
    return found


async def seed_webhook(url: str, spec: str) -> tuple[str, str]:
    """A subscription whose secret is sealed under the primary key of `spec`."""
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        webhook, secret = await subscriptions.create(
            session, KeyRing.parse(spec), url="https://hooks.example.com/in",
            event_types=[], description=None, actor="test",
        )  # fmt: skip
    await engine.dispose()
    return webhook.id, secret


def sealed_kids(install: Install) -> set[str]:
    return {
        key_id_of(v)
        for v in (install.secret_sealed, install.user_sealed, install.billing_sealed)
        if v is not None
    }


def test_rotate_moves_every_install_to_the_primary_key_and_check_says_which_keys_are_needed(
    db: str,
) -> None:
    active = [f"S{i:03d}" for i in range(7)]
    asyncio.run(seed(db, OLD, [*active, "S900"]))
    asyncio.run(seed(db, OLD, ["S901"], auth_method=AuthMethod.api_key, user=None, billing=None))
    asyncio.run(revoke(db, "S900"))  # user and billing stay sealed under k1
    asyncio.run(revoke(db, "S901"))  # nothing sealed any more

    both = f"{NEW},{OLD}"
    before = run_cli(db, both, "keys", "check")
    assert before.exit_code == 0, before.output
    assert (
        "key 'k2' (primary): seals 0 installs, 0 webhook secrets and 0 idempotent answers"
    ) in before.output
    assert (
        "key 'k1': seals 8 installs, 0 webhook secrets and 0 idempotent answers; still needed"
    ) in before.output

    result = run_cli(db, both, "keys", "rotate", "--batch-size", "3")
    assert result.exit_code == 0, result.output
    assert "rotated 8 installs to key 'k2' (1 held nothing sealed; 0 changed" in result.output

    after = asyncio.run(rows(db))
    new_only = KeyRing.parse(NEW)  # the old key is no longer needed to open anything
    for sid in active:
        assert after[sid].key_id == "k2" and sealed_kids(after[sid]) == {"k2"}, sid
        creds = sealing.open_credentials(new_only, after[sid], "client")
        assert creds.headers["X_SECRET_KEY"] == f"tok-{sid}"
        profile = sealing.open_profile(new_only, after[sid])
        assert (profile.user, profile.billing, profile.readable) == (USER, BILLING, True)
    assert after["S900"].key_id == "k2" and after["S900"].secret_sealed is None
    profile = sealing.open_profile(new_only, after["S900"])
    assert (profile.user, profile.billing, profile.readable) == (USER, BILLING, True)
    assert after["S901"].key_id is None and sealed_kids(after["S901"]) == set()

    unused = run_cli(db, both, "keys", "check")
    assert unused.exit_code == 1, unused.output
    assert "key 'k1' is unused; remove it" in unused.output

    ok = run_cli(db, NEW, "keys", "check")
    assert ok.exit_code == 0, ok.output
    assert "key 'k2' (primary): seals 8 installs" in ok.output and "keys ok" in ok.output

    again = run_cli(db, both, "keys", "rotate")
    assert again.exit_code == 0, again.output
    assert "nothing to rotate" in again.output
    assert {sid: r.secret_sealed for sid, r in asyncio.run(rows(db)).items()} == {
        sid: r.secret_sealed for sid, r in after.items()
    }, "a second run must not rewrite anything"


@pytest.mark.parametrize("stuck", ["installs", "webhook secrets"])
def test_check_and_rotate_fail_when_the_old_key_was_removed_before_rotating(
    db: str, stuck: str
) -> None:
    if stuck == "installs":
        asyncio.run(seed(db, OLD, ["S001", "S002"]))
    else:  # the installs are fine; only the signing secrets are under the removed key
        asyncio.run(seed(db, NEW, ["S001"]))
        for _ in range(2):
            asyncio.run(seed_webhook(db, OLD))
    message = f"2 {stuck} are sealed under key 'k1', which is not configured"
    check = run_cli(db, NEW, "keys", "check")
    assert check.exit_code == 1, check.output
    assert message in check.output

    rotate = run_cli(db, NEW, "keys", "rotate")
    assert rotate.exit_code == 1, rotate.output
    assert message in rotate.output
    left = asyncio.run(rows(db)) if stuck == "installs" else asyncio.run(rows(db, Webhook, "id"))
    assert {r.key_id for r in left.values()} == {"k1"}, "nothing was touched"
    assert "tok-" not in check.output + rotate.output
    assert "whsec_" not in check.output + rotate.output


def test_check_fails_for_an_unused_old_key_and_passes_with_only_the_primary(db: str) -> None:
    asyncio.run(seed(db, NEW, ["S001"]))
    assert run_cli(db, NEW, "keys", "check").exit_code == 0
    stale = run_cli(db, f"{NEW},{OLD}", "keys", "check")
    assert stale.exit_code == 1 and "key 'k1' is unused; remove it" in stale.output


async def test_a_row_changed_between_read_and_write_is_left_to_its_writer(db: str) -> None:
    await seed(db, OLD, ["S001", "S002", "S003"])
    keyring = KeyRing.parse(f"{NEW},{OLD}")
    engine = create_async_engine(db)
    sessionmaker = create_sessionmaker(engine)
    try:
        table = sealing.ROTATION
        read = await keys.read_batch(sessionmaker, table, "k2", "", 10)
        assert [row[0] for row in read] == ["S001", "S002", "S003"]
        batch = [keys.reseal(keyring, table, *row) for row in read]
        # Between the read and the write: S001 is revoked, S002 reinstalled with a new token.
        await revoke(db, "S001")
        async with sessionmaker() as session, session.begin():
            await stores.upsert(
                session, keyring, store_id="S002", store_domain="s002.example.com",
                auth_method=AuthMethod.oauth, secret={"access_token": "fresh"},
                user=USER, billing=BILLING,
            )  # fmt: skip
        async with sessionmaker() as session, session.begin():
            written = await keys.write_batch(session, table, keyring.primary, batch)
        assert [r.row_id for r in written] == ["S003"]

        now = await rows(db)
        assert now["S001"].secret_sealed is None, "the revoke must not be undone"
        creds = sealing.open_credentials(keyring, now["S002"], "client")
        assert creds.headers["X_SECRET_KEY"] == "fresh", "the reinstall must not be overwritten"

        # A full run picks up the revoked row's remaining values.
        report = await keys.rotate(sessionmaker, keyring, table)
        assert report.ok and report.rotated == 1 and report.changed_concurrently == 0
        final = await rows(db)
        assert {sid: r.key_id for sid, r in final.items()} == dict.fromkeys(final, "k2")
        assert sealed_kids(final["S001"]) == {"k2"}
    finally:
        await engine.dispose()


# -- webhook signing secrets ----------------------------------------------------------


def test_rotate_moves_webhook_secrets_to_the_primary_key_with_the_installs(db: str) -> None:
    asyncio.run(seed(db, OLD, ["S001"]))
    seeded = [asyncio.run(seed_webhook(db, OLD)) for _ in range(3)]
    both = f"{NEW},{OLD}"
    before = run_cli(db, both, "keys", "check")
    assert before.exit_code == 0, before.output
    assert (
        "key 'k1': seals 1 installs, 3 webhook secrets and 0 idempotent answers; still needed"
    ) in before.output

    result = run_cli(db, both, "keys", "rotate", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "rotated 1 installs to key 'k2'" in result.output
    assert "rotated 3 webhook secrets to key 'k2'" in result.output

    after = asyncio.run(rows(db, Webhook, "id"))
    new_only = KeyRing.parse(NEW)
    for webhook_id, secret in seeded:
        row = after[webhook_id]
        assert row.key_id == "k2" and key_id_of(row.secret_sealed) == "k2", webhook_id
        assert subscriptions.open_secret(new_only, row) == secret, "the same secret, re-sealed"
    ok = run_cli(db, NEW, "keys", "check")
    assert ok.exit_code == 0, ok.output
    assert (
        "key 'k2' (primary): seals 1 installs, 3 webhook secrets and 0 idempotent answers"
    ) in ok.output
    again = run_cli(db, both, "keys", "rotate")
    assert again.exit_code == 0 and "nothing to rotate" in again.output, again.output


async def test_a_webhook_removed_or_replaced_during_rotation_is_left_to_its_writer(
    db: str,
) -> None:
    gone, _ = await seed_webhook(db, OLD)
    kept, kept_secret = await seed_webhook(db, OLD)
    keyring = KeyRing.parse(f"{NEW},{OLD}")
    engine = create_async_engine(db)
    sessionmaker = create_sessionmaker(engine)
    table = subscriptions.ROTATION
    try:
        read = await keys.read_batch(sessionmaker, table, "k2", "", 10)
        batch = [keys.reseal(keyring, table, *row) for row in read]
        async with sessionmaker() as session, session.begin():
            await subscriptions.remove(session, gone, actor="ops")
        async with sessionmaker() as session, session.begin():
            written = await keys.write_batch(session, table, keyring.primary, batch)
        assert [r.row_id for r in written] == [kept]
        now = await rows(db, Webhook, "id")
        assert gone not in now, "a removed subscription must not come back"
        assert subscriptions.open_secret(KeyRing.parse(NEW), now[kept]) == kept_secret
    finally:
        await engine.dispose()


# -- the key id inside the value, not the `key_id` column -------------------------------


async def tamper_key_id(url: str, kid: str) -> None:
    """A database writer sets every row's `key_id` column, leaving the sealed values."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        for table in ("installs", "webhooks"):
            await conn.execute(text(f"UPDATE {table} SET key_id = :kid"), {"kid": kid})  # noqa: S608
    await engine.dispose()


def test_a_key_id_column_naming_the_new_key_does_not_make_the_old_key_look_removable(
    db: str,
) -> None:
    asyncio.run(seed(db, OLD, ["S001", "S002"]))
    webhook_id, secret = asyncio.run(seed_webhook(db, OLD))
    asyncio.run(tamper_key_id(db, "k2"))  # the values are still sealed under k1
    both = f"{NEW},{OLD}"

    check = run_cli(db, both, "keys", "check")
    assert check.exit_code == 0, check.output
    assert "key 'k1' is unused" not in check.output
    assert (
        "key 'k1': seals 2 installs, 1 webhook secrets and 0 idempotent answers; still needed"
    ) in check.output
    without_old = run_cli(db, NEW, "keys", "check")
    assert without_old.exit_code == 1, without_old.output
    assert "2 installs are sealed under key 'k1', which is not configured" in without_old.output
    assert "1 webhook secrets are sealed under key 'k1'" in without_old.output

    rotate = run_cli(db, both, "keys", "rotate")
    assert rotate.exit_code == 0, rotate.output
    assert "rotated 2 installs to key 'k2'" in rotate.output
    assert "rotated 1 webhook secrets to key 'k2'" in rotate.output
    new_only = KeyRing.parse(NEW)
    for sid, install in asyncio.run(rows(db)).items():
        assert sealed_kids(install) == {"k2"}, sid
        creds = sealing.open_credentials(new_only, install, "client")
        assert creds.headers["X_SECRET_KEY"] == f"tok-{sid}"
    webhook = asyncio.run(rows(db, Webhook, "id"))[webhook_id]
    assert subscriptions.open_secret(new_only, webhook) == secret
    ok = run_cli(db, NEW, "keys", "check")
    assert ok.exit_code == 0 and "keys ok" in ok.output, ok.output


def test_rotate_refuses_values_under_a_removed_key_whatever_the_column_says(db: str) -> None:
    asyncio.run(seed(db, OLD, ["S001"]))
    asyncio.run(tamper_key_id(db, "k2"))
    before = asyncio.run(rows(db))["S001"].secret_sealed
    rotate = run_cli(db, NEW, "keys", "rotate")
    assert rotate.exit_code == 1, rotate.output
    assert "1 installs are sealed under key 'k1', which is not configured" in rotate.output
    assert asyncio.run(rows(db))["S001"].secret_sealed == before, "nothing was touched"


def test_a_key_id_column_naming_a_removed_key_is_corrected_not_feared(db: str) -> None:
    asyncio.run(seed(db, NEW, ["S001"]))
    asyncio.run(tamper_key_id(db, "k1"))  # the values are under k2, the primary
    check = run_cli(db, NEW, "keys", "check")
    assert check.exit_code == 0 and "keys ok" in check.output, check.output
    rotate = run_cli(db, NEW, "keys", "rotate")
    assert rotate.exit_code == 0, rotate.output
    after = asyncio.run(rows(db))["S001"]
    assert after.key_id == "k2" and sealed_kids(after) == {"k2"}
    again = run_cli(db, NEW, "keys", "rotate")
    assert "nothing to rotate" in again.output, again.output
