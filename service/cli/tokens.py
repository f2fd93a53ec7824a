"""`broker token mint`: caller tokens for operators and Swagger UI."""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Annotated

import typer

from service.cli.common import settings_or_exit, token_app
from service.config import Settings, kid_pairs

_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")


class Priority(StrEnum):
    """The `priority` claim's values (neto/queue.py's lanes)."""

    interactive = "interactive"
    batch = "batch"


def parse_ttl(text: str) -> int:
    match = _TTL_RE.match(text.strip())
    if not match:
        raise typer.BadParameter("use a number with s, m, h or d, e.g. 15m or 1h")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 1 <= seconds <= 86400:
        raise typer.BadParameter("a caller token lives at most 24h")
    return seconds


def parse_fields(text: str | None) -> dict[str, list[str]] | None:
    """`--fields`: the claim as JSON, checked as the broker checks it, so a token that
    would be refused is never printed."""
    if text is None:
        return None
    from service.errors import Unauthorized
    from service.security.callers import fields_claim

    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise typer.BadParameter(
            'not JSON; e.g. \'{"Item": ["SKU", "AvailableSellQuantity"]}\'', param_hint="--fields"
        ) from None
    try:
        fields_claim({"fields": value})
    except Unauthorized as exc:
        raise typer.BadParameter(exc.detail, param_hint="--fields") from None
    if value is None:
        raise typer.BadParameter(
            "null grants every field; omit --fields instead", param_hint="--fields"
        )
    fields: dict[str, list[str]] = value
    return fields


def is_app_name(value: str) -> bool:
    from service.neto.apps import is_app_name as check

    return check(value)


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [item for item in re.split(r"[,\s]+", text) if item]


@token_app.command("mint")
def token_mint(
    sub: Annotated[str, typer.Option(help="The caller's name (sub claim).")],
    scope: Annotated[
        str,
        typer.Option(
            help="Scopes separated by ASCII spaces: credentials:read, invoke, installs:start, "
            "installs:read, installs:admin, events:read."
        ),
    ],
    stores: Annotated[str | None, typer.Option(help='Store ids, comma-separated, or "*".')] = None,
    actions: Annotated[
        str | None,
        typer.Option(
            help='The complete allow-list of actions, reads included, e.g. "GetItem,Update*". '
            "Omitted: every read action and no write."
        ),
    ] = None,
    ttl: Annotated[str, typer.Option(help="Lifetime, e.g. 15m, 1h (max 24h).")] = "1h",
    kid: Annotated[str | None, typer.Option(help="HS256 key id (default: the first).")] = None,
    priority: Annotated[
        Priority | None,
        typer.Option(
            help="The lane the caller's calls wait in for a store's budget: interactive "
            "(the default: a person waits) or batch (a sync; interactive calls go first)."
        ),
    ] = None,
    fields: Annotated[
        str | None,
        typer.Option(
            help="Per Neto entity, the only fields the caller may read, as JSON, e.g. "
            '\'{"Item": ["SKU", "AvailableSellQuantity"]}\'. Actions of other entities are '
            "refused. Omitted: every field."
        ),
    ] = None,
    apps: Annotated[
        str | None,
        typer.Option(
            help='The Neto add-ons (BROKER_NETO_APPS names, "default", or "*") whose '
            "stores the caller may use, comma-separated. Omitted: every add-on."
        ),
    ] = None,
) -> None:
    """Print a caller JWT signed with a configured HS256 key."""
    # The broker ignores an unknown scope (it grants nothing): refuse it here, where a
    # typo or a pasted no-break space can still be corrected.
    from service.security.callers import SCOPES

    unknown = sorted({word for word in scope.split(" ") if word} - SCOPES)
    if unknown:
        raise typer.BadParameter(
            f"unknown scope {', '.join(map(repr, unknown))}; scopes (separated by ASCII "
            f"spaces): {', '.join(sorted(SCOPES))}",
            param_hint="--scope",
        )
    claim = parse_fields(fields)
    if claim is not None and "credentials:read" in scope.split(" "):
        raise typer.BadParameter(
            "a token with --fields cannot carry credentials:read (a bundle reads every field)",
            param_hint="--scope",
        )
    app_names = _csv(apps)
    if app_names is not None and not all(a == "*" or is_app_name(a) for a in app_names):
        raise typer.BadParameter(
            "add-on names are lowercase slugs (a-z, 0-9, '-'), or \"*\"", param_hint="--apps"
        )
    settings = settings_or_exit()
    typer.echo(
        mint_or_exit(settings, sub=sub, scope=scope, stores=_csv(stores), actions=_csv(actions),
                     ttl_seconds=parse_ttl(ttl), kid=kid,
                     priority=None if priority is None else priority.value, fields=claim,
                     apps=app_names)
    )  # fmt: skip


def mint_or_exit(
    settings: Settings,
    *,
    sub: str,
    scope: str,
    stores: list[str] | None,
    actions: list[str] | None,
    ttl_seconds: int,
    kid: str | None = None,
    priority: str | None = None,
    fields: dict[str, list[str]] | None = None,
    apps: list[str] | None = None,
) -> str:
    """A caller JWT signed with the configured HS256 key `kid` (default: the first)."""
    from service.security.callers import mint

    if not settings.jwt_hs256_keys:
        typer.secho("BROKER_JWT_HS256_KEYS is not set: no key to sign with", err=True, fg="red")
        raise typer.Exit(2)
    pairs = kid_pairs(settings.jwt_hs256_keys.get_secret_value())
    chosen = next((p for p in pairs if kid is None or p[0] == kid), None)
    if chosen is None:
        typer.secho(f"no HS256 key with id {kid!r}", err=True, fg="red")
        raise typer.Exit(2)
    issuers = sorted(settings.issuers)
    return mint(
        kid=chosen[0],
        secret=chosen[1],
        sub=sub,
        scope=scope,
        audience=settings.jwt_audience,
        ttl_seconds=ttl_seconds,
        stores=stores,
        actions=actions,
        issuer=issuers[0] if issuers else None,
        priority=priority,
        fields=fields,
        apps=apps,
    )
