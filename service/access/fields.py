"""Least-privilege answers: a caller token's `fields` claim, enforced on both doors.

`fields` maps a Neto entity (the top-level key of an answer: `Item`, `Order`, ...) to the
`OutputSelector` names the caller may read, e.g. `{"Item": ["SKU", "AvailableSellQuantity"]}`.
A dotted name reaches into nested records: `OrderLine.SKU` keeps each order line's SKU
only; a plain `OrderLine` keeps the lines whole. With the claim:

- an action whose entity the claim does not list is refused (403 `action_not_allowed`):
  nothing is sent, so an unlisted entity can never leak, and the refusal says why;
- the request must be JSON both ways (XML is refused with 415: the broker filters JSON);
- a read's `Filter.OutputSelector` is set to the allowed names, or narrowed to those of
  the caller's names the claim allows, so Neto fetches no more than may be read;
- the answer keeps `Ack`, `CurrentTime`, `Messages` and the entity's allowed fields; every
  other field and key is removed, in nested lists and single objects alike (Neto sends a
  lone record as an object, not a one-element list). Neto's own ids are fields too: list
  them to read them. An answer that is not a JSON object is withheld (502).

The request body and the answer are parsed and written anew, never patched, so what Neto
sees and what the caller gets are exactly what was checked. Without the claim nothing
here runs and both pass byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from service.errors import (
    ActionNotAllowed,
    BadRequest,
    UnsupportedMediaType,
    UpstreamUnreachable,
)
from service.neto.entities import ACTION_ENTITY, FILTERED_READS
from service.security.callers import Caller
from service.web.body_limit import is_json

# The answer's envelope, kept whatever the claim says: without it a caller cannot tell
# Neto's success from its error.
ENVELOPE = ("Ack", "CurrentTime", "Messages")

# A tree of allowed names: a name maps to None (the field whole) or to its allowed
# sub-fields.
Tree = dict[str, "Tree | None"]


def _tree(names: tuple[str, ...]) -> Tree:
    tree: Tree = {}
    for name in names:
        node: Tree = tree
        *parents, leaf = name.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if child is None:  # the parent is allowed whole already
                break
            node = child
        else:
            node[leaf] = None  # whole wins over any sub-field listed before
    return tree


def _keep(value: Any, tree: Tree) -> Any:
    """`value` with only the fields `tree` allows: records (objects) lose every other key,
    lists are filtered item by item, and anything else where records belong is dropped,
    except the empty values Neto uses for "none" (`""`, null)."""
    if isinstance(value, dict):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if key in tree:
                sub = tree[key]
                kept[key] = item if sub is None else _keep(item, sub)
        return kept
    if isinstance(value, list):
        return [_keep(item, tree) for item in value if isinstance(item, (dict, list))]
    return value if value in ("", None) else None


def _selector(requested: Any, names: tuple[str, ...]) -> list[str]:
    """The OutputSelector Neto gets: the caller's names the claim allows (a name whose
    parent is allowed whole, too), a name the claim allows only parts of replaced by those
    parts, and everything else dropped; the claim's names when the caller gave none."""
    if requested is None:
        return list(names)
    if isinstance(requested, str):  # one name, as an XML client thinks of it
        requested = [requested]
    if not isinstance(requested, list):
        return list(names)
    allowed = set(names)
    out: list[str] = []
    for name in requested:
        if not isinstance(name, str):
            continue
        parts = name.split(".")
        if any(".".join(parts[:i]) in allowed for i in range(1, len(parts) + 1)):
            picked = [name]
        else:
            picked = [n for n in names if n.startswith(name + ".")]
        out.extend(n for n in picked if n not in out)
    return out


@dataclass(frozen=True, slots=True)
class FieldGrant:
    """What a `fields` token may read of one action's entity."""

    action: str
    entity: str
    names: tuple[str, ...]

    def narrow(self, body: bytes) -> bytes:
        """The request body as Neto gets it: rewritten, with a read's OutputSelector
        narrowed. An empty body stays empty (Neto's `{}` actions)."""
        if not body.strip():
            return body
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise BadRequest(
                "With a `fields` claim the request body must be a JSON object, so the "
                "broker can narrow its OutputSelector."
            )
        query = doc.get("Filter")
        if self.action in FILTERED_READS and isinstance(query, dict):
            query["OutputSelector"] = _selector(query.get("OutputSelector"), self.names)
        return json.dumps(doc, separators=(",", ":")).encode()

    def reading(self, read_body: Callable[[], Awaitable[bytes]]) -> Callable[[], Awaitable[bytes]]:
        """`read_body`, narrowed: the pipeline reads the body when it is ready to send."""

        async def read() -> bytes:
            return self.narrow(await read_body())

        return read

    def strip(self, body: bytes) -> bytes:
        """Neto's answer with only the envelope and the allowed fields of the entity."""
        if not body.strip():
            return body
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            doc = None
        if not isinstance(doc, dict):
            raise UpstreamUnreachable(
                "Neto's answer is not a JSON object, so the token's `fields` claim cannot "
                "be applied to it; it was withheld."
            )
        tree = _tree(self.names)
        kept = {
            key: _keep(value, tree) if key == self.entity else value
            for key, value in doc.items()
            if key == self.entity or key in ENVELOPE
        }
        return json.dumps(kept, separators=(",", ":")).encode()


def grant(caller: Caller, action: str, media: Mapping[str, str]) -> FieldGrant | None:
    """None for a token without `fields` (nothing changes); else what it may read of
    `action`'s answer, or the refusal: its entity unlisted, or XML either way."""
    if caller.fields is None:
        return None
    entity = ACTION_ENTITY[action]
    names = caller.fields.get(entity)
    if names is None:
        raise ActionNotAllowed(
            f"The token's `fields` claim lists no fields of {entity!r}, the entity "
            f"{action} answers with."
        )
    if not is_json(media.get("Content-Type")):
        raise UnsupportedMediaType(
            "A token with a `fields` claim may send JSON only: the broker filters JSON "
            "answers, not XML."
        )
    accept = media.get("Accept")
    if accept is None or not is_json(accept):
        raise UnsupportedMediaType(
            "A token with a `fields` claim must send `Accept: application/json`: Neto "
            "answers XML otherwise, and the broker filters JSON answers only."
        )
    return FieldGrant(action, entity, names)
