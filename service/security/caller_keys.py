"""The keys that verify caller tokens, loaded once at start-up: HS256 secrets from
BROKER_JWT_HS256_KEYS and RS256/ES256 public keys from the JWKS file. Anything unusable
stops start-up with a message that names the key id and never a secret."""

from __future__ import annotations

import base64
import binascii
import json
from pathlib import Path
from typing import Any

from jose import jwk
from jose.backends.base import Key
from jose.exceptions import JOSEError

from service.config import Settings, kid_pairs

MIN_HS256_SECRET_BYTES = 32
# NIST SP 800-131A: RSA signatures need a modulus of at least 2048 bits.
MIN_RSA_BITS = 2048


class KeyFileError(ValueError):
    """The configured caller-token keys are unusable; the message names no secret."""


def load_keys(settings: Settings) -> dict[str, tuple[str, Key]]:
    """kid -> (the one algorithm that key verifies, the key)."""
    keys: dict[str, tuple[str, Key]] = {}

    def add(kid: str, alg: str, key: Key) -> None:
        if kid in keys:
            raise KeyFileError(f"caller-token key id {kid!r} is configured twice")
        keys[kid] = (alg, key)

    if settings.jwt_hs256_keys:
        for kid, secret in _hs256_pairs(settings.jwt_hs256_keys.get_secret_value()):
            add(kid, "HS256", jwk.construct(secret.encode(), "HS256"))
    if settings.jwt_public_keys_file:
        for kid, alg, key in _jwks(settings.jwt_public_keys_file):
            add(kid, alg, key)
    return keys


def _hs256_pairs(spec: str) -> list[tuple[str, str]]:
    pairs = []
    for kid, secret in kid_pairs(spec):
        if not kid:
            raise KeyFileError("BROKER_JWT_HS256_KEYS entries must look like kid:secret")
        if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
            raise KeyFileError(f"HS256 key {kid!r} is shorter than {MIN_HS256_SECRET_BYTES} bytes")
        pairs.append((kid, secret))
    return pairs


def _jwks(path: Path) -> list[tuple[str, str, Key]]:
    try:
        doc = json.loads(Path(path).read_text())
        entries = doc["keys"]
    except (OSError, ValueError, KeyError, TypeError):
        raise KeyFileError(f"BROKER_JWT_PUBLIC_KEYS_FILE {path} is not a JWKS file") from None
    found = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise KeyFileError("every key in the JWKS file must be a JSON object")
        kid = entry.get("kid")
        kty = entry.get("kty")
        if not isinstance(kid, str) or not kid:
            raise KeyFileError("every key in the JWKS file needs a `kid`")
        if kty == "RSA":
            alg = "RS256"
        elif kty == "EC" and entry.get("crv") == "P-256":
            alg = "ES256"
        else:
            raise KeyFileError(f"JWKS key {kid!r}: only RSA and EC P-256 public keys")
        if entry.get("alg", alg) != alg:
            raise KeyFileError(f"JWKS key {kid!r}: alg must be {alg}")
        if "d" in entry:
            raise KeyFileError(f"JWKS key {kid!r} is a private key; publish public keys only")
        if alg == "RS256" and (bits := _rsa_modulus_bits(entry)) < MIN_RSA_BITS:
            raise KeyFileError(
                f"JWKS key {kid!r}: an RSA key of {bits} bits; at least {MIN_RSA_BITS} are required"
            )
        try:
            key = jwk.construct(entry, alg)
        except (JOSEError, ValueError, TypeError):
            raise KeyFileError(f"JWKS key {kid!r} is not a valid {kty} public key") from None
        found.append((kid, alg, key))
    return found


def _rsa_modulus_bits(entry: dict[str, Any]) -> int:
    """The size of a JWK's RSA modulus `n` (0 when it is missing or not base64url)."""
    n = entry.get("n")
    if not isinstance(n, str):
        return 0
    try:
        return int.from_bytes(base64.urlsafe_b64decode(n + "=" * (-len(n) % 4))).bit_length()
    except (ValueError, binascii.Error):
        return 0
