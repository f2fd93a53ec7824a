"""Recording audit events: each change records its event in the change's own
transaction (`record`), so the log holds exactly the changes that committed. Never a
secret in `details`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from service import tracing
from service.audit.models import AuditEvent


def record(
    session: AsyncSession,
    event: str,
    *,
    actor: str,
    store_id: str | None = None,
    request_id: str | None = None,
    **details: Any,
) -> AuditEvent:
    """Add an audit event to the session. `details` must never hold a secret; it gets the
    request's `trace_id` when tracing is on."""
    if tracing.ENABLED and (trace_id := tracing.current_trace_id()) is not None:
        details["trace_id"] = trace_id
    row = AuditEvent(
        event=event, actor=actor, store_id=store_id, request_id=request_id, details=details
    )
    session.add(row)
    return row
