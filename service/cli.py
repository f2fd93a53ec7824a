"""The `broker` command: serve, migrate, mint operator tokens, manage keys, list installs."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from service.config import ConfigError, Settings, load_settings
from service.models import Install, InstallStatus

if TYPE_CHECKING:
    from service.security.crypto import KeyRing

T = TypeVar("T")

app = typer.Typer(help="Neto Token Broker.", no_args_is_help=True, add_completion=False)
token_app = typer.Typer(help="Caller tokens.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
installs_app = typer.Typer(help="Installs.", no_args_is_help=True)
app.add_typer(token_app, name="token")
app.add_typer(keys_app, name="keys")
app.add_typer(installs_app, name="installs")


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except (ConfigError, ValueError) as exc:
        # pydantic wraps validator errors; show the sentence, not a traceback.
        message = str(exc).splitlines()
        typer.secho(f"configuration error: {' '.join(m.strip() for m in message)}", err=True,
                    fg="red")  # fmt: skip
        raise typer.Exit(2) from None


def alembic_dir() -> Path:
    """Migrations ship beside the package in a checkout, or in the working folder."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[1]):
        if (base / "alembic.ini").exists() and (base / "alembic").is_dir():
            return base
    typer.secho("alembic.ini and alembic/ not found here or beside the package", err=True)
    raise typer.Exit(2)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
) -> None:
    """Run the API with uvicorn (ASGI app service.main:app). With --workers N, /metrics
    on any worker reports the sum over all workers."""
    from service import logs

    settings = settings_or_exit()
    logs.configure(settings.log_level)
    # Several workers: each counts in its own memory, so a scrape would see one worker.
    # prometheus_client's multiprocess mode shares the values through files in this
    # directory (set before the workers start; emptied per run). An operator-set
    # PROMETHEUS_MULTIPROC_DIR is used as given and must start empty.
    own_metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        own_metrics_dir = tempfile.mkdtemp(prefix="broker-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = own_metrics_dir
    try:
        _run_uvicorn(host, port, workers)
    finally:
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _run_uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "service.main:app",
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        # The broker never uses the client's address (callers are identified by their
        # token), so X-Forwarded-* parsing would be work on every request for nothing.
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=30,
        loop="uvloop" if sys.platform != "win32" else "asyncio",
        http="httptools",
    )


@app.command()
def migrate(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply Alembic migrations to BROKER_DATABASE_URL."""
    from alembic import command
    from alembic.config import Config

    from service.config import DatabaseSettings

    base = alembic_dir()
    url = DatabaseSettings().database_url
    cfg = Config(str(base / "alembic.ini"))
    cfg.set_main_option("script_location", str(base / "alembic"))
    cfg.attributes["database_url"] = url
    command.upgrade(cfg, revision)
    typer.echo(f"database is at {revision}")


_TTL_RE = re.compile(r"^(\d+)([smhd]?)$")


def parse_ttl(text: str) -> int:
    match = _TTL_RE.match(text.strip())
    if not match:
        raise typer.BadParameter("use a number with s, m, h or d, e.g. 15m or 1h")
    seconds = int(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 1 <= seconds <= 86400:
        raise typer.BadParameter("a caller token lives at most 24h")
    return seconds


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [item for item in re.split(r"[,\s]+", text) if item]


@token_app.command("mint")
def token_mint(
    sub: Annotated[str, typer.Option(help="The caller's name (sub claim).")],
    scope: Annotated[
        str,
        typer.Option(help='Scopes separated by ASCII spaces, e.g. "invoke credentials:read".'),
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
) -> None:
    """Print a caller JWT signed with a configured HS256 key."""
    from service.security.callers import SCOPES, mint

    # The broker ignores an unknown scope (it grants nothing): refuse it here, where a
    # typo or a pasted no-break space can still be corrected.
    unknown = sorted({word for word in scope.split(" ") if word} - SCOPES)
    if unknown:
        raise typer.BadParameter(
            f"unknown scope {', '.join(map(repr, unknown))}; scopes (separated by ASCII "
            f"spaces): {', '.join(sorted(SCOPES))}",
            param_hint="--scope",
        )

    settings = settings_or_exit()
    if not settings.jwt_hs256_keys:
        typer.secho("BROKER_JWT_HS256_KEYS is not set: no key to sign with", err=True, fg="red")
        raise typer.Exit(2)
    pairs = [
        p.strip().partition(":")
        for p in settings.jwt_hs256_keys.get_secret_value().split(",")
        if p.strip()
    ]
    chosen = next((p for p in pairs if kid is None or p[0] == kid), None)
    if chosen is None:
        typer.secho(f"no HS256 key with id {kid!r}", err=True, fg="red")
        raise typer.Exit(2)
    issuers = sorted(settings.issuers)
    typer.echo(
        mint(
            kid=chosen[0],
            secret=chosen[2],
            sub=sub,
            scope=scope,
            audience=settings.jwt_audience,
            ttl_seconds=parse_ttl(ttl),
            stores=_csv(stores),
            actions=_csv(actions),
            issuer=issuers[0] if issuers else None,
        )
    )


@keys_app.command("generate")
def keys_generate(
    kid: Annotated[str | None, typer.Option(help="Key id (default: k + date).")] = None,
) -> None:
    """Print a new kid:key pair for BROKER_ENCRYPTION_KEYS."""
    from datetime import UTC, datetime

    from service.security.crypto import KID_RE, generate_key

    kid = kid or "k" + datetime.now(UTC).strftime("%Y%m%d%H%M")
    if not KID_RE.match(kid):
        raise typer.BadParameter("letters, digits, '_' or '-', at most 32")
    typer.echo(f"{kid}:{generate_key()}")


def keyring_or_exit(settings: Settings) -> KeyRing:
    from service.security.crypto import KeyConfigError, KeyRing

    try:
        return KeyRing.parse(
            settings.encryption_keys.get_secret_value() if settings.encryption_keys else ""
        )
    except KeyConfigError as exc:
        typer.secho(f"configuration error: {exc}", err=True, fg="red")
        raise typer.Exit(2) from None


async def _with_database(settings: Settings, work: Callable[[Any], Awaitable[T]]) -> T:
    from service.db import create_engine, create_sessionmaker

    engine = create_engine(settings)
    try:
        return await work(create_sessionmaker(engine))
    finally:
        await engine.dispose()


INSTALL_COLUMNS = ("STORE ID", "DOMAIN", "AUTH", "STATUS", "INSTALLED", "LAST USED")


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
    settings: Settings, status: str | None, search: str | None, limit: int
) -> list[Install]:
    from service import stores

    async def work(sessionmaker: Any) -> list[Install]:
        async with sessionmaker() as session:
            return await stores.page(session, status=status, q=search, after=None, limit=limit)

    return await _with_database(settings, work)


@keys_app.command("rotate")
def keys_rotate(
    batch_size: Annotated[
        int, typer.Option(min=1, max=5000, help="Installs re-sealed per transaction.")
    ] = 200,
) -> None:
    """Re-encrypt every stored secret under the primary key (the first of
    BROKER_ENCRYPTION_KEYS). Safe while the service serves traffic; running it again
    does nothing. Configure the new key first on every replica ("new:...,old:...")."""
    import asyncio

    from service import keys
    from service.errors import BrokerError

    settings = settings_or_exit()
    keyring = keyring_or_exit(settings)
    with _progress_bar("re-sealing installs") as progress:
        try:
            report = asyncio.run(
                _with_database(
                    settings,
                    lambda sm: keys.rotate(sm, keyring, batch_size=batch_size, progress=progress),
                )
            )
        except BrokerError as exc:
            typer.secho(f"rotation stopped: {exc.detail}", err=True, fg="red")
            raise typer.Exit(1) from None
    if report.total == 0 and report.ok:
        typer.echo(f"nothing to rotate: every sealed install is under key {report.primary!r}")
        return
    typer.echo(
        f"rotated {report.rotated} installs to key {report.primary!r} "
        f"({report.cleared} held nothing sealed; {report.changed_concurrently} changed "
        "concurrently and were left to their writer or re-read)"
    )
    for kid, count in sorted(report.missing_keys.items()):
        typer.secho(
            f"{count} installs are sealed under key {kid!r}, which is not configured: add it "
            "to BROKER_ENCRYPTION_KEYS (after the primary) and run this again",
            fg="red",
        )
    if report.damaged:
        typer.secho(
            f"{len(report.damaged)} installs could not be opened (tampered with or damaged): "
            + ", ".join(sorted(report.damaged)[:20]),
            fg="red",
        )
    if not report.ok:
        raise typer.Exit(1)


@keys_app.command("check")
def keys_check() -> None:
    """Say which keys the stored data needs. Fails when data is sealed under a key that
    is not configured, or when a configured key (not the primary) seals nothing."""
    import asyncio

    from service import keys
    from service.errors import BrokerError

    settings = settings_or_exit()
    keyring = keyring_or_exit(settings)
    try:
        usage = asyncio.run(_with_database(settings, lambda sm: keys.key_usage(sm, keyring)))
    except BrokerError as exc:
        typer.secho(f"check failed: {exc.detail}", err=True, fg="red")
        raise typer.Exit(1) from None
    for kid in usage.configured:
        count = usage.counts.get(kid, 0)
        if kid == usage.primary:
            typer.echo(f"key {kid!r} (primary): seals {count} installs")
        elif count:
            typer.echo(
                f"key {kid!r}: seals {count} installs; still needed "
                "(run `broker keys rotate` to move them to the primary)"
            )
        else:
            typer.secho(f"key {kid!r} is unused; remove it from BROKER_ENCRYPTION_KEYS", fg="red")
    for unknown, count in usage.unknown.items():
        name = "no key id" if unknown is None else f"key {unknown!r}"
        typer.secho(
            f"{count} installs are sealed under {name}, which is not configured: they cannot "
            "be opened until that key is added back to BROKER_ENCRYPTION_KEYS",
            fg="red",
        )
    if not usage.ok:
        raise typer.Exit(1)
    typer.echo("keys ok")


@contextmanager
def _progress_bar(label: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on a terminal; nothing when the output is piped or logged."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import Progress

    with Progress(transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


@installs_app.command("list")
def installs_list(
    status: Annotated[
        InstallStatus | None, typer.Option(help="Only installs with this status.")
    ] = None,
    search: Annotated[
        str | None, typer.Option("--search", "-q", help="Store id or domain substring.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many rows.")] = 50,
) -> None:
    """Print a table of installs, newest first (times in UTC). Never shows a secret."""
    from sqlalchemy.exc import SQLAlchemyError

    settings = settings_or_exit()
    try:
        rows = asyncio.run(
            _read_installs(settings, status.value if status else None, search, limit + 1)
        )
    except (SQLAlchemyError, OSError) as exc:
        typer.secho(
            f"cannot read installs ({type(exc).__name__}): is BROKER_DATABASE_URL reachable "
            "and migrated (`broker migrate`)?",
            err=True,
            fg="red",
        )
        raise typer.Exit(1) from None
    more = len(rows) > limit
    rows = rows[:limit]
    table = [
        (i.store_id, i.store_domain, i.auth_method, i.status, _when(i.installed_at),
         _when(i.last_used_at))
        for i in rows
    ]  # fmt: skip
    if table:
        typer.echo(format_table(INSTALL_COLUMNS, table))
    noun = "install" if len(rows) == 1 else "installs"
    typer.echo(f"{len(rows)} {noun}" + (" shown; more exist (raise --limit)" if more else ""))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
