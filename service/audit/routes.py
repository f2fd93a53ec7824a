"""The audit log, for operators."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from service.audit import repository
from service.audit.models import AuditEvent
from service.audit.schemas import AuditEventOut, AuditPage
from service.web.api import ERRORS, PLAIN_TEXT, error, no_store
from service.web.cursors import decode_id_cursor, encode_cursor, split_page
from service.web.deps import Caller, SessionDep, require_scope

router = APIRouter(tags=["audit"], dependencies=[Depends(no_store)])


def audit_cursor(event: AuditEvent) -> str:
    return encode_cursor(event.id)


def audit_key(cursor: str) -> int:
    return decode_id_cursor(cursor, 1)


@router.get(
    "/audit",
    summary="Audit events, newest first",
    responses={**ERRORS, 400: error("A cursor not from this API")},
)
async def list_audit(
    session: SessionDep,
    _: Annotated[Caller, Depends(require_scope("installs:read"))],
    store_id: Annotated[
        str | None, Query(max_length=64, pattern=PLAIN_TEXT, description="exact store id")
    ] = None,
    actor: Annotated[
        str | None,
        Query(
            max_length=256,
            pattern=PLAIN_TEXT,
            description="exact caller `sub`; `neto` for installs Neto started",
        ),
    ] = None,
    event: Annotated[
        str | None,
        Query(
            max_length=64,
            pattern=PLAIN_TEXT,
            description="exact event name, e.g. `install.revoked`",
        ),
    ] = None,
    cursor: Annotated[str | None, Query(min_length=1, max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> AuditPage:
    """Who did what to which store: installs, re-installs, revocations, verifications and
    every credential bundle issued (with its `bundle_id`). Never a secret. Pages follow
    `next_cursor`; events written while paging do not shift later pages."""
    before_id = audit_key(cursor) if cursor else None
    rows = await repository.page(
        session, store_id=store_id, actor=actor, event=event, before_id=before_id,
        limit=limit + 1,
    )  # fmt: skip
    page, next_cursor = split_page(rows, limit, audit_cursor)
    return AuditPage(
        items=[AuditEventOut.model_validate(row, from_attributes=True) for row in page],
        next_cursor=next_cursor,
    )
