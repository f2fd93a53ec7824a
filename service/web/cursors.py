"""Opaque page cursors: the last row's sort key, base64url-encoded JSON.

Keyset cursors (not offsets) keep pages stable while rows are added: a new row sorts
before the cursor, so it can neither repeat a row on the next page nor push one off it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any, TypeVar

from service.errors import BadRequest, ValidationFailed

T = TypeVar("T")


def encode_cursor(*key: Any) -> str:
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    """The key parts, or 400 `validation_error` for anything this API did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        key = None
    if not isinstance(key, list) or len(key) != size:
        raise BadRequest("The cursor is not one this API issued.")
    return key


# The largest id a 64-bit column holds: a larger one would fail inside the database
# driver (a 500), not as the caller's mistake it is.
MAX_ID = 2**63 - 1


def decode_id_cursor(cursor: str, minimum: int) -> int:
    """The id in a one-id cursor. 400 for anything that is not a cursor at all; 422 for a
    cursor whose id no row can have (not an integer, or outside `minimum`..`MAX_ID`)."""
    (value,) = decode_cursor(cursor, 1)
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= MAX_ID:
        raise ValidationFailed(
            f"The cursor's position must be a whole number from {minimum} to {MAX_ID}."
        )
    return value


def split_page(
    rows: list[T], limit: int, cursor_of: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """Rows fetched with `limit + 1`: the page, and the cursor of the next one (None on
    the last page; the extra row only says that another page follows)."""
    page = rows[:limit]
    return page, cursor_of(page[-1]) if len(rows) > limit and page else None
