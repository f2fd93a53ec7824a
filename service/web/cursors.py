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

from service.errors import BadRequest

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


def split_page(
    rows: list[T], limit: int, cursor_of: Callable[[T], str]
) -> tuple[list[T], str | None]:
    """Rows fetched with `limit + 1`: the page, and the cursor of the next one (None on
    the last page; the extra row only says that another page follows)."""
    page = rows[:limit]
    return page, cursor_of(page[-1]) if len(rows) > limit and page else None
