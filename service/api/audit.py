"""The audit log, for operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service import audit
from service.api.cursors import decode_cursor, encode_cursor
from service.api.deps import require_scope
from service.api.installs import ERRORS, no_store
from service.db import SessionDep
from service.errors import BadRequest
from service.schemas import AuditEventOut, AuditPage, ErrorBody
from service.security.callers import Caller

router = APIRouter(tags=["audit"], dependencies=[Depends(no_store)])


def audit_key(cursor: str) -> int:
    (before_id,) = decode_cursor(cursor, 1)
    if not isinstance(before_id, int) or isinstance(before_id, bool) or before_id < 1:
        raise BadRequest("The cursor is not one this API issued.")
    return before_id


@router.get(
    "/audit",
    summary="Audit events, newest first",
    responses={**ERRORS, 400: {"model": ErrorBody, "description": "A cursor not from this API"}},
)
async def list_audit(
    session: SessionDep,
    _: Annotated[Caller, Depends(require_scope("installs:read"))],
    store_id: Annotated[str | None, Query(max_length=64, description="exact store id")] = None,
    actor: Annotated[
        str | None,
        Query(max_length=256, description="exact caller `sub`; `neto` for installs Neto started"),
    ] = None,
    event: Annotated[
        str | None, Query(max_length=64, description="exact event name, e.g. `install.revoked`")
    ] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditPage:
    """Who did what to which store: installs, re-installs, revocations, verifications and
    every credential bundle issued (with its `bundle_id`). Never a secret. Pages follow
    `next_cursor`; events written while paging do not shift later pages."""
    before_id = audit_key(cursor) if cursor else None
    rows = await audit.page(
        session, store_id=store_id, actor=actor, event=event, before_id=before_id,
        limit=limit + 1,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return AuditPage(
        items=[AuditEventOut.model_validate(row, from_attributes=True) for row in rows],
        next_cursor=encode_cursor(rows[-1].id) if more and rows else None,
    )
