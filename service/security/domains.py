"""Store domain rules, applied wherever a domain enters the broker.

A store domain is the merchant's webstore host name: lower-case, IDNA-encoded, at most
253 characters, at least two labels, no IP literal in any spelling, no port, user info,
path or escape characters, and none of the names that point inside a network.
"""

from __future__ import annotations

import ipaddress
import re

import idna

from service.errors import InvalidStoreDomain

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_FORBIDDEN_CHARS = set("/\\@:%#?[] \t\r\n\x00")
_INTERNAL_SUFFIXES = (".localhost", ".local", ".internal", ".localdomain", ".home.arpa")
_INTERNAL_NAMES = {"localhost", "localhost.localdomain"}


def _looks_numeric(host: str) -> bool:
    """True for anything a resolver might read as an IPv4 address (decimal, octal, hex)."""
    labels = host.split(".")
    return all(re.fullmatch(r"(0x[0-9a-f]*|[0-9]+)", label) for label in labels if label)


def normalize_store_domain(raw: str) -> str:
    """Return the canonical store domain or raise InvalidStoreDomain (400)."""
    if not isinstance(raw, str) or not raw:
        raise InvalidStoreDomain("store_domain is empty")
    if len(raw) > 253 * 4:
        raise InvalidStoreDomain("store_domain is too long")
    text = raw.strip()
    if text.lower().startswith(("http://", "https://")):
        raise InvalidStoreDomain("store_domain must be a host name without a scheme")
    if any(ch in _FORBIDDEN_CHARS for ch in text) or any(ord(ch) < 0x20 for ch in text):
        raise InvalidStoreDomain(
            "store_domain must be a bare host name: no port, path, user info or escapes"
        )
    text = text.rstrip(".") if text.endswith(".") and not text.endswith("..") else text
    try:
        # IDNA 2008 with UTS #46 non-transitional mapping, as browsers and registries
        # resolve names today. Python's "idna" codec is IDNA 2003: it folds "straße" into
        # "strasse" and drops zero-width joiners, turning a look-alike into someone else's
        # real domain (where the store's token would then be sent).
        ascii_host = idna.encode(text, uts46=True, transitional=False).decode("ascii")
    except (idna.IDNAError, UnicodeError):
        raise InvalidStoreDomain("store_domain is not a valid international host name") from None
    if len(ascii_host) > 253:
        raise InvalidStoreDomain("store_domain is longer than 253 characters")
    try:
        ipaddress.ip_address(ascii_host)
    except ValueError:
        pass
    else:
        raise InvalidStoreDomain("store_domain must be a host name, not an IP address")
    if _looks_numeric(ascii_host):
        raise InvalidStoreDomain("store_domain must be a host name, not an IP address")
    labels = ascii_host.split(".")
    if len(labels) < 2:
        raise InvalidStoreDomain("store_domain needs at least two labels (e.g. shop.example.com)")
    if not all(_LABEL.match(label) for label in labels):
        raise InvalidStoreDomain("store_domain has an invalid label")
    if labels[-1].isdigit():
        raise InvalidStoreDomain("store_domain has a numeric top-level label")
    if ascii_host in _INTERNAL_NAMES or ascii_host.endswith(_INTERNAL_SUFFIXES):
        raise InvalidStoreDomain("store_domain names an internal host")
    return ascii_host
