"""What identifies a store and what calling it takes: the store-id rule and the opened
credentials. Below both the installs repository (which opens them) and the Neto client
(which sends them)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Neto's store ids as the broker accepts them everywhere (paths, registration, the token
# endpoint's answer): what fits the column and can stand in a URL path unescaped.
STORE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
STORE_ID_MAX_LENGTH = 64
_STORE_ID_RE = re.compile(STORE_ID_PATTERN)


def is_store_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) <= STORE_ID_MAX_LENGTH
        and _STORE_ID_RE.fullmatch(value) is not None
    )


# Header names by auth method: (who, secret).
HEADER_NAMES = {
    "oauth": ("X_ACCESS_KEY", "X_SECRET_KEY"),
    "api_key": ("NETOAPI_USERNAME", "NETOAPI_KEY"),
}


@dataclass(frozen=True, slots=True, repr=False)
class StoreCredentials:
    """What a bundle or an invoke needs, opened. The repr names no secret.

    Kept lean (one is cached per store): the two header values, not a dict of headers,
    and the row's change number so the change feed can tell a stale copy from a fresh one.
    """

    store_id: str
    store_domain: str
    auth_method: str
    status: str
    change_seq: int
    who: str | None  # the OAuth client id (of the install's app), or the API-key username
    secret: str | None  # the access token or API key; None once revoked
    app: str = "default"  # the Neto add-on the store installed (service/neto/apps.py)

    @property
    def client_missing(self) -> bool:
        """An OAuth store whose add-on is not configured (any more): its token is no use
        without that add-on's client id, and must not go out with another's or none."""
        return self.auth_method == "oauth" and self.secret is not None and not self.who

    @property
    def headers(self) -> dict[str, str]:
        if self.secret is None:
            return {}
        who, secret = HEADER_NAMES[self.auth_method]
        return {who: self.who or "", secret: self.secret}

    def __repr__(self) -> str:
        return f"StoreCredentials(store_id={self.store_id!r}, status={self.status!r})"
