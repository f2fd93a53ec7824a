"""Status changes the broker learns from Neto itself: a store whose credentials Neto
refuses needs re-authorisation; a verify that succeeds makes it active again."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service import audit, stores
from service.db import run_transaction
from service.models import InstallStatus


async def mark_reauth_required(
    app_state: Any,
    store_id: str,
    *,
    actor: str,
    request_id: str | None,
    action: str,
    upstream_status: int,
    token_fingerprint: str | None = None,
) -> bool:
    """Neto answered 401/403: flag the store for operators, in its own transaction (the
    caller's request gets an error either way). Audited once, when the status changes.
    `token_fingerprint` names the refused token: a store reinstalled since (another
    token) is left active."""

    async def work(session: AsyncSession) -> bool:
        changed = await stores.set_status(
            session, store_id, InstallStatus.reauth_required, token_fingerprint=token_fingerprint
        )
        if changed:
            audit.record(
                session, "install.reauth_required", actor=actor, store_id=store_id,
                request_id=request_id, action=action, upstream_status=upstream_status,
            )  # fmt: skip
        return changed

    changed = await run_transaction(app_state.sessionmaker, work)
    # After the commit, so no request can cache the old status again.
    app_state.store_cache.invalidate(store_id)
    return changed
