"""Opaque page cursors: the last row's sort key, base64url-encoded JSON.

Keyset cursors (not offsets) keep pages stable while rows are added: a new row sorts
before the cursor, so it can neither repeat a row on the next page nor push one off it.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from service.errors import BadRequest


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
