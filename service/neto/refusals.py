"""Whether a 401/403 is Neto refusing the credentials, or something in front of the store.

A store's domain may sit behind a web firewall or a CDN that answers 403 with its own HTML
page (a body it dislikes, an address it blocks, a bot check). Such a page says nothing
about the store's credentials, and flagging the store `reauth_required` on it would stop
every caller until an operator verifies again. Neto's own refusals come in its API
envelope, JSON or XML, with an `Ack` that is not `Success`: only those count as a refusal
of the credentials.
"""

from __future__ import annotations

import json
import re

REFUSED_STATUSES = frozenset({401, 403})
# Neto's envelope is small; a firewall's page may be large. Only the head is looked at.
_HEAD = 64 * 1024
_XML_ACK = re.compile(rb"<Ack>\s*([A-Za-z]+)\s*</Ack>")
_HTML = re.compile(rb"<(!doctype\s+html|html|head|body)[\s>]", re.IGNORECASE)


def neto_refused(status: int, body: bytes) -> bool:
    """True for a 401/403 in Neto's error envelope (`Ack` other than `Success`)."""
    if status not in REFUSED_STATUSES:
        return False
    head = body[:_HEAD].lstrip()
    if head.startswith(b"{"):
        try:
            parsed = json.loads(body)
        except ValueError:
            return False
        ack = parsed.get("Ack") if isinstance(parsed, dict) else None
        return isinstance(ack, str) and ack != "Success"
    if head.startswith(b"<") and not _HTML.search(head[:1024]):
        found = _XML_ACK.search(head)
        return found is not None and found.group(1) != b"Success"
    return False
