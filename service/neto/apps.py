"""The Neto add-ons (OAuth clients) one broker serves, by name: `BROKER_NETO_APPS`, and the
single-app settings as the app named `default`.

Companies run a staging and a production add-on (two client ids); each install belongs
to one of them (`installs.app`), its code is exchanged with that app's secret and its
calls carry that app's client id. Parsed once at start-up (config.py): a mistake is a
sentence naming the variable and the app, never a secret.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

DEFAULT_APP = "default"
# A lowercase slug: it stands in a query string, a column and a token claim unescaped.
APP_NAME_MAX_LENGTH = 32
APP_NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,30}[a-z0-9])?$"
_APP_NAME_RE = re.compile(APP_NAME_PATTERN)
# A client id travels as the X_ACCESS_KEY header value: printable ASCII without spaces.
_CLIENT_ID_RE = re.compile(r"^[!-~]{1,256}$")
MAX_APPS = 64
_KEYS = frozenset({"client_id", "client_secret", "client_secret_file", "oauth_url"})
_SECRET_KEYS = ("client_secret", "client_secret_file")


def is_app_name(value: object) -> bool:
    return isinstance(value, str) and _APP_NAME_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True, repr=False)
class NetoApp:
    """One add-on: its name, OAuth client and OAuth base URL. The repr names no secret."""

    name: str
    client_id: str
    client_secret: SecretStr
    oauth_url: str  # `{..}/auth` and `{..}/token`, no trailing slash

    def __repr__(self) -> str:
        return f"NetoApp(name={self.name!r}, client_id={self.client_id!r})"


class AppsError(ValueError):
    """BROKER_NETO_APPS cannot be used; the message says where and why (no secret)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            # json.loads would keep the last silently: one app's settings would vanish.
            raise AppsError(f"names {key[:64]!r} twice")
        seen[key] = value
    return seen


def _load_text(spec: str) -> str:
    """The JSON itself (it starts with `{`), or the path of a file holding it (a mounted
    Kubernetes Secret)."""
    if spec.lstrip().startswith(("{", "[")):
        return spec
    path = Path(spec.strip())
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AppsError(
            f"is neither a JSON object nor a readable file: {path} ({type(exc).__name__})"
        ) from None


def _secret(name: str, entry: dict[str, Any]) -> SecretStr:
    given = [key for key in _SECRET_KEYS if key in entry]
    if len(given) != 1:
        raise AppsError(f"app {name!r} needs exactly one of client_secret, client_secret_file")
    value = entry[given[0]]
    if not isinstance(value, str) or not value.strip():
        raise AppsError(f"app {name!r}: {given[0]} must be a non-empty string")
    if given[0] == "client_secret_file":
        try:
            value = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise AppsError(
                f"app {name!r}: client_secret_file {value} cannot be read ({type(exc).__name__})"
            ) from None
        value = value.strip()  # a mounted file usually ends in a newline
        if not value:
            raise AppsError(f"app {name!r}: client_secret_file is empty")
    return SecretStr(value)


def _oauth_url(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise AppsError(f"app {name!r}: oauth_url must be a string")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise AppsError(f"app {name!r}: oauth_url must be an absolute http(s) URL without query")
    return value.rstrip("/")


def parse_apps(spec: str, *, default_oauth_url: str) -> dict[str, NetoApp]:
    """The apps BROKER_NETO_APPS declares, in its order. Shape, one object per app:
    `{"staging": {"client_id": "...", "client_secret_file": "/run/secrets/x",
    "oauth_url": "https://..."}}`; `client_secret` (the value) or `client_secret_file`
    (its path), exactly one; `oauth_url` defaults to BROKER_NETO_OAUTH_URL."""
    try:
        raw = json.loads(_load_text(spec), object_pairs_hook=_refuse_duplicates)
    except ValueError as exc:
        if isinstance(exc, AppsError):
            raise
        raise AppsError("is not valid JSON") from None
    if not isinstance(raw, dict):
        raise AppsError('must be a JSON object of app name -> {"client_id", ...}')
    if len(raw) > MAX_APPS:
        raise AppsError(f"declares more than {MAX_APPS} apps")
    apps: dict[str, NetoApp] = {}
    client_ids: dict[str, str] = {}
    for name, entry in raw.items():
        if not is_app_name(name):
            raise AppsError(
                f"app name {name[:64]!r} is not a lowercase slug (a-z, 0-9 and '-', "
                f"at most {APP_NAME_MAX_LENGTH} characters, no '-' at either end)"
            )
        if not isinstance(entry, dict):
            raise AppsError(f"app {name!r} must be an object with client_id and a secret")
        unknown = sorted(set(entry) - _KEYS)
        if unknown:
            # A typo (`clientid`) would otherwise leave the app half-configured.
            raise AppsError(f"app {name!r} has unknown keys {unknown}; known: {sorted(_KEYS)}")
        client_id = entry.get("client_id")
        if not isinstance(client_id, str) or not _CLIENT_ID_RE.fullmatch(client_id):
            raise AppsError(
                f"app {name!r}: client_id must be 1 to 256 printable ASCII characters, no spaces"
            )
        if client_id in client_ids:
            raise AppsError(
                f"apps {client_ids[client_id]!r} and {name!r} have the same client_id: "
                "one add-on cannot be two apps"
            )
        client_ids[client_id] = name
        apps[name] = NetoApp(
            name=name,
            client_id=client_id,
            client_secret=_secret(name, entry),
            oauth_url=_oauth_url(name, entry.get("oauth_url", default_oauth_url)),
        )
    return apps


def client_ids(apps: Mapping[str, NetoApp]) -> dict[str, str]:
    """App name -> client id: what opening an install's credentials needs."""
    return {name: app.client_id for name, app in apps.items()}
