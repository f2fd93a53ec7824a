"""Sealing an install's columns: secrets and PII go into the database only sealed, each
bound to its row (table, column, store id) and to what decides where and how the secret
is used (the store domain it is sent to, the auth method that picks its headers), and
come out only through `open_*`. A row whose domain or auth method was changed in the
database, around the broker, no longer opens: nobody without the keys can redirect a
store's secret to another host.

A value that does not open (tampered with, copied from another row, or sealed under a
key that is not configured) is `store_secret_unreadable`, logged at ERROR for operators;
so is a live (active or re-auth) row without its sealed secret: only a revoke destroys
it, so a database writer set a revoked row live again, and a bundle or call without
credentials is not a success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any

from service.errors import StoreSecretUnreadable
from service.installs.models import AuthMethod, Install, InstallStatus
from service.keys.rotation import SealedTable
from service.neto.credentials import StoreCredentials
from service.security.crypto import Context, KeyRing, SealError

log = logging.getLogger("broker.stores")

SEALED_COLUMNS = ("secret_sealed", "user_sealed", "billing_sealed")


def fingerprint(secret: str) -> str:
    """Identifies a token without revealing it: operators compare, nobody can reverse."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Binding:
    """What an install's sealed values are bound to: its row and where its secret goes."""

    store_id: str
    store_domain: str
    auth_method: str

    @classmethod
    def of(cls, install: Install) -> Binding:
        return cls(install.store_id, install.store_domain, install.auth_method)

    def ctx(self, column: str) -> Context:
        return Context("installs", column, self.store_id, (self.store_domain, self.auth_method))


def _seal_json(keyring: KeyRing, binding: Binding, column: str, value: Any) -> str | None:
    if value is None:
        return None
    return keyring.seal(json.dumps(value, separators=(",", ":")).encode(), binding.ctx(column))


def _open_json(keyring: KeyRing, binding: Binding, column: str, sealed: str | None) -> Any:
    """Open a sealed column, or raise StoreSecretUnreadable after telling operators loudly.

    A failure here is never the caller's fault and never transient: the row was tampered
    with (its domain or auth method changed too), a ciphertext was copied from another
    store's row, or its key is not configured.
    """
    if sealed is None:
        return None
    try:
        return json.loads(keyring.open(sealed, binding.ctx(column)))
    except SealError as exc:
        log.error(
            "a sealed column cannot be opened: tampered with (its store domain or auth "
            "method changed too), copied from another row, or sealed under a key that is "
            "not configured",
            extra={"fields": {"store_id": binding.store_id, "column": column, "reason": str(exc)}},
        )
        raise StoreSecretUnreadable() from None


def sealed_values(
    keyring: KeyRing,
    binding: Binding,
    *,
    secret: dict[str, Any],
    user: dict[str, Any] | None,
    billing: dict[str, Any] | None,
) -> dict[str, Any]:
    return {
        "secret_sealed": _seal_json(keyring, binding, "secret_sealed", secret),
        "user_sealed": _seal_json(keyring, binding, "user_sealed", user),
        "billing_sealed": _seal_json(keyring, binding, "billing_sealed", billing),
        "key_id": keyring.primary,
    }


def _rotation_ctx(store_id: str, bound: tuple[Any, ...], column: str) -> Context:
    return Binding(store_id, bound[0], bound[1]).ctx(column)


# How `broker keys rotate | check` (service/keys/rotation.py) sees this table: its pages
# walk the primary key (store_id) and test each sealed value's own key id, never the
# `key_id` column alone (a writer's note a database writer could change).
ROTATION = SealedTable.of(
    Install, "installs", row_id="store_id", sealed=SEALED_COLUMNS,
    bound=("store_domain", "auth_method"), context=_rotation_ctx,
)  # fmt: skip


def _header_safe(value: str) -> bool:
    return all(" " <= ch <= "~" for ch in value)  # printable ASCII, as registration requires


def _secret_gone(install: Install) -> bool:
    """True (and logged at ERROR) if a live install has no sealed secret."""
    if install.secret_sealed is not None or install.status == InstallStatus.revoked:
        return False
    log.error(
        "a live install has no sealed secret: only a revoke destroys it, so the row was "
        "set live again around the broker; reinstall or re-register the store",
        extra={"fields": {"store_id": install.store_id, "column": "secret_sealed",
                          "status": install.status}},
    )  # fmt: skip
    return True


def open_credentials(keyring: KeyRing, install: Install, client_id: str | None) -> StoreCredentials:
    """The install's credentials; `client_id` is its app's (`client_ids.get(install.app)`),
    None when that app is not configured (`StoreCredentials.client_missing`)."""
    if _secret_gone(install):
        raise StoreSecretUnreadable()
    who = secret = None
    if install.secret_sealed is not None:
        opened = _open_json(keyring, Binding.of(install), "secret_sealed", install.secret_sealed)
        if install.auth_method == AuthMethod.oauth:
            who, secret = client_id, opened["access_token"]
        else:
            who, secret = opened["username"], opened["api_key"]
        if not all(_header_safe(value) for value in (who, secret) if value is not None):
            # Registration refuses such values; one in the database was put there around
            # the broker. Used, it would split a header upstream or in a caller's bundle.
            log.error(
                "a sealed secret opens to a value that is not a safe header (control or "
                "non-ASCII characters): refusing to use it",
                extra={"fields": {"store_id": install.store_id, "column": "secret_sealed"}},
            )
            raise StoreSecretUnreadable()
    return StoreCredentials(
        store_id=install.store_id,
        store_domain=install.store_domain,
        # Interned: a hundred thousand cached copies of "active" cost nothing.
        auth_method=sys.intern(install.auth_method),
        status=sys.intern(install.status),
        change_seq=install.change_seq,
        who=who,
        secret=secret,
        app=sys.intern(install.app),
    )


@dataclass(frozen=True, slots=True)
class Profile:
    """What operators see of the sealed columns: user and billing address, and whether
    every sealed column still opens (False means tampered with or copied, see the log)."""

    user: Any
    billing: Any
    readable: bool


def open_profile(keyring: KeyRing, install: Install) -> Profile:
    """The merchant's user info and billing address, for operators. Also opens the secret
    (and drops it at once) so an unreadable row shows up in GET /installs/{store_id}."""
    opened: dict[str, Any] = {}
    readable = not _secret_gone(install)
    binding = Binding.of(install)
    for column in SEALED_COLUMNS:
        try:
            opened[column] = _open_json(keyring, binding, column, getattr(install, column))
        except StoreSecretUnreadable:
            readable = False
    return Profile(opened.get("user_sealed"), opened.get("billing_sealed"), readable)


def credentials_fingerprint(creds: StoreCredentials) -> str | None:
    """The fingerprint of the token or API key these credentials carry."""
    return fingerprint(creds.secret) if creds.secret else None
