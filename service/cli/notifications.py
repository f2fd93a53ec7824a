"""`broker notifications url | rotate STORE`: the URL Neto posts a store's notifications
to, issued straight in the database (like `broker webhooks`), the change audited."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from service.cli.common import app, settings_or_exit
from service.cli.webhooks import CLI_ACTOR, _run

notifications_app = typer.Typer(help="Neto's notifications: each store's URL.",
                                no_args_is_help=True)  # fmt: skip
app.add_typer(notifications_app, name="notifications")

StoreArg = Annotated[str, typer.Argument(help="The store id.")]


def _print_issued(public_url: str, store_id: str, token: str) -> None:
    from service.inbound.tokens import url_of

    typer.echo(url_of(public_url, store_id, token))
    typer.echo(
        "Paste it in Neto's control panel (Settings & Tools > API Settings); it is not shown "
        "again (`broker notifications rotate` issues another).",
        err=True,
    )


@notifications_app.command("url")
def notifications_url(store_id: StoreArg) -> None:
    """Print the store's notification URL, issuing it if the store has none yet. The
    broker keeps only a hash: once issued, the URL is shown with its token hidden and
    `rotate` replaces it."""
    from service.inbound import tokens

    settings = settings_or_exit()

    async def work(session: Any) -> tuple[tokens.TokenState, str | None]:
        state = await tokens.state(session, store_id)
        if state.issued_at is not None:
            return state, None
        return await tokens.issue(session, store_id, actor=CLI_ACTOR)

    state, token = _run(work)
    if token is not None:
        _print_issued(settings.public_url, store_id, token)
        return
    typer.echo(tokens.url_of(settings.public_url, store_id, tokens.PREFIX + "…"))
    status = f"revoked {state.revoked_at:%Y-%m-%d %H:%M}Z" if state.revoked_at else "live"
    typer.echo(
        f"issued {state.issued_at:%Y-%m-%d %H:%M}Z by {state.issued_by} ({status}); the token "
        "is not kept: `broker notifications rotate` issues a new URL.",
        err=True,
    )


@notifications_app.command("rotate")
def notifications_rotate(store_id: StoreArg) -> None:
    """Issue a new notification URL for the store and print it; the previous one stops
    working at once."""
    from service.inbound import tokens

    settings = settings_or_exit()
    _, token = _run(lambda session: tokens.issue(session, store_id, actor=CLI_ACTOR))
    _print_issued(settings.public_url, store_id, token)
