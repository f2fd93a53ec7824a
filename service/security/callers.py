"""Caller tokens: the JWTs internal services present, verified with python-jose.

The key is picked by the header's `kid` and verifies only its own algorithm: a constructed
key object and a one-element algorithm list are passed to python-jose, never a list that
mixes HMAC and public-key families (python-jose 3.5 still accepts an HS256 token MAC'd with
a DER-encoded public key when both are allowed). Everything that can be refused without
cryptography is refused before the token is parsed further.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jose import jwt
from jose.backends.base import Key
from jose.exceptions import JOSEError, JWTClaimsError

from service.config import Settings
from service.errors import ActionNotAllowed, Forbidden, StoreNotAllowed, Unauthorized
from service.neto.apps import DEFAULT_APP, is_app_name
from service.neto.entities import ENTITIES
from service.neto.queue import INTERACTIVE, LANES
from service.security.caller_keys import KeyFileError, load_keys

__all__ = ["Caller", "KeyFileError", "TokenVerifier", "mint"]

MAX_TOKEN_BYTES = 8 * 1024
MAX_LIFETIME_SECONDS = 24 * 3600
LEEWAY_SECONDS = 30
# Every column that records a caller (audit actor, pending installer) holds this many.
MAX_SUB_CHARS = 256
# ...and text only: a control character (NUL, which PostgreSQL cannot store, above all)
# or a lone surrogate (no encoding can write it) would fail the audit batch it joins, and
# with it every other caller's bundle in that batch.
_NOT_TEXT = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
# The actor of installs Neto starts through the anonymous route (oauth/pending.py): no
# caller may take the name, nor `neto:...` (the anonymous rows' initiators), in any case,
# so the audit never shows a caller as Neto and no caller's start passes for anonymous.
RESERVED_SUB = "neto"
REQUIRED_CLAIMS = ("sub", "aud", "exp", "iat")
FORBIDDEN_HEADERS = frozenset({"jku", "x5u", "jwk", "crit", "x5c", "enc", "zip"})
SCOPES = frozenset(
    {
        "credentials:read",
        "invoke",
        "installs:start",
        "installs:read",
        "installs:admin",
        "events:read",
    }
)
_IMPLIED = {"installs:admin": {"installs:read", "installs:start"}}
# Claims that limit a caller but that this broker does not enforce yet (the contract's
# third round): a token carrying one is refused, never honoured as if it had no limit.
# A claim leaves this set only with the code that enforces it (`fields`: access/fields.py;
# `apps`: `Caller.require_app`, at every door to a store, and `granted_app`).
UNENFORCED_CLAIMS: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller: who it is and what its token grants."""

    sub: str
    scopes: frozenset[str]
    stores: frozenset[str] | None
    actions: tuple[str, ...] | None
    exp: float
    # The lane its calls wait in for a store's budget (neto/queue.py).
    priority: str = INTERACTIVE
    # Per Neto entity, the OutputSelector names it may read (access/fields.py); None: all.
    fields: Mapping[str, tuple[str, ...]] | None = field(default=None, hash=False)
    # The Neto add-ons (service/neto/apps.py) whose stores it may use; None: all.
    apps: frozenset[str] | None = None

    def _grants_app(self, app: str) -> bool:
        return self.apps is None or "*" in self.apps or app in self.apps

    def require_app(self, app: str) -> None:
        """A store of an add-on outside the `apps` claim is refused like a store outside
        `stores` (403 `store_not_allowed`), before its status is told."""
        if not self._grants_app(app):
            raise StoreNotAllowed(
                f"The token's `apps` claim does not grant the add-on {app!r} this store belongs to."
            )

    def granted_app(self, app: str | None) -> str:
        """The add-on an install is started for (None: `default`), if the claim grants it."""
        name = DEFAULT_APP if app is None else app
        if not self._grants_app(name):
            raise Forbidden(f"The token's `apps` claim does not grant the add-on {name!r}.")
        return name

    def require_scope(self, scope: str) -> None:
        if scope not in self.scopes:
            raise Forbidden(f"The token lacks the scope {scope!r}.")

    def require_store(self, store_id: str) -> None:
        if self.stores is None:
            raise StoreNotAllowed("The token carries no `stores` claim.")
        if "*" not in self.stores and store_id not in self.stores:
            raise StoreNotAllowed("The token does not grant this store.")

    def require_action(self, action: str, *, is_write: bool) -> None:
        """Without an `actions` claim: every read and no write. With one: that list is
        the complete allow-list, reads included (`["GetItem"]` grants GetItem only)."""
        if self.actions is None:
            if not is_write:
                return
            raise ActionNotAllowed(
                f"The token has no `actions` claim, which grants reads only, not {action!r}."
            )
        for grant in self.actions:
            # A trailing `*` is a plain prefix (`Get*`); nothing else is a wildcard.
            if grant == action or (grant.endswith("*") and action.startswith(grant[:-1])):
                return
        raise ActionNotAllowed(f"The token's `actions` list does not grant {action!r}.")


def _b64json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))


def _expand_scopes(raw: str) -> frozenset[str]:
    """The known scopes the claim names. Split on ASCII spaces only (str.split() would
    also split on a no-break space, tab or line separator, so "a\u00a0b" would grant two
    scopes where the contract sees one unknown word); an unknown scope grants nothing."""
    granted = set(raw.split(" ")) & SCOPES
    for scope, implied in _IMPLIED.items():
        if scope in granted:
            granted |= implied
    return frozenset(granted)


def _str_list(claims: dict[str, Any], name: str) -> list[str] | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Unauthorized(f"The `{name}` claim must be a list of non-empty strings.")
    return value


def fields_claim(claims: dict[str, Any]) -> dict[str, tuple[str, ...]] | None:
    """The `fields` claim: an object of Neto entity -> list of OutputSelector names (a
    dotted name, such as `OrderLine.SKU`, reaches into nested records)."""
    value = claims.get("fields")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise Unauthorized(
            "The `fields` claim must be an object of Neto entity -> list of field names, "
            'e.g. {"Item": ["SKU"]}.'
        )
    fields: dict[str, tuple[str, ...]] = {}
    for entity, names in value.items():
        if entity not in ENTITIES:
            raise Unauthorized(
                f"The `fields` claim names {entity[:64]!r}, which is not a Neto entity "
                "(the key of an answer, e.g. Item, Order, Customer)."
            )
        if not isinstance(names, list) or not all(
            isinstance(n, str) and n and "" not in n.split(".") for n in names
        ):
            raise Unauthorized(
                f"The `fields` claim's {entity!r} must be a list of field names "
                "(non-empty; dotted names without empty parts)."
            )
        fields[entity] = tuple(dict.fromkeys(names))
    return fields


def _number(claims: dict[str, Any], name: str) -> float:
    """A NumericDate: a finite JSON number. python-jose alone would take "123" or true."""
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthorized(f"The `{name}` claim must be a number.")
    try:
        # JSON integers are unbounded: 10**400 parses, and overflows a float here.
        number = float(value)
    except OverflowError:
        raise Unauthorized(f"The `{name}` claim is out of range.") from None
    if not math.isfinite(number):
        raise Unauthorized(f"The `{name}` claim must be a finite number.")
    return number


class TokenVerifier:
    """Verifies caller tokens against the configured keys; caches verified tokens.

    The cache is keyed by the exact token string, bounded in size, and an entry is never
    used past the token's `exp` (plus leeway), so a cached answer is the answer full
    verification would give.
    """

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        # The one clock for the time claims and the cache; tests pass their own.
        self.clock = clock
        self.audience = settings.jwt_audience
        self.issuers = sorted(settings.issuers)
        self.keys: dict[str, tuple[str, Key]] = load_keys(settings)
        self._cache: OrderedDict[str, Caller] = OrderedDict()
        self._cache_size = settings.jwt_cache_size

    def verify(self, token: str) -> Caller:
        """The caller the token names, or Unauthorized saying why it is refused."""
        now = self.clock()
        cached = self._cache.get(token)
        if cached is not None:
            # Served only before `exp`; from then on the token is verified in full again
            # (the leeway is full verification's to grant, not the cache's).
            if now < cached.exp:
                return cached
            self._cache.pop(token, None)
        caller = self._verify(token, now)
        if self._cache_size and now < caller.exp:
            self._cache[token] = caller
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return caller

    def _verify(self, token: str, now: float) -> Caller:
        if len(token.encode()) > MAX_TOKEN_BYTES:
            raise Unauthorized("The bearer token is larger than 8 KiB.")
        parts = token.split(".")
        if len(parts) != 3 or not all(parts):
            raise Unauthorized("The bearer token is not a signed JWT (three segments).")
        try:
            header = _b64json(parts[0])
        except (ValueError, binascii.Error, RecursionError):
            raise Unauthorized("The bearer token's header is not valid JSON.") from None
        if not isinstance(header, dict):
            raise Unauthorized("The bearer token's header is not a JSON object.")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise Unauthorized("Unsigned tokens are refused.")
        if FORBIDDEN_HEADERS & header.keys():
            raise Unauthorized("Token headers jku, x5u, x5c, jwk, crit and enc are refused.")
        kid = header.get("kid")
        if not isinstance(kid, str) or kid not in self.keys:
            raise Unauthorized("The token's key id is unknown.")
        key_alg, key = self.keys[kid]
        if alg != key_alg:
            raise Unauthorized("The token's algorithm does not match its key.")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key_alg],
                audience=self.audience,
                issuer=self.issuers or None,
                # python-jose checks the signature, and `aud`, `iss` and `sub` when present.
                # Presence, types and the time claims are checked in `_caller`, against
                # this verifier's clock: python-jose would take "123" or true as a time,
                # crash on an infinite one, and report a missing claim as a bad signature.
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "verify_iss": bool(self.issuers),
                },
            )
        except JWTClaimsError as exc:
            raise Unauthorized(f"The token's claims are not accepted: {exc}.") from None
        except (JOSEError, ValueError, TypeError, OverflowError, RecursionError):
            raise Unauthorized("The token's signature or encoding is not valid.") from None
        return self._caller(claims, now)

    def _caller(self, claims: dict[str, Any], now: float) -> Caller:
        for name in REQUIRED_CLAIMS:
            if name not in claims:
                raise Unauthorized(f"The token lacks the required claim `{name}`.")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise Unauthorized("The `sub` claim must be a non-empty string.")
        if len(sub) > MAX_SUB_CHARS:
            raise Unauthorized(f"The `sub` claim is longer than {MAX_SUB_CHARS} characters.")
        if _NOT_TEXT.search(sub):
            raise Unauthorized("The `sub` claim must be text without control characters.")
        if is_reserved_sub(sub):
            raise Unauthorized(
                f"The `sub` {RESERVED_SUB!r} (and `{RESERVED_SUB}:...`) is reserved for the "
                "installs Neto starts; give the caller a name of its own."
            )
        iat, exp = _number(claims, "iat"), _number(claims, "exp")
        if exp < now - LEEWAY_SECONDS:
            raise Unauthorized("The token has expired.")
        if iat > now + LEEWAY_SECONDS:
            raise Unauthorized("The token was issued in the future.")
        if "nbf" in claims and _number(claims, "nbf") > now + LEEWAY_SECONDS:
            raise Unauthorized("The token is not valid yet.")
        if exp - iat > MAX_LIFETIME_SECONDS:
            raise Unauthorized("The token's lifetime is longer than 24 hours.")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise Unauthorized("The `scope` claim must be a space-separated string.")
        stores = _str_list(claims, "stores")
        actions = _str_list(claims, "actions")
        if actions is not None and any("*" in grant[:-1] for grant in actions):
            raise Unauthorized("An `actions` pattern may hold `*` only at its end.")
        priority = claims.get("priority", INTERACTIVE)
        if priority not in LANES:
            raise Unauthorized("The `priority` claim must be `interactive` or `batch`.")
        for name in UNENFORCED_CLAIMS:
            if name in claims:
                raise Unauthorized(
                    f"The `{name}` claim is not enforced by this broker yet; a token "
                    "carrying it is refused rather than served without its limit."
                )
        fields = fields_claim(claims)
        apps = _str_list(claims, "apps")
        if apps is not None and not all(a == "*" or is_app_name(a) for a in apps):
            raise Unauthorized(
                "The `apps` claim must list add-on names (lowercase slugs, as in "
                'BROKER_NETO_APPS) or be ["*"].'
            )
        granted = _expand_scopes(scope)
        if fields is not None and "credentials:read" in granted:
            # A bundle is the store's token: with it every field is readable, whatever
            # the claim says.
            raise Unauthorized(
                "A token with a `fields` claim cannot carry `credentials:read`: the "
                "store's credentials read every field."
            )
        return Caller(
            sub=sub,
            scopes=granted,
            stores=frozenset(stores) if stores is not None else None,
            actions=tuple(actions) if actions is not None else None,
            exp=exp,
            priority=priority,
            fields=fields,
            apps=frozenset(apps) if apps is not None else None,
        )


def is_reserved_sub(sub: str) -> bool:
    name = sub.lower()
    return name == RESERVED_SUB or name.startswith(RESERVED_SUB + ":")


def mint(
    *,
    kid: str,
    secret: str,
    sub: str,
    scope: str,
    audience: str,
    ttl_seconds: int,
    stores: list[str] | None = None,
    actions: list[str] | None = None,
    issuer: str | None = None,
    priority: str | None = None,
    fields: dict[str, list[str]] | None = None,
    apps: list[str] | None = None,
) -> str:
    """An HS256 caller token, for operators (`broker token mint`) and the demo."""
    now = int(time.time())
    claims: dict[str, Any] = {"sub": sub, "aud": audience, "iat": now, "exp": now + ttl_seconds}
    if scope:
        claims["scope"] = scope
    if stores is not None:
        claims["stores"] = stores
    if actions is not None:
        claims["actions"] = actions
    if issuer:
        claims["iss"] = issuer
    if priority is not None:
        claims["priority"] = priority
    if fields is not None:
        claims["fields"] = fields
    if apps is not None:
        claims["apps"] = apps
    return str(jwt.encode(claims, secret, algorithm="HS256", headers={"kid": kid}))
