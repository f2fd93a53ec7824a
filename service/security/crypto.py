"""Sealing secrets at rest: AES-256-GCM, a key id in every ciphertext, and associated
data that binds a ciphertext to the row and column it was written for.

Format (text, so a key id is visible to `broker keys check` without decrypting):
    v1:<kid>:<base64url(nonce[12] || ciphertext || tag[16])>
Associated data: b"ntb|v1|<table>|<column>|<row id>" — a value copied to another store's
row or another column fails to open. A context with `bound` values (what decides where and
how the secret is used: an install's store domain and auth method) uses
b"ntb|v2|" + JSON [table, column, row id, *bound] instead, so changing any of them in the
database makes the value fail to open; the two forms never open each other's values.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.config import kid_pairs

VERSION = "v1"
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class KeyConfigError(ValueError):
    """The key configuration is unusable; the message names no key material."""


class SealError(Exception):
    """A sealed value could not be opened (wrong row, unknown key, tampering)."""


def generate_key() -> str:
    return base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Context:
    """Where a sealed value lives; it becomes the associated data."""

    table: str
    column: str
    row_id: str
    # Row values the ciphertext is bound to besides its place (JSON-encoded: no separator
    # inside a value can make two different bindings read the same).
    bound: tuple[str, ...] = ()

    def aad(self) -> bytes:
        if self.bound:
            place = [self.table, self.column, self.row_id, *self.bound]
            return b"ntb|v2|" + json.dumps(place, separators=(",", ":")).encode()
        return f"ntb|{VERSION}|{self.table}|{self.column}|{self.row_id}".encode()


class KeyRing:
    """Encryption keys by id. The primary (first configured) key seals; all keys open."""

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        if not keys:
            raise KeyConfigError("at least one encryption key is required")
        self._aead: dict[str, AESGCM] = {}
        for kid, key in keys:
            if kid in self._aead:
                raise KeyConfigError(f"encryption key id {kid!r} is configured twice")
            self._aead[kid] = AESGCM(key)
        self.primary = keys[0][0]

    @classmethod
    def parse(cls, spec: str) -> KeyRing:
        """Parse `kid:key,kid:key` (key = 32 random bytes, url-safe base64)."""
        pairs: list[tuple[str, bytes]] = []
        for kid, encoded in kid_pairs(spec):
            if not KID_RE.match(kid):
                raise KeyConfigError(
                    "BROKER_ENCRYPTION_KEYS entries must look like kid:key with a kid of "
                    "letters, digits, '_' or '-' (at most 32)"
                )
            try:
                key = _b64decode(encoded)
            except (binascii.Error, ValueError):
                raise KeyConfigError(f"encryption key {kid!r} is not url-safe base64") from None
            if len(key) != 32:
                raise KeyConfigError(f"encryption key {kid!r} must be 32 bytes, not {len(key)}")
            pairs.append((kid, key))
        return cls(pairs)

    @property
    def kids(self) -> tuple[str, ...]:
        return tuple(self._aead)

    def seal(self, plaintext: bytes, ctx: Context) -> str:
        nonce = os.urandom(12)
        body = self._aead[self.primary].encrypt(nonce, plaintext, ctx.aad())
        encoded = base64.urlsafe_b64encode(nonce + body).decode().rstrip("=")
        return f"{VERSION}:{self.primary}:{encoded}"

    def open(self, sealed: str, ctx: Context) -> bytes:
        kid = key_id_of(sealed)
        aead = self._aead.get(kid)
        if aead is None:
            raise SealError(f"sealed with key {kid!r}, which is not configured")
        try:
            raw = _b64decode(sealed.split(":", 2)[2])
            return aead.decrypt(raw[:12], raw[12:], ctx.aad())
        except (InvalidTag, binascii.Error, ValueError, IndexError):
            raise SealError(
                f"cannot open {ctx.table}.{ctx.column} for row {ctx.row_id!r}: "
                "tampered with, or copied from another row"
            ) from None

    def __repr__(self) -> str:
        return f"KeyRing(primary={self.primary!r}, kids={list(self._aead)!r})"


def key_id_of(sealed: str) -> str:
    parts = sealed.split(":", 2)
    if len(parts) != 3 or parts[0] != VERSION:
        raise SealError("not a sealed value of a known format")
    return parts[1]
