"""`broker installs list`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

import typer

from service.cli.common import database_errors, installs_app, settings_or_exit, with_database
from service.config import Settings
from service.installs.models import Install, InstallStatus

INSTALL_COLUMNS = ("STORE ID", "DOMAIN", "AUTH", "STATUS", "APP", "INSTALLED", "LAST USED")


def _when(at: datetime | None) -> str:
    return at.strftime("%Y-%m-%d %H:%M") if at else "never"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain text table: stable under pipes, greps and narrow terminals alike."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=False)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in (header, *rows)
    )


async def _read_installs(
    settings: Settings, status: str | None, search: str | None, limit: int, app: str | None = None
) -> tuple[list[Install], dict[str, datetime]]:
    """A page of installs (of one add-on, with `app`) and when each was last used."""
    from service.installs import queries

    apps = None if app is None else [app]

    async def work(sessionmaker: Any) -> tuple[list[Install], dict[str, datetime]]:
        async with sessionmaker() as session:
            rows = await queries.page(
                session, status=status, q=search, after=None, limit=limit, apps=apps
            )
            return rows, await queries.last_used(session, [row.store_id for row in rows])

    return await with_database(settings, work)


@installs_app.command("list")
def installs_list(
    status: Annotated[
        InstallStatus | None, typer.Option(help="Only installs with this status.")
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", "-q", help="Store id or domain substring.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many rows.")] = 50,
    app: Annotated[
        str | None,
        typer.Option(
            help='Only installs of this Neto add-on ("default" or a BROKER_NETO_APPS name).'
        ),
    ] = None,
) -> None:
    """Print a table of installs, newest first (times in UTC). Never shows a secret."""
    from service.neto.apps import is_app_name

    if app is not None and not is_app_name(app):
        raise typer.BadParameter("add-on names are lowercase slugs (a-z, 0-9, '-')",
                                 param_hint="--app")  # fmt: skip
    settings = settings_or_exit()
    with database_errors("read installs"):
        rows, used = asyncio.run(
            _read_installs(settings, status.value if status else None, search, limit + 1, app)
        )
    more = len(rows) > limit
    rows = rows[:limit]
    table = [
        (i.store_id, i.store_domain, i.auth_method, i.status, i.app, _when(i.installed_at),
         _when(used.get(i.store_id)))
        for i in rows
    ]  # fmt: skip
    if table:
        typer.echo(format_table(INSTALL_COLUMNS, table))
    noun = "install" if len(rows) == 1 else "installs"
    typer.echo(f"{len(rows)} {noun}" + (" shown; more exist (raise --limit)" if more else ""))
