"""`broker keys rotate` and `broker keys check` on a real database (both backends)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner

from service.cli import app as cli
from service.db import create_sessionmaker
from service.installs import repository as stores
from service.installs import rotation as keys
from service.installs import sealing
from service.installs.models import AuthMethod, Install
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
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session, session.begin():
        await stores.revoke(session, store_id)
    await engine.dispose()


async def rows(url: str) -> dict[str, Install]:
    engine = create_async_engine(url)
    async with create_sessionmaker(engine)() as session:
        found = {i.store_id: i for i in (await session.execute(select(Install))).scalars()}
    await engine.dispose()
    return found


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
    assert "key 'k2' (primary): seals 0 installs" in before.output
    assert "key 'k1': seals 8 installs; still needed" in before.output

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


def test_check_and_rotate_fail_when_the_old_key_was_removed_before_rotating(db: str) -> None:
    asyncio.run(seed(db, OLD, ["S001", "S002"]))
    check = run_cli(db, NEW, "keys", "check")
    assert check.exit_code == 1, check.output
    assert "2 installs are sealed under key 'k1', which is not configured" in check.output

    rotate = run_cli(db, NEW, "keys", "rotate")
    assert rotate.exit_code == 1, rotate.output
    assert "2 installs are sealed under key 'k1', which is not configured" in rotate.output
    assert {r.key_id for r in asyncio.run(rows(db)).values()} == {"k1"}, "nothing was touched"
    assert "tok-" not in check.output + rotate.output


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
        read = await keys._read_batch(sessionmaker, "k1", "", 10)
        assert [r[0].store_id for r in read] == ["S001", "S002", "S003"]

        def resealed(binding: sealing.Binding, *old: str | None) -> keys._Resealed:
            new = [
                sealing.reseal(keyring, binding, c.key, v)
                for c, v in zip(keys.SEALED, old, strict=True)
            ]
            return keys._Resealed(binding, "k1", (old[0], old[1], old[2]), (new[0], new[1], new[2]))

        batch = [resealed(*row) for row in read]
        # Between the read and the write: S001 is revoked, S002 reinstalled with a new token.
        await revoke(db, "S001")
        async with sessionmaker() as session, session.begin():
            await stores.upsert(
                session, keyring, store_id="S002", store_domain="s002.example.com",
                auth_method=AuthMethod.oauth, secret={"access_token": "fresh"},
                user=USER, billing=BILLING,
            )  # fmt: skip
        async with sessionmaker() as session, session.begin():
            written = await keys._write_batch(session, keyring.primary, batch)
        assert [r.binding.store_id for r in written] == ["S003"]

        now = await rows(db)
        assert now["S001"].secret_sealed is None, "the revoke must not be undone"
        creds = sealing.open_credentials(keyring, now["S002"], "client")
        assert creds.headers["X_SECRET_KEY"] == "fresh", "the reinstall must not be overwritten"

        # A full run picks up the revoked row's remaining values.
        report = await keys.rotate(sessionmaker, keyring)
        assert report.ok and report.rotated == 1 and report.changed_concurrently == 0
        final = await rows(db)
        assert {sid: r.key_id for sid, r in final.items()} == dict.fromkeys(final, "k2")
        assert sealed_kids(final["S001"]) == {"k2"}
    finally:
        await engine.dispose()
