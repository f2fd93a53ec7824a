"""Checking a webhook delivery from the broker (the Standard Webhooks specification).

Written with `hmac` rather than the `standardwebhooks` package: the check is a dozen
lines, and a client that internal services install should not bring more dependencies
than it needs. The broker signs with that package; tests/client verify real deliveries.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from neto_broker_client.errors import WebhookVerificationError
from neto_broker_client.models import Event

SECRET_PREFIX = "whsec_"  # noqa: S105  (the spec's prefix, not a secret)
# The specification's replay window: a timestamp further than this from the receiver's
# clock (either way) is refused, so a captured delivery cannot be played again later.
TOLERANCE_SECONDS = 5 * 60


def _key(secret: str) -> bytes:
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise WebhookVerificationError("the webhook secret is not base64") from None


def verify_webhook(
    secret: str,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    now: float | None = None,
    tolerance: float = TOLERANCE_SECONDS,
) -> Event:
    """Checks a delivery and returns its event; raises WebhookVerificationError when a
    header is missing, the timestamp is outside `tolerance` of `now` (default: this
    machine's clock), or no `v1` signature in `webhook-signature` is the HMAC-SHA256 of
    `{id}.{timestamp}.{body}` under `secret` (a `whsec_...` from `POST /webhooks`).
    Pass the body exactly as received: the signature covers its bytes."""
    lowered = {k.lower(): v for k, v in headers.items()}
    try:
        msg_id = lowered["webhook-id"]
        stamp = lowered["webhook-timestamp"]
        signatures = lowered["webhook-signature"]
    except KeyError as missing:
        raise WebhookVerificationError(f"the {missing.args[0]} header is missing") from None
    if not stamp.isdigit():
        raise WebhookVerificationError("webhook-timestamp is not a number of seconds")
    current = time.time() if now is None else now
    if abs(current - int(stamp)) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance")
    raw = body.encode() if isinstance(body, str) else body
    signed = f"{msg_id}.{stamp}.".encode() + raw
    expected = base64.b64encode(hmac.new(_key(secret), signed, hashlib.sha256).digest())
    # Space-separated `v1,<base64>` entries: during a secret rotation the broker signs with
    # both secrets, and one match is enough.
    for entry in signatures.split(" "):
        version, _, given = entry.partition(",")
        if version == "v1" and hmac.compare_digest(given.encode(), expected):
            return _event(raw)
    raise WebhookVerificationError("no webhook-signature matches the secret")


def _event(raw: bytes) -> Event:
    try:
        parsed: Any = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the signed body is not JSON") from None
    return Event.model_validate(parsed)
