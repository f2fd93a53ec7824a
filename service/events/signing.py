"""Webhook payloads and their Standard Webhooks signature.

Signed with `standardwebhooks`, the specification's reference implementation (tests
verify with an independent HMAC). The body is the event's JSON as the feed shows it,
ASCII-only, so the text that is signed is byte for byte the body that is sent.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from standardwebhooks.webhooks import Webhook as Signer

from service.events.models import Event

SECRET_PREFIX = "whsec_"  # noqa: S105  (the spec's prefix, not a secret)


def new_secret() -> str:
    """A signing secret as the specification spells it: `whsec_` + base64 of 32 bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


# The fields of an event's `data` (`outbox.emit` writes exactly these). Nothing else in
# a row's JSON is shown or signed: whoever can write to the events table must not be able
# to get other fields (a link, a token) delivered under the broker's signature.
DATA_FIELDS = ("store_id", "store_domain", "auth_method", "status", "actor")
# A Neto notification's (service/inbound/normalise.py writes these): Neto's name of the
# kind, its EventID and CurrentTime (store-local, as Neto wrote it), the entity's status
# (an order's), and its ids as a list.
NETO_DATA_FIELDS = ("store_id", "neto_type", "neto_event_id", "neto_time", "status")
NETO_PREFIX = "neto."


def event_json(event: Event, *, raw: bool = False) -> dict[str, Any]:
    """The public shape of an event (the feed's items and a webhook's body), built from the
    known fields only: text values, and the store id of the row (the one the feed filters
    by), not whatever the JSON says. `raw`: a Neto notification's body as Neto sent it,
    for a subscription that asked for it (when the event kept one)."""
    stored = event.data if isinstance(event.data, dict) else {}
    neto = event.type.startswith(NETO_PREFIX)
    data: dict[str, Any] = {
        name: _text(stored.get(name)) for name in (NETO_DATA_FIELDS if neto else DATA_FIELDS)
    }
    data["store_id"] = event.store_id
    if neto:
        ids = stored.get("entity_ids")
        data["entity_ids"] = [i for i in ids if isinstance(i, str)] if isinstance(ids, list) else []
        if raw and isinstance(stored.get("raw"), str):
            data["raw"] = stored["raw"]
    return {
        "id": event.event_id,
        "type": event.type,
        "timestamp": event.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": data,
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def body_of(event: Event, *, raw: bool = False) -> bytes:
    return json.dumps(event_json(event, raw=raw), separators=(",", ":"), ensure_ascii=True).encode()


def signed_headers(
    secret: str, event_id: str, body: bytes, at: datetime, *, also: Sequence[str] = ()
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt (a retry signs anew). `also`:
    secrets that sign too (a rotation's overlap); the specification's receivers accept a
    delivery when any of the space-separated signatures is theirs."""
    at = at.replace(microsecond=0)
    signature = " ".join(
        Signer(key).sign(msg_id=event_id, timestamp=at, data=body.decode("ascii"))
        for key in (secret, *also)
    )
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
        "user-agent": "neto-token-broker",
    }
