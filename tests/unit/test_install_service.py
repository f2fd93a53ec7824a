"""The install service: every change to an install is written, audited and committed in
one transaction, then the replica's cached copy is dropped. Runs against the app's real
services (database, cache) on SQLite and PostgreSQL."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import func, select

from service.audit.models import AuditEvent
from service.installs import repository
from service.installs.models import Install
from service.neto.oauth import TokenGrant
from service.services import Services

SERVICE_DIR = Path(__file__).resolve().parents[2] / "service"
# Repository functions that change an install's row.
INSTALL_WRITES = {"upsert", "set_status", "revoke", "insert_many"}


def services_of(app: Any) -> Services:
    services: Services = app.state.services
    return services


async def audit_events(services: Services, store_id: str) -> list[str]:
    async with services.sessionmaker() as session:
        rows = await session.execute(
            select(AuditEvent.event).where(AuditEvent.store_id == store_id).order_by(AuditEvent.id)
        )
        return list(rows.scalars())


async def install_row(services: Services, store_id: str) -> Install | None:
    async with services.sessionmaker() as session:
        return await repository.get(session, store_id)


async def register(services: Services, store_id: str = "S1", api_key: str = "key-1") -> Install:
    return await services.installs.register_api_key(
        store_id=store_id,
        store_domain="svc.example.com",
        username="api-user",
        api_key=api_key,
        actor="test",
        request_id="req_1",
    )


async def test_registering_twice_audits_created_then_reinstalled(app):
    services = services_of(app)
    first = await register(services, api_key="key-1")
    second = await register(services, api_key="key-2")
    assert first.token_fingerprint != second.token_fingerprint
    assert second.installed_at == first.installed_at  # a reinstall keeps its first install
    assert await audit_events(services, "S1") == ["install.created", "install.reinstalled"]


async def test_revoke_commits_audits_once_and_drops_the_cached_copy(app):
    services = services_of(app)
    await register(services)
    cached = await services.store_cache.get("S1")
    assert cached is not None and cached.secret == "key-1"
    version = services.store_cache.version("S1")

    await services.installs.revoke("S1", actor="ops", request_id=None)

    row = await install_row(services, "S1")
    assert row is not None and row.status == "revoked" and row.secret_sealed is None
    assert services.store_cache.version("S1") > version, "the cached copy was not dropped"
    after = await services.store_cache.get("S1")
    assert after is not None and after.status == "revoked" and after.secret is None
    # Idempotent: a second revoke changes nothing and audits nothing.
    await services.installs.revoke("S1", actor="ops", request_id=None)
    assert await audit_events(services, "S1") == ["install.created", "install.revoked"]


async def test_a_failure_inside_the_change_leaves_nothing_half_written(app):
    services = services_of(app)
    grant = TokenGrant(
        store_id="G1",
        store_domain="grant.example.com",
        access_token=SecretStr("tok-g1"),
        scope=None,
        timezone=None,
        user=None,
        billing_address=None,
    )

    async def fails(session: Any) -> None:
        raise RuntimeError("the pending state could not be consumed")

    with pytest.raises(RuntimeError):
        await services.installs.store_oauth_grant(grant, actor="neto", request_id=None, also=fails)
    assert await install_row(services, "G1") is None
    assert await audit_events(services, "G1") == []

    assert await services.installs.store_oauth_grant(grant, actor="neto", request_id=None) is False
    row = await install_row(services, "G1")
    assert row is not None and row.status == "active" and row.auth_method == "oauth"
    assert await audit_events(services, "G1") == ["install.created"]


async def test_reauth_flag_only_for_the_refused_token_and_audited_once(app):
    services = services_of(app)
    install = await register(services)
    flag = services.installs.mark_reauth_required
    kwargs: dict[str, Any] = {"actor": "svc", "request_id": None, "action": "GetItem"}

    assert not await flag("S1", upstream_status=401, token_fingerprint="sha256:other", **kwargs)
    row = await install_row(services, "S1")
    assert row is not None and row.status == "active"

    fingerprint = install.token_fingerprint
    assert await flag("S1", upstream_status=403, token_fingerprint=fingerprint, **kwargs)
    assert not await flag("S1", upstream_status=403, token_fingerprint=fingerprint, **kwargs)
    row = await install_row(services, "S1")
    assert row is not None and row.status == "reauth_required"
    assert await audit_events(services, "S1") == ["install.created", "install.reauth_required"]
    cached = await services.store_cache.get("S1")
    assert cached is not None and cached.status == "reauth_required"


async def test_verify_reactivates_a_flagged_store_when_neto_accepts(app, neto):
    services = services_of(app)
    neto.add_api_key_store("svc.example.com", "api-user", "key-1")
    install = await register(services)
    await services.installs.mark_reauth_required(
        "S1", actor="svc", request_id=None, action="GetItem", upstream_status=401,
        token_fingerprint=install.token_fingerprint,
    )  # fmt: skip
    outcome = await services.installs.verify("S1", actor="ops", request_id=None)
    assert (outcome.ok, outcome.status, outcome.changed) == (True, "active", True)
    async with services.sessionmaker() as session:
        count = await session.scalar(
            select(func.count()).where(AuditEvent.event == "install.verified")
        )
    assert count == 1
    cached = await services.store_cache.get("S1")
    assert cached is not None and cached.status == "active"


def _calls(tree: ast.AST) -> list[tuple[str, str, int]]:
    """(object name, attribute, line) of every `name.attr(...)` call."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            found.append((node.func.value.id, node.func.attr, node.lineno))
    return found


def test_only_the_install_service_writes_installs():
    """The rule the service exists for, checked on the source: no other module calls the
    repository's install writes. (Key rotation re-seals rows in place with its own
    compare-and-set statements, and the bundle audit batch stamps last-used times; neither
    changes an install's state.)"""
    offenders = []
    for path in SERVICE_DIR.rglob("*.py"):
        rel = path.relative_to(SERVICE_DIR).as_posix()
        if rel == "installs/service.py":
            continue
        for name, attr, line in _calls(ast.parse(path.read_text())):
            if name == "repository" and attr in INSTALL_WRITES:
                offenders.append(f"{rel}:{line} repository.{attr}")
    assert offenders == [], "install writes outside service/installs/service.py"


def test_only_the_request_session_and_transactions_commit():
    """Commits happen in `run_transaction` (db.py) and the request session (web/deps.py);
    no route or flow commits a session itself."""
    offenders = []
    for path in SERVICE_DIR.rglob("*.py"):
        rel = path.relative_to(SERVICE_DIR).as_posix()
        if rel in {"db.py", "web/deps.py"}:
            continue
        for _, attr, line in _calls(ast.parse(path.read_text())):
            if attr == "commit":
                offenders.append(f"{rel}:{line}")
    assert offenders == [], "sessions committed outside db.py and web/deps.py"
