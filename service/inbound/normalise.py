"""A notification's body, as Neto sends it, to the small event the broker fans out.

Neto posts XML (`<Event>` with `CurrentTime`, `EventID`, `EventType` and an element named
after the type holding the entity, e.g. `<Order><OrderID>N10154</OrderID><OrderStatus>
Dispatched</OrderStatus></Order>`); the same shape in JSON is accepted too. XML is read
with defusedxml: a DTD or an entity declaration is refused outright (entity expansion and
external references are how XML parsers are turned against their hosts), and nesting
deeper than MAX_DEPTH is refused as the tree is read. The body is capped before it gets
here (so is the tree expat builds from it).
Only named fields leave this module, each text cut to a sane length: nothing a sender
writes elsewhere in the body reaches a subscriber (unless it asked for the raw body).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any
from xml.etree.ElementTree import Element  # the type only; defusedxml parses

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from service.errors import BadRequest

# A Neto notification is four levels deep (Event, Order, OrderID): room to spare.
MAX_DEPTH = 16
MAX_IDS = 100
MAX_TEXT = 64
# What Neto names the kinds it sends -> the broker's event type. Any other kind is kept
# as `neto.notification` with its name (`data.neto_type`), never dropped.
EVENT_TYPES = {"order": "neto.order.updated"}
UNKNOWN_TYPE = "neto.notification"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_ .-]{0,63}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class Notification:
    event_type: str  # the broker's (`neto.order.updated`, `neto.notification`)
    neto_type: str | None  # Neto's `EventType`
    neto_event_id: str | None
    neto_time: str | None  # Neto's `CurrentTime`, store-local, as written
    entity_ids: list[str]
    status: str | None  # the entity's (an order's `OrderStatus`)
    dedupe_key: str

    def data(self, store_id: str) -> dict[str, Any]:
        return {
            "store_id": store_id,
            "neto_type": self.neto_type,
            "neto_event_id": self.neto_event_id,
            "neto_time": self.neto_time,
            "status": self.status,
            "entity_ids": self.entity_ids,
        }


def is_json(content_type: str | None, body: bytes) -> bool:
    """JSON when it says so; without a Content-Type, when it looks like JSON."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media:
        return media == "application/json" or media.endswith("+json")
    return body.lstrip()[:1] in (b"{", b"[")


def parse(body: bytes, content_type: str | None) -> Notification:
    """The notification in `body`, or 400 saying what is wrong with it."""
    if not body.strip():
        raise BadRequest("The notification has no body.")
    tree = _json(body) if is_json(content_type, body) else _xml(body)
    if isinstance(tree, dict) and set(tree) == {"Event"}:
        tree = tree["Event"]
    if not isinstance(tree, dict):
        raise BadRequest("The notification is not an Event.")
    neto_type = _text(tree.get("EventType"))
    neto_type = neto_type if neto_type and _NAME.match(neto_type) else None
    event_id = _text(tree.get("EventID"))
    digest = hashlib.sha256(body).hexdigest()
    entities = _entities(tree, neto_type)
    ids = [i for e in entities if (i := _text(e.get(f"{neto_type}ID"))) is not None][:MAX_IDS]
    status = next((s for e in entities if (s := _text(e.get(f"{neto_type}Status")))), None)
    return Notification(
        event_type=EVENT_TYPES.get((neto_type or "").lower(), UNKNOWN_TYPE),
        neto_type=neto_type,
        neto_event_id=event_id,
        neto_time=_text(tree.get("CurrentTime")),
        entity_ids=ids,
        status=status,
        # Neto's EventID names one notification; a body without one is the same
        # notification when it is the same bytes.
        dedupe_key=f"id:{event_id}" if event_id else f"sha256:{digest}",
    )


def _entities(tree: dict[str, Any], neto_type: str | None) -> list[dict[str, Any]]:
    """The element named after the type (`Order`), one or several."""
    found = tree.get(neto_type) if neto_type else None
    items = found if isinstance(found, list) else [found]
    return [item for item in items if isinstance(item, dict)]


def _text(value: Any) -> str | None:
    """A scalar as text, trimmed, without control characters, at most MAX_TEXT long."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        return None
    text = _CONTROL.sub("", str(value)).strip()[:MAX_TEXT]
    return text or None


def _json(body: bytes) -> Any:
    try:
        tree = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("The notification is not valid JSON.") from None
    if _depth(tree) > MAX_DEPTH:
        raise BadRequest(f"The notification is nested deeper than {MAX_DEPTH} levels.")
    return tree


def _depth(tree: Any) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        children = (
            node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        )
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _xml(body: bytes) -> dict[str, Any]:
    """The root element as nested dicts: a repeated child becomes a list. Refused (400):
    a DTD, an entity, anything not well-formed, nesting past MAX_DEPTH."""
    try:
        root = fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise BadRequest("The notification's XML declares a DTD or entities; refused.") from None
    except ParseError:
        raise BadRequest("The notification is not well-formed XML.") from None
    value = _element(root, 1)
    return value if isinstance(value, dict) else {}


def _element(element: Element, depth: int) -> dict[str, Any] | str:
    """Refused past MAX_DEPTH before going deeper, so the recursion is bounded by it
    (expat and its tree are not recursive: a tree 8,000 deep is built, then refused)."""
    if depth > MAX_DEPTH:
        raise BadRequest(f"The notification is nested deeper than {MAX_DEPTH} levels.")
    children = list(element)
    if not children:
        return (element.text or "").strip()
    out: dict[str, Any] = {}
    for child in children:
        value = _element(child, depth + 1)
        if child.tag in out:
            held = out[child.tag]
            out[child.tag] = [*held, value] if isinstance(held, list) else [held, value]
        else:
            out[child.tag] = value
    return out
