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
) -> None:
    """Subscribe a receiver. Prints its id and signing secret: the secret is shown once."""
    from service.events import subscriptions

    keyring = keyring_or_exit(settings_or_exit())

    async def work(session: Any) -> tuple[str, str]:
        webhook, secret = await subscriptions.create(
            session, keyring, url=url, event_types=event_type or [], description=description,
            actor="cli",
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
        (w.id, w.status, ",".join(w.event_types) or "*", w.url, w.description or "") for w in rows
    ]
    if table:
        typer.echo(format_table(("ID", "STATUS", "EVENTS", "URL", "DESCRIPTION"), table))
    typer.echo(f"{len(rows)} subscription" + ("" if len(rows) == 1 else "s"))


@webhooks_app.command("remove")
def webhooks_remove(
    webhook_id: Annotated[str, typer.Argument(help="The subscription id.")],
) -> None:
    """Remove a subscription, what it was still owed and its delivery log."""
    from service.events import subscriptions

    _run(lambda session: subscriptions.remove(session, webhook_id))
    typer.echo(f"removed {webhook_id}")


@webhooks_app.command("enable")
def webhooks_enable(
    webhook_id: Annotated[str, typer.Argument(help="The subscription id.")],
) -> None:
    """Re-enable a failing subscription: what it missed is delivered, in order."""
    from service.events import subscriptions

    _run(lambda session: subscriptions.enable(session, webhook_id))
    typer.echo(f"enabled {webhook_id}")
