"""`broker webhooks add | list | remove | enable`: the same subscriptions as the admin
API, written straight to the database (like `broker keys rotate`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from service.cli.common import (
    database_errors,
    keyring_or_exit,
    settings_or_exit,
    webhooks_app,
    with_database,
)
from service.cli.installs import format_table

T = TypeVar("T")
# Who the audit log names for a change made with the CLI (it has no caller token).
CLI_ACTOR = "cli"


def _run(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work(session)` in one transaction; a sentence instead of a traceback."""

    from service.db import run_transaction
    from service.errors import BrokerError

    settings = settings_or_exit()
    try:
        with database_errors("reach the database"):
            return asyncio.run(with_database(settings, lambda sm: run_transaction(sm, work)))
    except BrokerError as exc:
        typer.secho(exc.detail, err=True, fg="red")
        raise typer.Exit(1) from None


@webhooks_app.command("add")
def webhooks_add(
    url: Annotated[str, typer.Argument(help="The receiver's http(s) URL.")],
    event_type: Annotated[
        list[str] | None, typer.Option("--event", help="Only this event type (repeatable).")
    ] = None,
    description: Annotated[str | None, typer.Option(help="What the receiver is.")] = None,
    store: Annotated[
        list[str] | None,
        typer.Option("--store", help="Only this store's events (repeatable; none: every store's)."),
    ] = None,
    raw: Annotated[
        bool, typer.Option("--raw", help="Neto notifications carry the body Neto sent (data.raw).")
    ] = False,
) -> None:
    """Subscribe a receiver. Prints its id and signing secret: the secret is shown once.
    The input is checked as `POST /webhooks` checks it, and the change is audited."""
    from pydantic import ValidationError

    from service.events import subscriptions
    from service.events.schemas import WebhookIn

    try:
        body = WebhookIn.model_validate(
            {"url": url, "event_types": event_type or [], "description": description,
             "stores": store or [], "include_raw": raw}
        )  # fmt: skip
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.secho(f"not a valid subscription: {problems}", err=True, fg="red")
        raise typer.Exit(1) from None
    keyring = keyring_or_exit(settings_or_exit())

    async def work(session: Any) -> tuple[str, str]:
        webhook, secret = await subscriptions.create(
            session, keyring, url=body.url, event_types=list(body.event_types),
            description=body.description, actor=CLI_ACTOR, stores=list(body.stores),
            include_raw=body.include_raw,
        )  # fmt: skip
        return webhook.id, secret

    webhook_id, secret = _run(work)
    typer.echo(f"id: {webhook_id}\nsecret: {secret}\n(the secret is not shown again)")


@webhooks_app.command("list")
def webhooks_list() -> None:
    """Print a table of subscriptions (never a secret)."""
    from service.events import subscriptions

    rows = _run(subscriptions.listing)
    table = [
        (w.id, w.status, ",".join(w.event_types) or "*", subscriptions.redacted_url(w.url),
         w.description or "")
        for w in rows
    ]  # fmt: skip
    if table:
        typer.echo(format_table(("ID", "STATUS", "EVENTS", "URL", "DESCRIPTION"), table))
    typer.echo(f"{len(rows)} subscription" + ("" if len(rows) == 1 else "s"))


@webhooks_app.command("remove")
def webhooks_remove(
    webhook_id: Annotated[str, typer.Argument(help="The subscription id.")],
) -> None:
    """Remove a subscription, what it was still owed and its delivery log."""
    from service.events import subscriptions

    _run(lambda session: subscriptions.remove(session, webhook_id, actor=CLI_ACTOR))
    typer.echo(f"removed {webhook_id}")


@webhooks_app.command("enable")
def webhooks_enable(
    webhook_id: Annotated[str, typer.Argument(help="The subscription id.")],
) -> None:
    """Re-enable a failing subscription: what it missed is delivered, in order."""
    from service.events import subscriptions

    _run(lambda session: subscriptions.enable(session, webhook_id, actor=CLI_ACTOR))
    typer.echo(f"enabled {webhook_id}")


@webhooks_app.command("rotate-secret")
def webhooks_rotate_secret(
    webhook_id: Annotated[str, typer.Argument(help="The subscription id.")],
    overlap_seconds: Annotated[
        int, typer.Option(help="How long the replaced secret signs too (0: not at all).")
    ] = 86400,
) -> None:
    """A new signing secret, printed once; deliveries carry the replaced secret's signature
    as well for the overlap, so the receiver can switch without rejecting one."""
    from service.events import subscriptions

    keyring = keyring_or_exit(settings_or_exit())

    async def work(session: Any) -> str:
        _, secret = await subscriptions.rotate_secret(
            session, keyring, webhook_id, overlap_seconds=overlap_seconds, actor=CLI_ACTOR
        )
        return secret

    secret = _run(work)
    typer.echo(f"secret: {secret}\n(the secret is not shown again)")
